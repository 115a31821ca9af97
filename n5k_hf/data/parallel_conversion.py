"""Convert chunks of dishes into Arrow shards, in worker processes or in this one.

The converter (``n5k_hf.data.convert``) cuts each split's dish ids into contiguous chunks
(`plan_chunks`). A worker converts a chunk dish by dish (`n5k_hf.data.dish_conversion`) and streams
the rows into its own shards of the split folder (`ShardWriter`, prefix ``chunk-<index>``); the
shards of the chunks, in chunk order, are the split's rows in split-file order, whatever the order
in which the workers finished. Nothing but a few numbers per dish comes back to the parent, so it
neither re-reads nor re-sends the 0.6 MB of PNG bytes per dish.

Progress (one message per dish) and the strict-mode stop signal go through a queue and an event
shared with the workers. Workers are forked on Linux (they start at once, without re-importing
anything) and spawned elsewhere.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from n5k_hf.allocator import reuse_freed_memory
from n5k_hf.data import dish_conversion
from n5k_hf.data.dish_conversion import DishConversionSettings, DishSkipped
from n5k_hf.data.disk_writer import Shard, ShardWriter
from n5k_hf.data.features import DATASET_FEATURES, SPLITS

CHUNKS_PER_PROCESS = 4
"""Chunks per worker and split: small enough that the workers finish close together."""

MIN_CHUNK_DISHES = 16
"""No chunk smaller than this (a chunk with rows is at least one shard file)."""

_PROGRESS_POLL_S = 0.2


@dataclass(frozen=True)
class ChunkTask:
    """Dishes ``dish_ids`` of ``split``, the ``index``-th chunk (shard order) written into ``folder``."""

    split: str
    index: int
    dish_ids: tuple[str, ...]
    folder: str


@dataclass
class ChunkResult:
    """What a chunk produced: its shards and, per dish, a row summary or the reason it was skipped."""

    task: ChunkTask
    shards: list[Shard] = field(default_factory=list)
    converted: list[tuple[str, float, str]] = field(default_factory=list)
    """``(dish_id, volume_ml, mask_source)`` per row, in row order (``volume_ml`` as stored, float32)."""
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)
    """``(dish_id, reason, path, detail)`` per dish that is not a row."""


@dataclass(frozen=True)
class _WorkerState:
    settings: DishConversionSettings
    metadata_columns: Mapping[str, Mapping[str, Any]]
    strict: bool
    progress: Any  # ``put(n)``: a multiprocessing queue, or a `_Callback` in this process
    stop: Any  # a multiprocessing event, or None in this process


_state: _WorkerState | None = None
"""The conversion's shared inputs inside a worker (set once by `_init_worker`)."""


def plan_chunks(splits: Mapping[str, list[str]], folder: Path, num_proc: int) -> list[ChunkTask]:
    """Contiguous chunks of every split in `SPLITS` order; one chunk per split with ``num_proc == 1``."""
    tasks = []
    for split in SPLITS:
        ids = splits[split]
        if not ids:
            continue
        size = (
            len(ids)
            if num_proc == 1
            else max(MIN_CHUNK_DISHES, math.ceil(len(ids) / (num_proc * CHUNKS_PER_PROCESS)))
        )
        for index, start in enumerate(range(0, len(ids), size)):
            tasks.append(ChunkTask(split, index, tuple(ids[start : start + size]), str(folder / split)))
    return tasks


def _init_worker(state: _WorkerState) -> None:
    global _state
    _state = state
    reuse_freed_memory()  # a worker process is ours: no page faults for each dish's temporaries


def convert_chunk(task: ChunkTask) -> ChunkResult:
    """Convert one chunk with the state set by `_init_worker`; raises on an unexpected error (with a
    note naming the dish). In strict mode the chunk ends at its first bad dish and sets the stop event."""
    state = _state
    assert state is not None, "convert_chunk runs in a worker set up by _init_worker"
    result = ChunkResult(task)
    K_float32 = np.asarray(state.settings.K, dtype=np.float32)
    with ShardWriter(task.folder, DATASET_FEATURES, prefix=f"chunk-{task.index:05d}") as writer:
        for dish_id in task.dish_ids:
            if state.stop is not None and state.stop.is_set():
                break
            try:
                columns = dish_conversion.convert_dish(dish_id, state.settings)
            except DishSkipped as skipped:
                result.skipped.append((dish_id, skipped.reason, skipped.path, skipped.detail))
                state.progress.put(1)
                if state.strict:
                    if state.stop is not None:
                        state.stop.set()
                    break
                continue
            except Exception as error:
                error.add_note(f"while converting {dish_id} ({task.split})")
                raise
            volume_ml = float(np.float32(columns["volume_ml"]))  # the value the float32 column holds
            writer.write(
                {
                    "dish_id": dish_id,
                    **columns,
                    "K": K_float32,
                    "volume_ml": volume_ml,
                    "plane": np.asarray(columns["plane"], dtype=np.float32),
                    **state.metadata_columns[dish_id],
                }
            )
            result.converted.append((dish_id, volume_ml, columns["mask_source"]))
            state.progress.put(1)
        result.shards = writer.close()
    return result


class _Callback:
    """Progress for chunks converted in this process: ``put(n)`` calls ``on_progress(n)``."""

    def __init__(self, on_progress: Callable[[int], None]):
        self.put = on_progress


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (workers start at once, nothing re-imported); ``spawn`` elsewhere (macOS, Windows)."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def run_chunks(
    tasks: list[ChunkTask],
    settings: DishConversionSettings,
    metadata_columns: Mapping[str, Mapping[str, Any]],
    *,
    num_proc: int,
    strict: bool,
    on_progress: Callable[[int], None],
) -> list[ChunkResult]:
    """Convert every chunk; the results in the order of ``tasks``.

    ``on_progress(n)`` is called in this process as dishes finish (from worker processes the last
    few messages may still be in flight when this returns). In strict mode, the first bad dish any
    worker meets stops all of them (the chunks then end early).
    """
    global _state
    if not tasks:
        return []
    if num_proc == 1 or len(tasks) == 1:
        results = []
        previous, _state = (
            _state,
            _WorkerState(settings, metadata_columns, strict, _Callback(on_progress), None),
        )
        try:
            for task in tasks:
                results.append(convert_chunk(task))
                if strict and results[-1].skipped:
                    break
        finally:
            _state = previous
        return results

    context = _pool_context()
    progress, stop = context.Queue(), context.Event()
    state = _WorkerState(settings, metadata_columns, strict, progress, stop)

    def drain() -> None:
        done = 0
        while True:
            try:
                done += progress.get_nowait()
            except queue.Empty:
                break
        if done:
            on_progress(done)

    pool = ProcessPoolExecutor(
        max_workers=min(num_proc, len(tasks)), mp_context=context, initializer=_init_worker, initargs=(state,)
    )
    try:
        # Largest chunks first, so that the last ones to finish are small and no worker idles long.
        by_size = sorted(range(len(tasks)), key=lambda index: -len(tasks[index].dish_ids))
        futures: dict[Future[ChunkResult], int] = {pool.submit(convert_chunk, tasks[i]): i for i in by_size}
        results: list[ChunkResult | None] = [None] * len(tasks)
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=_PROGRESS_POLL_S, return_when=FIRST_COMPLETED)
            drain()
            for future in finished:
                results[futures[future]] = future.result()
        drain()
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    return [result for result in results if result is not None]

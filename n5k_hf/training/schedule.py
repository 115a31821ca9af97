"""Learning-rate multipliers: linear warmup, then poly / cosine / linear decay, times the stage scale."""

from __future__ import annotations

import math
from collections.abc import Callable


def build_lr_lambda(
    *,
    scheduler_type: str,
    total_steps: int,
    warmup_steps: int = 0,
    stage2_start_step: int | None = None,
    stage2_scale: float = 1.0,
    poly_power: float = 0.9,
) -> Callable[[int], float]:
    """``step -> multiplier`` of each parameter group's base LR, for ``torch.optim.lr_scheduler.LambdaLR``.

    - warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps;
    - decay over ``total_steps``: ``poly`` = ``(1 - step / total) ** poly_power`` (official DAV2),
      ``cosine`` = ``0.5 * (1 + cos(pi * step / total))``, ``linear`` = ``1 - step / total``;
    - from ``stage2_start_step`` on, everything is multiplied by ``stage2_scale`` (stage 2 LR).
    """
    if scheduler_type not in ("poly", "cosine", "linear"):
        raise ValueError(f"unknown lr_scheduler_type {scheduler_type!r}: use poly, cosine or linear")
    total = max(int(total_steps), 1)

    def multiplier(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            value = (step + 1) / warmup_steps
        else:
            progress = min(step / total, 1.0)
            if scheduler_type == "poly":
                value = (1.0 - progress) ** poly_power
            elif scheduler_type == "cosine":
                value = 0.5 * (1.0 + math.cos(math.pi * progress))
            else:
                value = 1.0 - progress
        if stage2_start_step is not None and step >= stage2_start_step:
            value *= stage2_scale
        return value

    return multiplier

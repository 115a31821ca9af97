# n5k-hf: every target creates (once) and reuses the virtual environment in $(VENV).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel on CPU machines; GPU users: `make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" install`
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-slow style quality benchmark clean

$(BIN)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

## The main job: synthesise a small Nutrition5k, then run the pipeline on it.
demo: install
	$(BIN)/python scripts/demo.py --output-dir $(DEMO_DIR)

## The default test suite (what CI runs); slow tests are excluded by setup.cfg.
test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

style: install
	$(BIN)/ruff format n5k_hf recipes scripts tests
	$(BIN)/ruff check --fix n5k_hf recipes scripts tests

quality: install
	$(BIN)/ruff format --check n5k_hf recipes scripts tests
	$(BIN)/ruff check n5k_hf recipes scripts tests

benchmark: install
	for b in scripts/benchmark_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache

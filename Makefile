# mixlab: `make test` installs what it needs and runs the tests; `make bench-speed` runs the mixing- and engine-speed benchmarks.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU build of torch; installed first so that `pip install -e .` never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test lint bench-speed

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"

test: install
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests benchmarks

bench-speed: install
	$(PYTHON) benchmarks/mixing_speed.py
	$(PYTHON) benchmarks/engine_speed.py

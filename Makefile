# mixlab: `make bench` installs mixlab (and, where the system allows, the Fashion-MNIST data package) and runs the
# quick benchmark suite; `make test` installs the test dependencies and runs the tests; `make bench-speed` runs the
# mixing- and engine-speed benchmarks.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU build of torch; installed first so that `pip install -e .` never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

SUITE ?= quick
BENCH_ARGS ?=

.PHONY: install install-dev data bench test lint bench-speed

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e .

install-dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"

# Fashion-MNIST from the Debian package when apt-get can be used (as root, or with password-less sudo);
# otherwise a note, and `mixlab bench` runs its quick suite on MNIST-1D (generated locally) instead.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
		echo "note: apt-get could not install dataset-fashion-mnist; the quick suite will use MNIST-1D"; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then \
		sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		echo "note: apt-get could not install dataset-fashion-mnist; the quick suite will use MNIST-1D"; \
	else \
		echo "note: Fashion-MNIST needs apt-get as root (or: mixlab data fetch fashion_mnist); the quick suite will use MNIST-1D"; \
	fi

bench: install data
	$(PYTHON) -m mixlab bench --suite $(SUITE) $(BENCH_ARGS)

test: install-dev
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests benchmarks

bench-speed: install-dev
	$(PYTHON) benchmarks/mixing_speed.py
	$(PYTHON) benchmarks/engine_speed.py

# Two commands: `make run` and `make test` (`make test-fast` for the fast tier). All set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Two test processes (pytest-xdist): the slow tests wait on Ray, servers and subprocesses, so two share the 2 cores
# well (6.4 min instead of 9.3 min on 2 idle cores on 2026-12-02); the suite is CPU-bound beyond that (-n 3 took as
# long as -n 2 on 2026-12-03, about 10 min). PYTEST_WORKERS=0 runs the suite in one.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
# The timm/torchvision tests (pytest marker `extras`) run in an environment of their own: PyPI's torchvision is
# built against PyPI's torch, not against the CPU build in .venv (NOTES.md), so .venv-extras pairs the two.
EXTRAS_VENV ?= .venv-extras
EXTRAS_TORCH ?= 2.14.1
EXTRAS_TORCHVISION ?= 0.29.1
EXTRAS_PIP_ARGS ?=
# `make test` sets up .venv and .venv-extras at the same time: their editable installs of eeopt write the same
# build files in this folder, so they take turns (flock, where the system has it).
INSTALL_LOCK := $(shell command -v flock >/dev/null 2>&1 && echo "flock .install.lock")

.PHONY: setup setup-extras data run test test-fast test-extras bench clean

setup: $(VENV)/.installed

# Without a CUDA GPU, install PyTorch's CPU build: a local wheel where pip's find-links has one
# (offline), else the CPU wheel index. With a GPU, the default (CUDA) build from PyPI.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed in $(VENV)"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing torch==$(TORCH_VERSION) (CUDA build)"; \
		$(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	else \
		echo "no CUDA GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
		$(BIN)/pip install --no-index --no-deps "torch==$(TORCH_VERSION)" \
		|| $(BIN)/pip install "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	fi
	$(INSTALL_LOCK) $(BIN)/pip install -e ".[dev]"
	touch $@

# .venv-extras: torch + torchvision from PyPI (on Linux the CUDA build, ~6 GB, which also runs on a CPU; pass
# EXTRAS_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for PyTorch's CPU pair where that index is
# reachable), then eeopt with the timm and torchvision extras. Kept when torch and torchvision already import.
setup-extras: $(EXTRAS_VENV)/.installed

$(EXTRAS_VENV)/.installed: pyproject.toml Makefile
	test -x $(EXTRAS_VENV)/bin/python || $(PYTHON) -m venv $(EXTRAS_VENV)
	@if $(EXTRAS_VENV)/bin/python -c "import torch, torchvision" 2>/dev/null; then \
		echo "torch and torchvision already installed in $(EXTRAS_VENV)"; \
	else \
		$(EXTRAS_VENV)/bin/pip install --no-compile $(EXTRAS_PIP_ARGS) "torch==$(EXTRAS_TORCH)" "torchvision==$(EXTRAS_TORCHVISION)"; \
	fi
	$(INSTALL_LOCK) $(EXTRAS_VENV)/bin/pip install -e ".[dev,timm,torchvision]"
	touch $@

# Fashion-MNIST for the default study: found where it is, else Debian's package (where apt works), else the
# official files with checksums.
data: setup
	@$(BIN)/eeopt data find fashion-mnist 2>/dev/null \
	|| { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	     && { apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; }; } \
	|| $(BIN)/eeopt data download fashion-mnist

# The main job: the default study (Fashion-MNIST ResNet, SQLite + local MLflow + local Ray, about 10 minutes).
run: data
	$(BIN)/eeopt study run studies/resnet.yaml

# The main suite in .venv (where the extras tests skip), then the extras tests in .venv-extras (about 15 s); both
# run even when the first fails, and make fails if either did. A missing .venv-extras is set up from the start, beside
# .venv's set-up and then the main suite (mostly unpacking a 6 GB download: torch's files are not byte-compiled,
# which saves a minute of CPU while the suite runs; the extras tests compile what they import); its log is
# $(EXTRAS_VENV).log.
test:
	@status=0; \
	$(MAKE) --no-print-directory setup-extras > $(EXTRAS_VENV).log 2>&1 & extras=$$!; \
	if $(MAKE) --no-print-directory data; then \
		$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS) || status=1; \
	else \
		status=1; \
	fi; \
	if wait $$extras; then \
		$(EXTRAS_VENV)/bin/python -m pytest -n 0 -m extras $(PYTEST_ARGS) || status=1; \
	else \
		echo "make setup-extras failed (the last lines of $(EXTRAS_VENV).log):"; tail -n 20 $(EXTRAS_VENV).log; status=1; \
	fi; \
	exit $$status

test-extras: setup-extras
	$(EXTRAS_VENV)/bin/python -m pytest -n 0 -m extras $(PYTEST_ARGS)

# The fast tier, for every change (887 tests, 39-56 s of pytest on 2 idle cores on 2026-12-03): the pure core,
# config, CLI parsing and error paths, a few training steps at most; no Ray, servers, PostgreSQL, GPU or timm (the
# markers in pyproject.toml), and no `make data`. It lists its five slowest steps: a test call over about 1.5 s belongs
# under `slow` (a module fixture's setup, shared by many tests, may take a little more).
FAST_MARKERS ?= not slow and not postgres and not cluster and not gpu and not extras

test-fast: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "$(FAST_MARKERS)" --durations=5 $(PYTEST_ARGS)

# Every benchmark, each writing benchmarks/results/NAME.json, then BENCHMARKS.md rendered from them (7.6 min on 2
# idle cores on 2026-12-03 with the benchmark model cached, 8.2 min when the run trains it first; see BENCHMARKS.md
# for the machine and load).
bench: data
	$(BIN)/python benchmarks/report.py --start
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_certify.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_policies.py
	$(BIN)/python benchmarks/bench_evaluate.py --repeats 2
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_study.py
	$(BIN)/python benchmarks/trace_study.py
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) $(EXTRAS_VENV) $(EXTRAS_VENV).log runs studies/runs studies/*.db studies/mlartifacts .pytest_cache

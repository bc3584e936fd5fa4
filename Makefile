# Two commands: `make run` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# Two test processes (pytest-xdist): the slow tests mostly wait on Ray, servers and subprocesses, so two share the
# 2 cores well (6.4 min instead of 9.3 min measured on 2 idle cores). PYTEST_WORKERS=0 runs the suite in one.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: setup data run test bench clean

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
	$(BIN)/pip install -e ".[dev]"
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

test: data
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Every benchmark, each writing benchmarks/results/NAME.json, then BENCHMARKS.md rendered from them (about 7
# minutes on 2 idle cores, the benchmark model's training included; see BENCHMARKS.md for the machine and load).
bench: data
	$(BIN)/python benchmarks/report.py --start
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_policies.py
	$(BIN)/python benchmarks/bench_evaluate.py --repeats 2
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_study.py
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) runs studies/runs studies/*.db studies/mlartifacts .pytest_cache

# Two commands: `make run` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

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

run: setup
	$(BIN)/eeopt exits synthesize runs/example --seed 0
	$(BIN)/eeopt exits search --fit-on runs/example/val.npz --evaluate-on runs/example/test.npz

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_policies.py

clean:
	rm -rf $(VENV) runs .pytest_cache

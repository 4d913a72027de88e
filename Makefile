# The two commands of the README. Each creates .venv from nothing and installs the CPU build of torch first
# (a plain `torch` requirement would pull a multi-GB CUDA build).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
OUT ?= bench-out

.PHONY: setup data bench test lint clean

$(BIN)/priorkit: pyproject.toml
	command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (set PY=...)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[text,adapters,data,zoo,sparsity,dev]'
	touch $(BIN)/priorkit

setup: $(BIN)/priorkit

# Fashion-MNIST's idx files from Debian's dataset-fashion-mnist package into priorkit's data folder (no root).
data: setup
	$(BIN)/priorkit data fetch fashion-mnist

bench: setup data
	$(BIN)/priorkit bench --quick --out $(OUT)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check priorkit tests examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) $(OUT) runs

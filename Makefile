# Self-installing entry points: `make demo` and `make test` create .venv with the pinned, tested versions.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/ticketlab demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/mask_overhead.py
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/data_throughput.py

clean:
	rm -rf $(VENV) runs

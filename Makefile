# Everything a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench

# The stamp file is remade whenever the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python demo/run.py

# One worker per core: most tests wait on daemons and clients, not the CPU.
test: setup
	$(BIN)/python -m pytest -n auto

bench: setup
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

# OneGate: `make demo` starts the demo stack, `make test` runs every check and test.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA_DIR ?= var
PORT   ?= 8000

.PHONY: demo test check lint typecheck install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/onegate demo --data-dir $(DATA_DIR) --port $(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy core keyvault policy mfa idp gateway soc onegate bench

check: lint typecheck

test: $(VENV)/.installed-dev
	$(BIN)/python -m tests.services prepare
	$(MAKE) --no-print-directory check
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

bench: $(VENV)/.installed-dev
	@for name in keyvault idp mfa policy gateway; do $(BIN)/python -m bench $$name --json; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

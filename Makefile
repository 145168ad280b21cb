# Two commands on a fresh machine with Python 3.11+ and make:
#   make run    the engine on its embedded default (SQLite under ./data, in-process queue)
#   make test   the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The FHIR API's token (the sample's adt-to-fhir sends it there too): yours when set, else a new one
run: export ENGINE_API_TOKEN ?= $(shell $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))')
run: $(STAMP)
	$(BIN)/engine run --config config/channels.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: $(STAMP)
	$(BIN)/engine check --config config/channels.yaml

bench: $(STAMP)
	$(BIN)/python bench/mllp_ingest.py

clean:
	rm -rf $(VENV) data

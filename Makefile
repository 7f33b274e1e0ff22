# Two commands do all set-up on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_ACCOUNTS ?= 3000
DEMO_SEED ?= 7
DEMO_BOOK ?= data/demo-book

.PHONY: run test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: generate a demo book into a local folder and check it against the data contract.
# (Rebalancing the book arrives with the full-book job.)
run: $(STAMP)
	$(VENV)/bin/rebalance generate --accounts $(DEMO_ACCOUNTS) --seed $(DEMO_SEED) --out $(DEMO_BOOK) --overwrite
	$(VENV)/bin/rebalance validate --book $(DEMO_BOOK)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) data out .pytest_cache .hypothesis

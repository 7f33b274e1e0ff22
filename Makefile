# Two commands do all set-up on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_ACCOUNTS ?= 3000
DEMO_SEED ?= 7
DEMO_BOOK ?= data/demo-book
DEMO_OUT ?= data/runs

.PHONY: run test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: generate a demo book into a local folder and rebalance all of it on a local Ray
# (outputs under $(DEMO_OUT)/<run id>/; the summary says where).
run: $(STAMP)
	$(VENV)/bin/rebalance generate --accounts $(DEMO_ACCOUNTS) --seed $(DEMO_SEED) --out $(DEMO_BOOK) --overwrite
	$(VENV)/bin/rebalance run --book $(DEMO_BOOK) --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) data out .pytest_cache .hypothesis

# Two commands do all set-up on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DEMO_ACCOUNTS ?= 3000
DEMO_SEED ?= 7
DEMO_BOOK ?= data/demo-book
DEMO_OUT ?= data/runs
DEMO_RUN_ID ?= demo-$(shell date -u +%Y%m%d-%H%M%S)
ACCOUNTS ?= 10000
CAPACITY_ARGS ?=

.PHONY: run test install clean capacity

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: generate a demo book into a local folder, rebalance all of it on a local Ray
# (outputs under $(DEMO_OUT)/$(DEMO_RUN_ID)/; the summary says where) and write its report
# (report.html and report.json in the run's folder).
run: $(STAMP)
	$(VENV)/bin/rebalance generate --accounts $(DEMO_ACCOUNTS) --seed $(DEMO_SEED) --out $(DEMO_BOOK) --overwrite
	$(VENV)/bin/rebalance run --book $(DEMO_BOOK) --out $(DEMO_OUT) --run-id $(DEMO_RUN_ID)
	$(VENV)/bin/rebalance report --run $(DEMO_OUT)/$(DEMO_RUN_ID)

# Capacity test: generate (or reuse) a book of $(ACCOUNTS) accounts, run it on a local Ray, solve
# a sample both ways; figures in docs/capacity/ and docs/capacity.md (e.g. make capacity ACCOUNTS=50000
# CAPACITY_ARGS="--num-cpus 8").
capacity: $(STAMP)
	$(VENV)/bin/rebalance capacity --accounts $(ACCOUNTS) $(CAPACITY_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) data out .pytest_cache .hypothesis

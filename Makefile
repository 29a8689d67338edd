# Velosiped: `make demo` runs the whole thing on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= demo

.DEFAULT_GOAL := help

.PHONY: help
help:  ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/velo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(BIN)/velo  ## Create the venv and install velosiped with its dev tools

.PHONY: demo
demo: $(BIN)/velo  ## Make a sample model and CSVs under demo/, score them with `velo run`, show the outputs
	$(BIN)/python scripts/make_demo.py $(DEMO)
	VELO_STATE_DIR=$(DEMO)/state $(BIN)/velo run $(DEMO)/data --model $(DEMO)/model.joblib --workers 2
	@echo; echo "Outputs written next to their inputs:"; find $(DEMO)/data -name '*.out.csv*' ! -name '*.json' | sort
	@echo; echo "head $(DEMO)/data/a/1.out.csv:"; head -4 $(DEMO)/data/a/1.out.csv

.PHONY: demo-s3
demo-s3: $(BIN)/velo  ## The same on S3 with a fleet: local S3 endpoint, redis-server, 2 workers, dispatch --wait
	BIN=$(BIN) scripts/demo_s3.sh $(DEMO)

.PHONY: test
test: $(BIN)/velo  ## Run the unit and end-to-end tests
	$(BIN)/pytest -q

.PHONY: bench
bench: $(BIN)/velo  ## Benchmarks (about 45 minutes on 2 cores; bench.big_file and bench.memory write 2 and 6.5 GB of CSV once); results in docs/BENCHMARKS.md
	$(BIN)/python -m bench.bench --reps 3
	$(BIN)/python -m bench.dispatch_scale --files 100000 --reps 3 --million
	$(BIN)/python -m bench.overhead --files 1000 --reps 3
	$(BIN)/python -m bench.big_file --size-mb 2000 --shard-mb 256 --reps 3
	$(BIN)/python -m bench.memory --size-gb 5 --s3-gb 1 --reps 2 --big-reps 1
	$(BIN)/python -m bench.big_model --model-mb 600 --reps 2

.PHONY: lint
lint: $(BIN)/velo  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

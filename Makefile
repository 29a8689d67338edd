# Velosiped: `make demo` runs the whole thing on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= demo

.DEFAULT_GOAL := help

.PHONY: help
help:  ## Show this help
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(BIN)/velo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(BIN)/velo  ## Create the venv and install velosiped with its dev tools

.PHONY: demo
demo: $(BIN)/velo  ## Make a sample model and CSVs under demo/ (kept if there), score them with `velo run`, show the outputs
	DEMO_FRESH=$(DEMO_FRESH) $(BIN)/python scripts/make_demo.py $(DEMO)
	VELO_STATE_DIR=$(DEMO)/state $(BIN)/velo run $(DEMO)/data --model $(DEMO)/model.joblib --workers 2
	@echo; echo "Outputs written next to their inputs:"; find $(DEMO)/data -name '*.out.csv*' ! -name '*.json' | sort
	@echo; echo "head $(DEMO)/data/a/1.out.csv:"; head -4 $(DEMO)/data/a/1.out.csv
	@echo; echo "The demo keeps its Redis under $(DEMO)/state; its batches:"
	@echo "  VELO_STATE_DIR=$(DEMO)/state $(BIN)/velo status"
	@echo "Run make demo again: every file is skipped. make demo-clean starts over."

.PHONY: demo-clean
demo-clean:  ## Remove the demo's model, data, outputs and state (the next make demo writes them anew)
	rm -rf $(DEMO)/data $(DEMO)/state $(DEMO)/model.joblib
	@rmdir $(DEMO) 2>/dev/null || true

.PHONY: demo-s3
demo-s3: $(BIN)/velo  ## The same on S3 with a fleet: local S3 endpoint, redis-server, 2 workers, dispatch --wait
	BIN=$(BIN) scripts/demo_s3.sh $(DEMO)

.PHONY: test
test: $(BIN)/velo  ## Run the unit and end-to-end tests
	$(BIN)/pytest -q

# The bench extra (PySpark, the contender users would otherwise pick) only where benchmarks run.
$(VENV)/.bench: $(BIN)/velo pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@

.PHONY: bench
bench: $(VENV)/.bench  ## Benchmarks (bench.serve needs wrk: apt-get install wrk; bench.drift_evidently makes its own venv with Evidently), bench.engine runs PySpark; over an hour on 2 cores from a fresh clone, 24 minutes of it 10,000 and 100,000 small files on moto (FULL=1: every case); results in docs/BENCHMARKS.md
	@start=$$(date +%s); set -e; \
	for step in "bench.bench --reps 3 $(if $(FULL),--full)" \
	            "bench.dispatch_scale --files 50000 --reps 3 --million" \
	            "bench.overhead --files 1000 $(if $(FULL),--full)" \
	            "bench.startup --reps 5" \
	            "bench.big_file --size-mb 2000 --shard-mb 256 $(if $(FULL),--full)" \
	            "bench.memory --size-gb 5 --s3-gb $(if $(FULL),1 --full,0.5)" \
	            "bench.big_model --model-mb 600 $(if $(FULL),--reps 2,--rows 10000 --reps 1)" \
	            "bench.serve --reps 3 --seconds 10" \
	            "bench.stats_overhead --run-reps 9 --reps 7" \
	            "bench.drift_evidently" \
	            "bench.shadow" \
	            "bench.engine --reps 3" \
	            "bench.small_files --files 2000 --reps 5 --s3-files 10000 100000"; do \
	  echo "$(BIN)/python -m $$step"; s=$$(date +%s); \
	  $(BIN)/python -m $$step; \
	  echo "make bench: $$step: $$(( $$(date +%s) - s )) s"; \
	done; \
	echo "make bench: $$(( $$(date +%s) - start )) s in all (bench/data/ keeps ~9 GB of generated data for next time)"

.PHONY: lint
lint: $(BIN)/velo  ## ruff check and format check, mypy (strict on velosiped/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

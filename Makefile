# prunetime: one-command setup, runs and tests. Everything installs into .venv/.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all

export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup quick paper test lint report bench clean

# Pinned, known-good versions (requirements.lock). torch comes from the package registry
# (its regular build imports torchvision on CPU and uses a GPU when one is present).
$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

quick: setup  ## the quick preset (about 3 minutes on 2 cores)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/quick.yaml

paper: setup  ## the paper preset (config/config.yaml)
	$(VENV)/bin/snakemake --cores $(CORES)

test: setup  ## unit tests and the end-to-end quick run on real MNIST
	$(VENV)/bin/python -m pytest -q

report: setup  ## Snakemake's HTML report of a finished run: make report CONFIG=config/quick.yaml
	$(VENV)/bin/snakemake --report report.html --configfile $(or $(CONFIG),config/config.yaml)

bench: setup  ## the performance benchmarks (ratios measured side by side; see benchmarks/README.md)
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_retrain.py
	$(PY) benchmarks/bench_workflow.py startup
	$(PY) benchmarks/bench_workflow.py dryrun --configfile config/quick.yaml
	$(PY) benchmarks/bench_greedy.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakemake --lint --configfile config/quick.yaml
	$(VENV)/bin/snakemake --lint --configfile config/gates_quick.yaml

clean:
	rm -rf results .snakemake

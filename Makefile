# frozenrep: the two commands of the README, and a few conveniences.
#   make table1   install into .venv, then build results/table1.csv on the embedded default
#   make tables   the same for results/table2.csv (head capacity) and results/table3.csv (backbone size)
#   make table4   the same for results/table4.csv (backbone families)
#   make study    table 1 over 3 seeds, with the video budget at which the heads learn (params/study.yaml)
#   make test     install into .venv, then run the whole test suite
#   make test-fast  the tests without Snakemake DAGs, SLURM, Chromium or training subprocesses
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.frozenrep-installed

.PHONY: table1 tables table4 study test test-fast venv lint dry-run-paper mlflow-ui clean

table1: $(STAMP)
	$(BIN)/snakemake --cores all results/table1.csv

tables: $(STAMP)
	$(BIN)/snakemake --cores all results/table2.csv results/table3.csv

table4: $(STAMP)
	$(BIN)/snakemake --cores all results/table4.csv

study: $(STAMP)
	$(BIN)/snakemake --cores all results/table1.csv --configfile params/default.yaml params/study.yaml

# PYTEST_ARGS="-m 'not slurm and not browser'" leaves out the tests that start a SLURM cluster and
# drive Chromium (both install Debian packages with apt-get; the SLURM one needs root).
# TEST_WORKERS: pytest-xdist workers (0: one process); tests/conftest.py keeps the tests of one
# DAG run on one worker.
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The fast lane: no Snakemake DAG, SLURM, browser or training subprocess (a few minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not workflow and not slow" $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): envs/requirements.txt envs/constraints.txt envs/detectron2.txt envs/frozenrep.post-deploy.sh pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: frozenrep needs Python 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --progress-bar off -r envs/requirements.txt -c envs/constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	PYTHON=$(BIN)/python bash envs/frozenrep.post-deploy.sh   # Detectron2 (see there)
	touch $@

lint: $(STAMP)
	$(BIN)/snakemake --lint

dry-run-paper: $(STAMP)
	$(BIN)/snakemake -n --configfile=params/paper.yaml results/table1.csv results/table2.csv results/table3.csv results/table4.csv

# The MLflow UI over the project's tracking store, on 127.0.0.1 only (MLFLOW_PORT=... to move it).
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)
	$(BIN)/frozenrep-mlflow-ui --port $(MLFLOW_PORT)

clean:
	rm -rf data checkpoints runs results logs mlruns.db mlartifacts .snakemake

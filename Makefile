# Grainhouse — `make help` lists the targets (generated from the ## comments).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PROTO_STAMP := libs/proto/grainhouse_proto/.stamp
PKGS := libs/common libs/proto libs/package services/auth services/grainmgr services/backup services/frontend cli
PYPROJECTS := $(addsuffix /pyproject.toml,$(PKGS))
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup system-deps run test test-unit lint typecheck proto bench clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

system-deps: ## Install Debian packages the platform and tests need (only when root and missing)
	@bash tools/system-deps.sh

$(STAMP): $(PYPROJECTS) requirements-dev.txt constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q -c constraints.txt -r requirements-dev.txt $(addprefix -e ,$(PKGS)) -e 'libs/package[test]'
	@touch $@

$(PROTO_STAMP): $(STAMP) $(wildcard proto/*.proto) tools/gen_proto.py
	@$(PY) tools/gen_proto.py

setup: system-deps $(STAMP) $(PROTO_STAMP) ## Create the venv, install everything, generate stubs

proto: $(STAMP) ## Generate gRPC stubs from proto/ (never committed)
	@$(PY) tools/gen_proto.py

run: setup ## Set up and start the whole platform (data in ./var); Ctrl-C stops it
	@$(VENV)/bin/grainhouse up

test: setup ## Set up and run the whole test suite
	@$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup -p no:cacheprovider

test-unit: setup ## Only the fast unit tests
	@$(VENV)/bin/pytest -m unit -n $(PYTEST_WORKERS)

lint: setup ## ruff, import-linter contracts, mypy on libs/, the services and the CLI
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/lint-imports
	@$(VENV)/bin/mypy --no-incremental libs/common/grainhouse_common libs/package/grainhouse_package \
		services/auth/grainhouse_auth services/grainmgr/grainhouse_grainmgr \
		services/backup/grainhouse_backup services/frontend/grainhouse_frontend cli/grainhouse_cli

typecheck: setup ## mypy (strict) on libs/, the services and the CLI, as `make lint` runs it
	@$(VENV)/bin/mypy libs/common/grainhouse_common libs/package/grainhouse_package \
		services/auth/grainhouse_auth services/grainmgr/grainhouse_grainmgr \
		services/backup/grainhouse_backup services/frontend/grainhouse_frontend cli/grainhouse_cli

bench: setup ## Benchmarks; results in bench/results/latest.json
	@$(PY) bench/run.py

clean: ## Remove the venv, generated code and caches (keeps ./var)
	rm -rf $(VENV) libs/proto/grainhouse_proto/*_pb2*.py* $(PROTO_STAMP) .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

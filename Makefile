# The two commands a newcomer needs are `make up` and `make test`; both bootstrap first.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PYTEST_ARGS ?=

.PHONY: help bootstrap up test bench soak lint fmt generate dashboards drill-matrix pin model clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

bootstrap: ## install uv, the workspace and the Debian test tools (where apt exists)
	@./scripts/bootstrap.sh

up: bootstrap ## run the three services locally with gentle traffic (Ctrl-C stops)
	@$(UV) run servescope up

# Two workers, each test file on one of them (its module fixtures start once); most of the
# suite waits on real processes, so the waits overlap. PYTEST_WORKERS=0 runs it in one.
PYTEST_WORKERS ?= 2
test: bootstrap ## run the whole test suite
	@$(UV) run pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: bootstrap ## measure telemetry's cost side by side (needs wrk); writes docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "bench needs wrk: sudo apt-get install wrk"; exit 1; }
	@$(UV) run servescope bench

# Ten minutes unless SOAK_SECONDS says otherwise (SOAK_SECONDS=3600 make soak for an hour).
SOAK_SECONDS ?= 600
soak: bootstrap ## 10 min (SOAK_SECONDS=N) of the stack under mixed traffic and faults, memory watched; writes docs/soak.md
	@$(UV) run servescope soak --seconds $(SOAK_SECONDS)

lint: bootstrap ## ruff (lint and format check) and mypy
	@$(UV) run ruff check .
	@$(UV) run ruff format --check .
	@$(UV) run mypy

fmt: bootstrap ## apply ruff's fixes and formatting
	@$(UV) run ruff check --fix .
	@$(UV) run ruff format .

generate: bootstrap ## regenerate generated files (docs/telemetry.md, ...) from their sources
	@$(UV) run servescope generate

dashboards: bootstrap ## regenerate the Grafana dashboards JSON (dashboards/*.json) from their code
	@$(UV) run servescope dashboards

drill-matrix: bootstrap ## every fault kind x service x step through the responder; table in docs/labs.md
	@SERVESCOPE_WRITE_DRILL_MATRIX=1 $(UV) run pytest -s tests/alerting/test_drill_matrix.py

pin: ## re-pin every dependency version in pyproject.toml from a fresh resolution
	@$(UV) run python scripts/pin.py

model: ## rebuild the bundled model in a scratch venv (needs torch; see the model card)
	@python3 -m venv .run/train-venv
	@.run/train-venv/bin/pip install --quiet -r services/classifier/model/requirements-train.txt
	@.run/train-venv/bin/python services/classifier/model/build_model.py

clean: ## remove local run state (logs, caches); keeps the environment
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

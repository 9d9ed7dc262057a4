# The two commands: `make run` (the embedded GRPO demo) and `make test` (lint + the test suite).
.PHONY: setup run test test-tier2 test-fast lint fmt

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/python -m raylhf.grpo

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest tests -q -m "not tier2"

# the slower tier (multi-node across network namespaces, colocated tensor-parallel GRPO): CI runs it after `make test`
test-tier2: setup
	.venv/bin/python -m pytest tests -q -m tier2

test-fast: setup
	.venv/bin/python -m pytest tests -q -m "not slow"

lint: setup
	.venv/bin/ruff check .

fmt: setup
	.venv/bin/ruff check --fix .

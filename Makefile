# The two commands of the README: `make quickstart` (the main job) and `make test` (what CI runs).
.PHONY: env quickstart test test-all bench lint

env:
	bash scripts/env.sh

quickstart: env
	.venv/bin/kdkit quickstart

test: env
	bash scripts/install_debian.sh
	.venv/bin/python -m pytest -q

test-all: env
	bash scripts/install_debian.sh
	.venv/bin/python -m pytest -q -m "slow or not slow"

bench: env
	.venv/bin/python benchmarks/step_speed.py

lint: env
	.venv/bin/ruff check src tests benchmarks

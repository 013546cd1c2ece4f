# Developer tasks. `just` lists them; every recipe runs in the project's virtual environment.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
python := venv / "bin/python"

# List the recipes.
default:
    @just --list

# Create .venv and install tokenflight with its development tools.
setup:
    test -x {{python}} || python3 -m venv {{venv}}
    {{python}} -m pip install --quiet --upgrade pip
    {{python}} -m pip install --quiet -e '.[dev]'
    npm ci --prefix tests/servers --no-audit --no-fund --loglevel=error

# Run the test suite on asyncio and trio (arguments go to pytest).
test *args:
    {{python}} -m pytest {{args}}

# Lint and check formatting.
lint:
    {{python}} -m ruff check src tests stress bench
    {{python}} -m ruff format --check src tests stress bench

# Type-check the library, the tests, the stress runs and the benchmarks strictly.
typecheck:
    {{python}} -m mypy

# Everything CI checks: lint, types and tests.
check: lint typecheck test

# Run the bounded stress runs on both backends (seconds per run; default 60).
stress seconds="60":
    {{python}} -m stress --seconds {{seconds}}

# Run the benchmarks and rewrite docs/benchmarks.md.
bench *args:
    {{python}} -m bench {{args}}

# Check the docs: every Python example in docs/ and README.md runs.
docs:
    {{python}} -m pytest tests/test_docs.py -q

# Run the demo: 10,000 requests from 1,000 tasks against embedded servers.
demo *args:
    {{venv}}/bin/tokenflight demo {{args}}

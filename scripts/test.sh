#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs the TypeScript and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

export SDSERVE_PYTHON="$PWD/.venv/bin/python"
echo "== TypeScript tests"
node --test --test-concurrency=1 $(find dist/tests -name '*.test.js' | sort)
echo "== Python tests"
PYTHONPATH=python .venv/bin/python -m pytest tests/python -q

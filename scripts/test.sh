#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs the TypeScript and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# The web UI's tests drive Debian's chromium through Playwright (which downloads no browser here).
if ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium
fi

export SDSERVE_PYTHON="$PWD/.venv/bin/python"
echo "== TypeScript tests"
node --test --test-concurrency=1 $(find dist/tests -name '*.test.js' | sort)
echo "== Python tests"
PYTHONPATH=python .venv/bin/python -m pytest tests/python -q

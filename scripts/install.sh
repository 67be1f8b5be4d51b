#!/usr/bin/env bash
# Installs what sdserve needs, idempotently: a Python venv (.venv) for the backends and tests,
# the Node packages, the compiled TypeScript, and the built-in tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, so that a local CPU build of the pinned version is taken before anything pulls another
.venv/bin/python -m pip install -q --disable-pip-version-check "$(grep '^torch==' requirements.txt)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run -s build

bin/sdserve make-tiny-model --variant sd --out model_repository/tiny_sd/1
bin/sdserve make-tiny-model --variant sdxl --out model_repository/tiny_sdxl/1
bin/sdserve make-tiny-model --variant sd21 --out model_repository/tiny_sd21/1
bin/sdserve make-tiny-model --variant sdxl_refiner --out model_repository/tiny_sdxl_refiner/1

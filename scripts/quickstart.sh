#!/usr/bin/env bash
# The quick start: install, serve the built-in model shapes_sd, draw a prompt with the client, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

PORT=${SDSERVE_HTTP_PORT:-8000}
LOG=$(mktemp -t sdserve-server.XXXXXX.log)
bin/sdserve serve --model-repository model_repository --model-control-mode explicit \
  --load-model shapes_sd --http-port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
  if curl -sf "localhost:$PORT/v2/health/ready" >/dev/null; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then cat "$LOG"; exit 1; fi
  sleep 0.5
done
grep -A20 -- '^+-' "$LOG" | grep -v '^{' || true

bin/sdserve client --model shapes_sd --url "localhost:$PORT" --save-image \
  --prompt "a yellow star on a blue background" --seed 1 --no-progress
ls -l client_0_generated_image_0.jpg

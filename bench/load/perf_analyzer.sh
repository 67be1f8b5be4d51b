#!/usr/bin/env bash
# Triton's perf_analyzer (PyPI `perf-analyzer`, needs glibc 2.38) against sdserve over HTTP and gRPC:
# the add_sub Python model and the built-in tiny_sd model (a BYTES prompt from --input-data).
# Usage: bench/load/perf_analyzer.sh OUT_DIR   (needs node, the Python packages, perf_analyzer on PATH)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/load/results}
mkdir -p "$OUT"
PA=$(command -v perf_analyzer) || { echo "perf_analyzer is not on PATH"; exit 1; }
bin/sdserve serve --model-repository tests/fixtures/model_repository --model-repository model_repository \
  --model-control-mode explicit --load-model add_sub --load-model tiny_sd >"$OUT/server_perf_analyzer.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 300); do
  curl -sf localhost:8000/v2/health/ready >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server_perf_analyzer.log"; exit 1; }
  sleep 1
done
PROMPT=$(mktemp)
echo '{"data": [{"prompt": ["a lighthouse at dusk"]}]}' > "$PROMPT"
for protocol in http grpc; do
  url=$([ $protocol = http ] && echo localhost:8000 || echo localhost:8001)
  "$PA" -m add_sub -i $protocol -u $url --concurrency-range 1:4 --measurement-interval 2000 2>&1 \
    | tee -a "$OUT/perf_analyzer.txt" | grep -E 'Concurrency:|Error'
  "$PA" -m tiny_sd -i $protocol -u $url --input-data "$PROMPT" --shape prompt:1 \
    --concurrency-range 1:4 --measurement-interval 4000 2>&1 | tee -a "$OUT/perf_analyzer.txt" | grep -E 'Concurrency:|Error'
done

#!/usr/bin/env bash
# Load benchmark on a GPU machine: full-size SD 1.5 (random weights) at 512x512, 50 steps, served
# three ways — (a) no batching, (b) Triton's request-level dynamic batching, (c) step-level
# batching — and driven through the HTTP server by closed-loop clients (`sdserve client`) at
# concurrency 1, 4 and 16. Also runs perf_analyzer (where its binary runs) against HTTP and gRPC.
# Usage: bench/load/run.sh OUT_DIR   (needs node, the Python packages and a CUDA GPU)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/load/results}
mkdir -p "$OUT"
REPO=$(mktemp -d)
WEIGHTS=$REPO/.weights/sd15
MAX_BATCH=${MAX_BATCH:-8}

python3 bench/load/make_model.py --case sd15 --out "$WEIGHTS" 2>&1 | tail -1
write_model() { # name max_batch step_batching
  mkdir -p "$REPO/$1/1"
  sed -e "s|@MAX_BATCH@|$2|" -e "s|@STEP_BATCHING@|$3|" -e "s|@SIZE@|512|g" -e "s|@STEPS@|50|" \
      -e "s|@WEIGHTS@|$WEIGHTS|" bench/load/config.pbtxt.template > "$REPO/$1/config.pbtxt"
}
write_model sd15_none 1 false
write_model sd15_request "$MAX_BATCH" false
write_model sd15_step "$MAX_BATCH" true

bin/sdserve serve --model-repository "$REPO" --model-repository tests/fixtures/model_repository \
  --model-repository model_repository --model-control-mode explicit \
  --load-model sd15_none --load-model sd15_request --load-model sd15_step --load-model add_sub --load-model tiny_sd \
  >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 600); do
  curl -sf localhost:8000/v2/health/ready >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
  sleep 1
done
grep -A12 -- '^+-' "$OUT/server.log"

for model in sd15_none sd15_request sd15_step; do
  bin/sdserve client --model "$model" --requests 2 --no-progress >/dev/null   # warm-up
  for clients in 1 4 16; do
    requests=$(( clients == 1 ? 4 : 2 ))
    echo "== $model clients=$clients requests=$requests" | tee -a "$OUT/load.txt"
    bin/sdserve client --model "$model" --clients "$clients" --requests "$requests" --no-progress \
      | grep -E '^(Throughput|Latency)' | tee -a "$OUT/load.txt"
  done
done

PA=$(command -v perf_analyzer || true)
if [ -n "$PA" ]; then
  echo '{"data": [{"prompt": ["a lighthouse at dusk"]}]}' > "$REPO/prompt.json"
  for protocol in http grpc; do
    url=$([ $protocol = http ] && echo localhost:8000 || echo localhost:8001)
    "$PA" -m add_sub -i $protocol -u $url --concurrency-range 1:4 --measurement-interval 2000 2>&1 \
      | tee -a "$OUT/perf_analyzer.txt" | grep -E 'Concurrency:|Error' 
    "$PA" -m tiny_sd -i $protocol -u $url --input-data "$REPO/prompt.json" --shape prompt:1 \
      --concurrency-range 1:4 --measurement-interval 4000 2>&1 | tee -a "$OUT/perf_analyzer.txt" | grep -E 'Concurrency:|Error'
  done
fi
curl -s localhost:8002/metrics | grep -E '^(nv_inference_(count|exec_count|request_success)|sdserve_batch_executions_total)' > "$OUT/metrics.txt"

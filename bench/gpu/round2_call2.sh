#!/bin/bash
# Call 2: SD 1.5 engine and stock + compile (batch 1 and 4), SDXL stock + compile (batch 1 and 4),
# the SDXL channels_last lever (both layouts): seven processes build side by side, measure in turn.
# Run from the repository root on a GPU machine with diffusers installed (here from wheels in whl/).
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
if ls whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
mkdir -p /tmp/r2
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee /tmp/r2/00-gpu.log
common="--out $OUT --lock /tmp/r2/lock --peers 7 --wait-s 390"
python3 bench/gpu/round2.py --case sd15 --part engine $common > /tmp/r2/sd15-engine.log 2>&1 & pids="$!"
python3 bench/gpu/round2.py --case sdxl --part stock --batch 1 $common > /tmp/r2/sdxl-stock1.log 2>&1 & pids="$pids $!"
python3 bench/gpu/round2.py --case sdxl --part stock --batch 4 $common > /tmp/r2/sdxl-stock4.log 2>&1 & pids="$pids $!"
python3 bench/gpu/round2.py --case sd15 --part stock --batch 1 $common > /tmp/r2/sd15-stock1.log 2>&1 & pids="$pids $!"
python3 bench/gpu/round2.py --case sd15 --part stock --batch 4 $common > /tmp/r2/sd15-stock4.log 2>&1 & pids="$pids $!"
python3 bench/gpu/round2.py --case sdxl --part lever --layout nchw $common > /tmp/r2/sdxl-lever-nchw.log 2>&1 & pids="$pids $!"
python3 bench/gpu/round2.py --case sdxl --part lever --layout nhwc $common > /tmp/r2/sdxl-lever-nhwc.log 2>&1 & pids="$pids $!"
collect() { for f in /tmp/r2/*.log; do echo "== $f"; grep -v -i "warn\|float32: \[\]\|deprecat\|originates\|upsampling.py\|^\s*$\|bfloat16 and is_torch" "$f"; done > $OUT/logs.txt; }
( while true; do collect; sleep 5; done ) & collector=$!
wait $pids
kill $collector
collect
tail -n 4 /tmp/r2/*.log

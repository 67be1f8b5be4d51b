"""Writes a full-size random-weight model (SD 1.5 or SDXL architecture, fp16) as a diffusers
folder, so the server can load it like real weights. The architectures and the weights'
generation are bench/gpu's; nothing is downloaded."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))

import run as gpu_bench  # noqa: E402  (bench/gpu/run.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    parts = gpu_bench.build_models(args.case)
    pipe = gpu_bench.stock_pipeline(parts)
    pipe.save_pretrained(args.out, safe_serialization=True)
    print(f"wrote {args.case} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Turns a training checkpoint into the model folder the server loads.

    python -m training.export --checkpoint DIR --out model_repository/shapes_sd/1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model import export_pipeline_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write shapes_sd in the diffusers folder layout (float16).")
    parser.add_argument("--checkpoint", type=Path, required=True, help="folder written by training.train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder, for checkpoints that do not record theirs")
    args = parser.parse_args(argv)
    export_pipeline_folder(args.checkpoint, args.out, args.tokenizer)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

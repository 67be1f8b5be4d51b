"""Regenerates python/sdserve_backend/pipelines/checkpoint_configs/clip_merges.txt.

CLIP's byte-pair merges (the same ones for Stable Diffusion 1.x, 2.x and XL's tokenizers) come
from the `bpe_simple_vocab_16e6.txt.gz` that the MIT-licensed open_clip_torch package ships. CLIP
uses the first 49152 - 256 - 2 merges of that list (its vocabulary is 256 byte tokens, 256 byte
word ends, one token per merge and two special tokens); the vocabulary itself follows from the
merges, so only they are kept (sdserve_backend.pipelines.single_file builds the vocabulary).

    pip download --no-deps open_clip_torch==3.3.0 -d /tmp/oc
    python scripts/make_clip_merges.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl
"""

from __future__ import annotations

import gzip
import sys
import zipfile
from pathlib import Path

VOCAB_SIZE = 49408
MERGE_COUNT = VOCAB_SIZE - 2 * 256 - 2
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
OUT = Path(__file__).resolve().parents[1] / "python/sdserve_backend/pipelines/checkpoint_configs/clip_merges.txt"


def main(source: str) -> int:
    """`source`: the open_clip_torch wheel, or the bpe_simple_vocab_16e6.txt.gz file itself."""
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            packed = wheel.read(BPE_MEMBER)
    else:
        packed = Path(source).read_bytes()
    lines = gzip.decompress(packed).decode("utf-8").split("\n")
    # The first line is the file's version header, not a merge.
    merges = lines[1 : 1 + MERGE_COUNT]
    if len(merges) != MERGE_COUNT or any(len(line.split(" ")) != 2 for line in merges):
        raise SystemExit(f"{source}: expected {MERGE_COUNT} merges of two parts each")
    OUT.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(merges)} merges to {OUT}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))

"""The GPU engine: fast runners for the UNet and the VAE decoder of loaded `DiffusionComponents`.

On CUDA, `prepare` returns components whose `unet` and `vae.decode` run through CUDA graphs
captured per row-count bucket, in float16 with fused QKV projections and the measured-fastest
attention backend and memory format. On the CPU it returns the components unchanged, so CI runs the
same code path without the CUDA-only pieces.
"""

from sdserve_backend.engine.buckets import bucket_sizes, pick_bucket
from sdserve_backend.engine.metadata import ENGINE_FILE
from sdserve_backend.engine.prepare import EngineOptions, EngineReport, prepare, prepare_with_report

__all__ = [
    "ENGINE_FILE",
    "EngineOptions",
    "EngineReport",
    "bucket_sizes",
    "pick_bucket",
    "prepare",
    "prepare_with_report",
]

"""Diffusion pipelines: model loading, schedulers and the text-to-image recipe."""

from sdserve_backend.pipelines.components import DiffusionComponents, detect_version, load_components
from sdserve_backend.pipelines.device import Placement, choose_placement
from sdserve_backend.pipelines.schedulers import (
    SCHEDULER_SHORT_NAMES,
    canonical_scheduler_name,
    make_scheduler,
    resolve_scheduler_class,
)
from sdserve_backend.pipelines.requests import GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.text_to_image import TextToImagePipeline, split_per_request
from sdserve_backend.pipelines.step_batcher import RequestCancelled, StepBatcher, StepRecord

__all__ = [
    "SCHEDULER_SHORT_NAMES",
    "DiffusionComponents",
    "GenerationRequest",
    "GenerationSettings",
    "Placement",
    "RequestCancelled",
    "StepBatcher",
    "StepRecord",
    "TextToImagePipeline",
    "canonical_scheduler_name",
    "choose_placement",
    "detect_version",
    "load_components",
    "make_scheduler",
    "resolve_scheduler_class",
    "split_per_request",
]

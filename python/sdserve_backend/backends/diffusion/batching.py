"""Running a batch of parsed requests through the pipeline, without any Triton types.

Requests that share the image size, step count, guidance scale and scheduler run as one pipeline
batch; each keeps its own seed. A request that fails its checks gets its own error and the others
still run. This is the whole of `execute` short of converting tensors, so tests drive it directly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sdserve_backend.image_encoding import OutputEncoding
from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    RequestCancelled,
    TextToImagePipeline,
    canonical_scheduler_name,
)

log = logging.getLogger("sdserve.diffusion")


@dataclass(frozen=True)
class Job:
    """One request's work: its prompts and seed, and the settings it asked for."""

    request: GenerationRequest
    settings: GenerationSettings
    # The file format its images are also sent in; None: the raw pixels only.
    encoding: OutputEncoding | None = None
    # What the client should know about how its request was read (a prompt cut, say).
    warnings: tuple[str, ...] = ()


# Per job: its images (uint8 [B, H, W, 3]) or the error to answer it with.
Outcome = np.ndarray | Exception


def run_jobs(
    pipeline: TextToImagePipeline,
    jobs: Sequence[Job | Exception],
    on_step: Callable[[int, int, int], None] | None = None,
    is_cancelled: Callable[[int], bool] | None = None,
) -> list[Outcome]:
    """Run `jobs` (an Exception stands for a request that already failed parsing).

    `on_step(job_index, step, steps)` reports progress; `is_cancelled(job_index)` is polled
    between steps, and a pipeline batch whose jobs are all cancelled stops (RequestCancelled).
    """
    outcomes: list[Outcome | None] = [job if isinstance(job, Exception) else None for job in jobs]

    # 1. Check each job on its own, and group the good ones by their shared settings
    groups: dict[GenerationSettings, list[int]] = {}
    for index, job in enumerate(jobs):
        if isinstance(job, Exception):
            continue
        try:
            settings = _normalized(job.settings, pipeline)
            pipeline.check_inputs([job.request], settings)
        except ValueError as error:
            outcomes[index] = error
            continue
        groups.setdefault(settings, []).append(index)

    # 2. Run each group as one pipeline batch and hand the images back per job
    for settings, indices in groups.items():
        batch = [jobs[index] for index in indices]
        requests = [job.request for job in batch if isinstance(job, Job)]

        def report(step: int, steps: int, indices: list[int] = indices) -> None:
            if is_cancelled is not None and all(is_cancelled(index) for index in indices):
                raise RequestCancelled("request was cancelled")
            if on_step is not None:
                for index in indices:
                    on_step(index, step, steps)

        try:
            images = pipeline(requests, settings, on_step=report)
        except Exception as error:  # noqa: BLE001 - one failed batch must not fail the others
            if not isinstance(error, (RequestCancelled, ValueError)):
                log.exception("pipeline batch of %d request(s) failed", len(indices))
            for index in indices:
                outcomes[index] = error
            continue
        for index, request_images in zip(indices, images, strict=True):
            outcomes[index] = request_images

    assert all(outcome is not None for outcome in outcomes)
    return [outcome for outcome in outcomes if outcome is not None]


def _normalized(settings: GenerationSettings, pipeline: TextToImagePipeline) -> GenerationSettings:
    """Settings under one spelling, so that "euler" and "EulerDiscreteScheduler" batch together."""
    scheduler = canonical_scheduler_name(settings.scheduler, pipeline.components.scheduler_class)
    return dataclasses.replace(settings, scheduler=scheduler, guidance_scale=float(settings.guidance_scale))

"""The three ways of running a request (the plain pipeline, request-level batching, the step
batcher) share one task and one denoise step, so one seed gives one image whichever runs it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import pytest

from sdserve_backend.backends.diffusion.batching import Job, run_jobs
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, StepBatcher, TextToImagePipeline

PipelineLoader = Callable[[str], TextToImagePipeline]
TIMEOUT_S = 120


def step_batched(pipeline: TextToImagePipeline, jobs: list[Job]) -> list[np.ndarray]:
    batcher = StepBatcher(pipeline, max_images=4)
    try:
        outcomes: list[Future[np.ndarray]] = []
        for job in jobs:
            outcome: Future[np.ndarray] = Future()
            outcomes.append(outcome)
            batcher.submit(job.request, job.settings,
                           lambda result, outcome=outcome: outcome.set_exception(result) if isinstance(result, Exception)
                           else outcome.set_result(result))
        return [outcome.result(TIMEOUT_S) for outcome in outcomes]
    finally:
        batcher.close()


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
@pytest.mark.parametrize("scheduler", ["euler_a", "dpm++"])
def test_the_three_ways_of_running_a_request_make_the_same_image(
    variant: str, scheduler: str, load_tiny_pipeline: PipelineLoader
) -> None:
    pipeline = load_tiny_pipeline(variant)
    job = Job(GenerationRequest(["a cat in the snow", "a cat"], seed=1234, negative_prompts=["blurry", None]),
              GenerationSettings(64, 64, 3, 6.0, scheduler))

    [plain] = pipeline([job.request], job.settings)
    [request_level] = run_jobs(pipeline, [job])
    [stepped] = step_batched(pipeline, [job])

    assert isinstance(request_level, np.ndarray)
    assert plain.shape == (2, 64, 64, 3)
    assert np.array_equal(plain, request_level)
    assert np.array_equal(plain, stepped)


def test_a_request_gets_its_image_whatever_shares_its_unet_calls(load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline("sd")
    job = Job(GenerationRequest(["a red house"], seed=7), GenerationSettings(64, 64, 3, 7.5, "euler_a"))
    # Joins the step batcher's UNet calls with its own scheduler, steps and guidance.
    other = Job(GenerationRequest(["a blue car", "a tree"], seed=8), GenerationSettings(64, 64, 2, 3.0, "ddim"))
    # Shares the settings, so request-level batching runs it in the same pipeline batch.
    same_settings = Job(GenerationRequest(["a blue car", "a tree"], seed=8), job.settings)

    [alone] = pipeline([job.request], job.settings)
    stepped, _ = step_batched(pipeline, [job, other])
    _, plain_batched = run_jobs(pipeline, [same_settings, job])

    assert isinstance(plain_batched, np.ndarray)
    for image in (stepped, plain_batched):
        assert int(np.abs(image.astype(np.int16) - alone.astype(np.int16)).max()) <= 2

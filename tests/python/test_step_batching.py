"""Step-level batching on the tiny models: requests join the running UNet batch at the next step,
leave when their own steps are done, and get the image they would get alone."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils

from sdserve_backend.backends.diffusion.model import TritonPythonModel
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.prompts import PromptEncoder
from sdserve_backend.pipelines.tasks.text_to_image import TextToImage
from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    RequestCancelled,
    StepBatcher,
    TextToImagePipeline,
)

PipelineLoader = Callable[[str], TextToImagePipeline]
TIMEOUT_S = 120
Submitted = tuple[int, "Future[np.ndarray]"]


class Runner:
    """A StepBatcher, with each request's outcome as a future."""

    def __init__(self, pipeline: TextToImagePipeline, max_images: int = 4) -> None:
        self.batcher = StepBatcher(pipeline, max_images=max_images)

    def submit(
        self,
        request: GenerationRequest,
        settings: GenerationSettings,
        on_step: Callable[[int, int], None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> Submitted:
        outcome: Future[np.ndarray] = Future()

        def on_done(result: np.ndarray | Exception) -> None:
            if isinstance(result, Exception):
                outcome.set_exception(result)
            else:
                outcome.set_result(result)

        return self.batcher.submit(request, settings, on_done, on_step=on_step, is_cancelled=is_cancelled), outcome

    def compositions(self, since: int = 0) -> list[tuple[tuple[int, int], ...]]:
        """Per UNet call: (request key, the step it took) for each request in the call."""
        return [record.members for record in self.batcher.trace()[since:]]


def make_runner(pipeline: TextToImagePipeline, max_images: int = 4) -> Iterator[Runner]:
    runner = Runner(pipeline, max_images)
    yield runner
    runner.batcher.close()


@pytest.fixture(params=["sd", "sdxl"])
def runner(request: pytest.FixtureRequest, load_tiny_pipeline: PipelineLoader) -> Iterator[Runner]:
    yield from make_runner(load_tiny_pipeline(request.param))


@pytest.fixture
def sd_runner(load_tiny_pipeline: PipelineLoader) -> Iterator[Runner]:
    yield from make_runner(load_tiny_pipeline("sd"))


def max_abs_diff(first: np.ndarray, second: np.ndarray) -> int:
    assert first.shape == second.shape
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


def on_step_number(number: int, action: Callable[[], None]) -> Callable[[int, int], None]:
    """A progress callback that runs `action` once, after the request's step `number`."""
    def on_step(step: int, _steps: int) -> None:
        if step == number:
            action()
    return on_step


CAT = GenerationRequest(["a red cat"], seed=1, negative_prompts=["blurry"])
# The model's own scheduler (PNDM) takes an extra UNet call; the trace tests use Euler, one a step.
SMALL = GenerationSettings(64, 64, 4, 7.5, "")
EULER = GenerationSettings(64, 64, 4, 7.5, "euler")


def test_each_request_gets_its_solo_image_while_sharing_the_batch_with_different_settings(runner: Runner) -> None:
    jobs = [
        (CAT, SMALL),
        (GenerationRequest(["a dog", "a bird"], seed=7), GenerationSettings(64, 64, 3, 1.0, "euler_a")),
        (GenerationRequest(["a house"], seed=3), GenerationSettings(64, 64, 2, 5.0, "ddim")),
    ]
    alone = [runner.submit(*job)[1].result(TIMEOUT_S) for job in jobs]
    solo_calls = len(runner.batcher.trace())

    # The other two arrive while the first runs, and join it at its next step.
    joined: list[Submitted] = []
    first = runner.submit(*jobs[0], on_step=on_step_number(1, lambda: joined.extend(runner.submit(*job) for job in jobs[1:])))
    together = [first[1].result(TIMEOUT_S)] + [outcome.result(TIMEOUT_S) for _, outcome in joined]

    for solo, shared in zip(alone, together, strict=True):
        assert max_abs_diff(solo, shared) <= 2
    assert alone[1].shape == (2, 64, 64, 3)
    keys = {first[0], *(key for key, _ in joined)}
    assert any({key for key, _ in members} == keys for members in runner.compositions(solo_calls))
    # ... and the step batcher's image is the pipeline's for the request alone.
    assert max_abs_diff(alone[0], runner.batcher.pipeline([CAT], SMALL)[0]) <= 2


def test_a_request_arriving_mid_batch_joins_at_the_next_step_and_the_first_leaves_when_done(sd_runner: Runner) -> None:
    joined: list[Submitted] = []
    late = GenerationRequest(["a dog"], seed=2)
    first_key, first = sd_runner.submit(CAT, EULER, on_step=on_step_number(1, lambda: joined.append(sd_runner.submit(late, EULER))))
    first.result(TIMEOUT_S)
    late_key, late_outcome = joined[0]
    late_outcome.result(TIMEOUT_S)

    a, b = first_key, late_key
    assert sd_runner.compositions() == [
        ((a, 0),),
        ((a, 1), (b, 0)),
        ((a, 2), (b, 1)),
        ((a, 3), (b, 2)),
        ((b, 3),),
    ]


def test_a_cancelled_request_leaves_at_the_next_step_and_the_others_finish(sd_runner: Runner) -> None:
    cancelled = threading.Event()
    staying_key, staying = sd_runner.submit(CAT, EULER)
    leaving_key, leaving = sd_runner.submit(GenerationRequest(["a dog"], seed=2), EULER,
                                            on_step=on_step_number(2, cancelled.set), is_cancelled=cancelled.is_set)
    never_key, never = sd_runner.submit(GenerationRequest(["a bird"], seed=3), EULER, is_cancelled=lambda: True)

    assert staying.result(TIMEOUT_S).shape == (1, 64, 64, 3)
    for outcome in (leaving, never):
        with pytest.raises(RequestCancelled, match="request was cancelled"):
            outcome.result(TIMEOUT_S)
    calls_with = {key: sum(key in dict(members) for members in sd_runner.compositions())
                  for key in (staying_key, leaving_key, never_key)}
    assert calls_with == {staying_key: 4, leaving_key: 2, never_key: 0}


class EncoderFailingOn(PromptEncoder):
    """The prompt encoder, with a text encoder that fails on one prompt."""

    FAILING_PROMPT = "the prompt that fails"

    def encode(self, prompts, negative_prompts, classifier_free_guidance, chunked=True, loras=()):  # type: ignore[no-untyped-def]
        if self.FAILING_PROMPT in prompts:
            raise RuntimeError("the text encoder failed")
        return super().encode(prompts, negative_prompts, classifier_free_guidance, chunked, loras)


def failing_pipeline(components: DiffusionComponents) -> TextToImagePipeline:
    pipeline = TextToImagePipeline(components)
    pipeline.task = TextToImage(components, EncoderFailingOn(components))
    return pipeline


def test_a_request_whose_preparation_fails_gets_the_error_and_the_others_finish(
    load_tiny_pipeline: PipelineLoader,
) -> None:
    """Requests are prepared by the engine when it admits them (submit only checks them)."""
    for runner in make_runner(failing_pipeline(load_tiny_pipeline("sd").components)):
        _, first = runner.submit(CAT, EULER)
        _, failing = runner.submit(GenerationRequest([EncoderFailingOn.FAILING_PROMPT], seed=4), EULER)
        _, last = runner.submit(GenerationRequest(["a dog"], seed=2), EULER)
        with pytest.raises(RuntimeError, match="the text encoder failed"):
            failing.result(TIMEOUT_S)
        assert first.result(TIMEOUT_S).shape == last.result(TIMEOUT_S).shape == (1, 64, 64, 3)


def test_sizes_never_mix_in_a_call_and_another_size_starts_at_the_next_step(sd_runner: Runner) -> None:
    wide = GenerationSettings(64, 96, 2, 7.5, "euler")
    square = GenerationSettings(64, 64, 2, 7.5, "euler")
    waiting: list[Submitted] = []

    def two_arrive() -> None:
        waiting.append(sd_runner.submit(GenerationRequest(["a wide view"], seed=4), wide))
        waiting.append(sd_runner.submit(GenerationRequest(["a dog"], seed=5), square))

    first_key, first = sd_runner.submit(CAT, GenerationSettings(64, 64, 3, 7.5, "euler"), on_step=on_step_number(1, two_arrive))
    first.result(TIMEOUT_S)
    (wide_key, wide_outcome), (square_key, square_outcome) = waiting

    assert wide_outcome.result(TIMEOUT_S).shape == (1, 64, 96, 3)
    assert square_outcome.result(TIMEOUT_S).shape == (1, 64, 64, 3)
    # Each size is a group of its own; the groups take turns by work done (pixels x images per
    # call): the square group's call of two images counts twice the wide one's of one.
    assert sd_runner.compositions() == [
        ((first_key, 0),),
        ((first_key, 1), (square_key, 0)),
        ((wide_key, 0),), ((wide_key, 1),),
        ((first_key, 2), (square_key, 1)),
    ]
    assert [record.size for record in sd_runner.batcher.trace()] == [(64, 64)] * 2 + [(64, 96)] * 2 + [(64, 64)]


def test_a_full_batch_admits_no_more_images_until_a_request_leaves(load_tiny_pipeline: PipelineLoader) -> None:
    runner = Runner(load_tiny_pipeline("sd"), max_images=2)
    try:
        settings = GenerationSettings(64, 64, 2, 7.5, "euler")
        joined: list[Submitted] = []

        def two_arrive() -> None:
            joined.extend(runner.submit(GenerationRequest([f"prompt {seed}"], seed=seed), settings) for seed in (8, 9))

        first_key, first = runner.submit(CAT, settings, on_step=on_step_number(1, two_arrive))
        first.result(TIMEOUT_S)
        for _, outcome in joined:
            outcome.result(TIMEOUT_S)
        (b, _), (c, _) = joined

        assert runner.compositions() == [((first_key, 0),), ((first_key, 1), (b, 0)), ((b, 1), (c, 0)), ((c, 1),)]
    finally:
        runner.batcher.close()


# ---------------------------------------------------------------------------------------------
# The Triton model, decoupled


def make_model(tiny_model_dirs: dict[str, Path], root: Path, step_batching: str) -> TritonPythonModel:
    repository = root / f"tiny_sd_{step_batching}"
    shutil.copytree(tiny_model_dirs["sd"], repository / "1")
    values = {"image_height": "64", "image_width": "64", "steps": "2", "guidance_scale": "7.5",
              "version": "1.5", "step_batching": step_batching}
    config = {"name": "tiny_sd", "max_batch_size": 4,
              "parameters": {key: {"string_value": value} for key, value in values.items()}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repository), "model_version": "1",
                      "model_name": "tiny_sd", "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    return model


class Connected:
    """A request as the backend stub makes it: its sender and progress go to lists here."""

    def __init__(self, prompt: str, parameters: dict[str, object]) -> None:
        self.responses: list[tuple[pb_utils.InferenceResponse | None, int]] = []
        self.progress: list[tuple[int, int]] = []
        self.final = threading.Event()
        prompt_tensor = pb_utils.Tensor("prompt", np.array([[prompt.encode()]], dtype=np.object_))
        self.request = pb_utils.InferenceRequest(
            [prompt_tensor], request_id=prompt, parameters=parameters,
            progress_sink=lambda _request, step, steps, _preview: self.progress.append((int(step), int(steps))),
            response_sink=self._on_response,
        )

    def _on_response(self, _request: pb_utils.InferenceRequest, response: pb_utils.InferenceResponse | None,
                     flags: int) -> None:
        self.responses.append((response, flags))
        if flags == pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.final.set()

    def image(self) -> np.ndarray:
        assert self.final.wait(TIMEOUT_S)
        [(response, flags)] = self.responses
        assert response is not None and not response.has_error(), response
        return pb_utils.get_output_tensor_by_name(response, "generated_image").as_numpy()


def test_the_model_is_decoupled_by_default_and_matches_request_level_batching(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    stepped = make_model(tiny_model_dirs, tmp_path, "true")
    whole = make_model(tiny_model_dirs, tmp_path, "false")
    try:
        good = Connected("a cat", {"seed": 5})
        bad = Connected("a dog", {"seed": 6, "height": 33})
        longer = Connected("a bird", {"seed": 7, "steps": 3, "scheduler": "euler"})

        assert stepped.execute([good.request, bad.request, longer.request]) is None
        # A bad request is answered before execute returns; the others later, from the batcher.
        [(error_response, flags)] = bad.responses
        assert flags == pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        assert error_response is not None and error_response.error().code() == pb_utils.TritonError.INVALID_ARG
        assert error_response.error().message() == "parameter 'height' must be a multiple of 8 from 8 to 4096, got 33"

        reference = whole.execute([prompt_request("a cat", {"seed": 5}), prompt_request("a bird", {"seed": 7, "steps": 3, "scheduler": "euler"})])
        for connected, expected in zip((good, longer), reference, strict=True):
            assert max_abs_diff(connected.image(), pb_utils.get_output_tensor_by_name(expected, "generated_image").as_numpy()) <= 2
        assert good.progress == [(1, 2), (2, 2)]
        assert longer.progress == [(1, 3), (2, 3), (3, 3)]
        assert whole.step_batcher is None and stepped.step_batcher is not None
    finally:
        stepped.finalize()
        whole.finalize()


def test_a_cancelled_request_is_answered_cancelled_through_its_sender(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    model = make_model(tiny_model_dirs, tmp_path, "true")
    try:
        cancelled = Connected("a cat", {"seed": 1, "steps": 4})
        cancelled.request.mark_cancelled()
        staying = Connected("a dog", {"seed": 2})

        assert model.execute([cancelled.request, staying.request]) is None

        assert staying.image().shape == (1, 64, 64, 3)
        assert cancelled.final.wait(TIMEOUT_S)
        [(response, _)] = cancelled.responses
        assert response is not None and response.error().code() == pb_utils.TritonError.CANCELLED
    finally:
        model.finalize()


def prompt_request(prompt: str, parameters: dict[str, object]) -> pb_utils.InferenceRequest:
    return pb_utils.InferenceRequest([pb_utils.Tensor("prompt", np.array([[prompt.encode()]], dtype=np.object_))],
                                     request_id=prompt, parameters=parameters)


def test_bad_step_batching_config_is_named_with_its_value(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config parameter 'step_batching' must be \"true\" or \"false\", got 'yes'"):
        make_model(tiny_model_dirs, tmp_path, "yes")


def test_image_to_image_and_inpainting_share_unet_calls_with_text_to_image_each_at_its_own_step(
    sd_runner: Runner,
) -> None:
    from PIL import Image, ImageDraw

    picture = Image.fromarray((np.random.default_rng(0).random((4, 4, 3)) * 255).astype(np.uint8)).resize((64, 64))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 31), fill=255)
    # Half the schedule: two of the four Euler steps, from the image noised to step 2's timestep.
    img2img = GenerationRequest(["a dog"], seed=2, images=(picture,), strength=0.5)
    inpaint = GenerationRequest(["a bird"], seed=3, images=(picture,), masks=(mask,))
    joined: list[Submitted] = []

    def join() -> None:
        joined.extend(sd_runner.submit(request, EULER) for request in (img2img, inpaint))

    text_key, text_outcome = sd_runner.submit(CAT, EULER, on_step=on_step_number(1, join))
    text_image = text_outcome.result(TIMEOUT_S)
    (img2img_key, img2img_outcome), (inpaint_key, inpaint_outcome) = joined
    shared = [img2img_outcome.result(TIMEOUT_S), inpaint_outcome.result(TIMEOUT_S)]

    a, b, c = text_key, img2img_key, inpaint_key
    assert sd_runner.compositions() == [
        ((a, 0),),
        ((a, 1), (b, 0), (c, 0)),
        ((a, 2), (b, 1), (c, 1)),
        ((a, 3), (c, 2)),
        ((c, 3),),
    ]
    pipeline = sd_runner.batcher.pipeline
    for request, image in zip((CAT, img2img, inpaint), (text_image, *shared), strict=True):
        assert max_abs_diff(image, pipeline([request], EULER)[0]) <= 2

"""The "diffusion" backend model: Stable Diffusion text-to-image with Triton's Python-model API.

Inputs: `prompt` BYTES [B, 1] and optional `negative_prompt` BYTES [B, 1] (or [1, 1] for all).
Output: `generated_image` UINT8 [B, H, W, 3]. Config parameters set the defaults; a request's
parameters `steps`, `guidance_scale`, `seed`, `scheduler`, `height`, `width` override them.

With config parameter `step_batching` "true" (the default) the model is decoupled: `execute`
prepares each request and hands it to the step batcher, which answers it through the request's
response sender once its own steps are done. "false" runs whole requests as pipeline batches
inside `execute`, as Triton's request-level batching does.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.backends.diffusion.batching import Job, run_jobs
from sdserve_backend.engine.backend import prepare_for_model
from sdserve_backend.pipelines import (
    GenerationRequest,
    RequestCancelled,
    StepBatcher,
    TextToImagePipeline,
    choose_placement,
    detect_version,
    load_components,
    resolve_scheduler_class,
)

OUTPUT_NAME = "generated_image"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        # 1. Read the config
        model_config = json.loads(args["model_config"])
        parameters = model_settings.config_parameters(model_config)
        version_dir = Path(args["model_repository"]) / str(args.get("model_version", "1"))
        version = parameters.get("version", "").strip()

        # 2. Find the weights and choose the device
        weights, config_dir = model_settings.locate_weights(version_dir, parameters)
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        placement = choose_placement(args.get("model_instance_kind", "GPU"), device_id)
        if placement.warning is not None:
            pb_utils.Logger.log_warn(f"{args.get('model_name', '')}: {placement.warning}")

        # 3. Load the models
        started = time.perf_counter()
        components = load_components(weights, placement.device, placement.dtype, config_dir)
        loaded = time.perf_counter()
        components = prepare_for_model(components, placement, version_dir, model_config, parameters, weights, pb_utils.Logger.log_info)
        seconds = f"weights {loaded - started:.1f} s, engine {time.perf_counter() - loaded:.1f} s"
        mismatch = model_settings.version_mismatch(version, detect_version(components), components.is_sdxl)
        if mismatch is not None:
            pb_utils.Logger.log_warn(mismatch)

        # 4. Check the defaults against the model
        self.defaults = model_settings.read_model_defaults(parameters, components.default_image_size)
        try:
            resolve_scheduler_class(self.defaults.settings.scheduler, components.scheduler_class)
        except ValueError as error:
            raise ValueError(f"config parameter {error}") from None
        self.pipeline = TextToImagePipeline(components, prompt_cache_size=self.defaults.prompt_cache_size)

        # 5. Start the step batcher: up to max_batch_size images share a UNet call
        self.step_batcher: StepBatcher | None = None
        if self.defaults.step_batching:
            self.step_batcher = StepBatcher(self.pipeline, max_images=int(model_config.get("max_batch_size", 0) or 0))
        pb_utils.Logger.log_info(
            f"{args.get('model_name', '')}: loaded {weights} on {placement.device} ({placement.dtype}), "
            f"{'SDXL' if components.is_sdxl else 'SD'}, "
            f"{'step' if self.step_batching else 'request'}-level batching, defaults {self.defaults.settings} ({seconds})"
        )

    @property
    def step_batching(self) -> bool:
        return self.step_batcher is not None

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if self.step_batcher is None:
            return self._execute_whole(requests)
        # Decoupled: each request is answered through its sender when its steps are done.
        senders = [request.get_response_sender() for request in requests]
        answers = [self._submit(self.step_batcher, request, sender) for request, sender in zip(requests, senders)]
        if all(sender.is_connected() for sender in senders):
            return None
        # Called in-process (tests, direct calls): nothing reads the senders, so answer as a
        # non-decoupled model does, once every request is done.
        return [answer.result() for answer in answers]

    def _submit(self, batcher: StepBatcher, request: Any, sender: Any) -> "Future[Any]":
        """Check and prepare one request and queue it; a bad one is answered at once."""
        answer: Future[Any] = Future()

        def on_done(outcome: np.ndarray | Exception) -> None:
            response = _response(outcome)
            answer.set_result(response)
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        job = self._parse(request)
        if isinstance(job, Exception):
            on_done(job)
            return answer
        try:
            preview_every = model_settings.read_preview_every(request.parameters())
            batcher.submit(job.request, job.settings, on_done, on_step=request.report_progress,
                           is_cancelled=request.is_cancelled, preview_every=preview_every)
        except Exception as error:  # noqa: BLE001 - answer this request; the others still run
            if not isinstance(error, ValueError):
                pb_utils.Logger.log_error(f"preparing request {request.request_id()!r} failed: {error!r}")
            on_done(error)
        return answer

    def _execute_whole(self, requests: list[Any]) -> list[Any]:
        """Request-level batching: requests that share their settings run as one pipeline batch."""
        jobs = [self._parse(request) for request in requests]

        def report_progress(index: int, step: int, steps: int) -> None:
            # sdserve's pb_utils streams progress to the client; Triton's has no such call.
            report = getattr(requests[index], "report_progress", None)
            if report is not None:
                report(step, steps)

        def is_cancelled(index: int) -> bool:
            check = getattr(requests[index], "is_cancelled", None)
            return bool(check()) if check is not None else False

        outcomes = run_jobs(self.pipeline, jobs, on_step=report_progress, is_cancelled=is_cancelled)
        return [_response(outcome) for outcome in outcomes]

    def finalize(self) -> None:
        if self.step_batcher is not None:
            # Requests already handed over still get their images.
            self.step_batcher.close()
            self.step_batcher = None
        self.pipeline = None

    def _parse(self, request: Any) -> Job | Exception:
        try:
            prompt_tensor = pb_utils.get_input_tensor_by_name(request, "prompt")
            if prompt_tensor is None:
                raise ValueError("input 'prompt' is required")
            prompts = _texts("prompt", prompt_tensor.as_numpy())
            if not prompts:
                raise ValueError("input 'prompt' must hold at least one prompt, got none")
            negative_tensor = pb_utils.get_input_tensor_by_name(request, "negative_prompt")
            negatives = None
            if negative_tensor is not None:
                negatives = _texts("negative_prompt", negative_tensor.as_numpy())
                if len(negatives) == 1:
                    negatives = negatives * len(prompts)
                elif len(negatives) != len(prompts):
                    raise ValueError(
                        f"input 'negative_prompt' must hold 1 or {len(prompts)} entries (one per prompt), "
                        f"got {len(negatives)}"
                    )
            settings, seed = model_settings.read_request_overrides(request.parameters(), self.defaults)
        except ValueError as error:
            return error
        generation = GenerationRequest(prompts=prompts, seed=seed, negative_prompts=list(negatives) if negatives else None)
        return Job(generation, settings)


def _texts(name: str, array: np.ndarray) -> list[str]:
    texts: list[str] = []
    for item in array.reshape(-1):
        if isinstance(item, bytes):
            try:
                texts.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"input '{name}' must be UTF-8 text, got {item[:40]!r}") from None
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise ValueError(f"input '{name}' must be BYTES, got an element of type {type(item).__name__}")
    return texts


def _response(outcome: np.ndarray | Exception) -> Any:
    if isinstance(outcome, np.ndarray):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, outcome)])
    if isinstance(outcome, RequestCancelled):
        code = pb_utils.TritonError.CANCELLED
    elif isinstance(outcome, ValueError):
        code = pb_utils.TritonError.INVALID_ARG
    else:
        code = pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(outcome), code))

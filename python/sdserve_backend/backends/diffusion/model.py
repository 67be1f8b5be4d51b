"""The "diffusion" backend model: Stable Diffusion text-to-image with Triton's Python-model API.

Inputs: `prompt` BYTES [B, 1] and optional `negative_prompt` BYTES [B, 1] (or [1, 1] for all).
Outputs: `generated_image` UINT8 [B, H, W, 3]; `generated_image_encoded` BYTES [B, 1], one PNG,
JPEG or WebP file per image, when the request asks for it (by name, or with the parameter
`output_format`). Config parameters set the defaults; a request's parameters `steps`,
`guidance_scale`, `seed`, `scheduler`, `height`, `width`, `loras` override them. Each response's
parameters tell the seed used. The LoadResponse declares all of it (`capabilities`).

With config parameter `step_batching` "true" (the default) the model is decoupled: `execute`
prepares each request and hands it to the step batcher, which answers it through the request's
response sender once its own steps are done. "false" runs whole requests as pipeline batches
inside `execute`, as Triton's request-level batching does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from PIL import Image

from sdserve_backend import input_images
from sdserve_backend.backends.diffusion import capabilities
from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.backends.diffusion.batching import Job, run_jobs
from sdserve_backend.config_errors import InvalidParameter, ModelConfigError, ModelFileNotFound
from sdserve_backend.engine.backend import engine_dir_for, prepare_for_model
from sdserve_backend.engine.build import engine_options
from sdserve_backend.image_encoding import GenerationInfo, encode_image
from sdserve_backend.pipelines.prompts import MAX_PROMPT_CHUNKS
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
from sdserve_backend.pipelines.few_step import few_step_defaults
from sdserve_backend.pipelines.text_to_image import uses_refiner
from sdserve_backend.pipelines.schedulers import max_inference_steps
from sdserve_backend.quoting import quoted

OUTPUT_NAME = "generated_image"
ENCODED_OUTPUT_NAME = "generated_image_encoded"
# Threads that encode images into files: Pillow releases the GIL while it compresses, so the
# denoising loop goes on meanwhile.
ENCODER_THREADS = 2


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        # 1. Read the config; a name or value the backend refuses fails the load before any weights
        # load or engine build (minutes on a GPU). The defaults are read again once the model is
        # known (its image size, a few-step model's own defaults); the values checked stay the same.
        model_config = json.loads(args["model_config"])
        parameters = model_settings.config_parameters(model_config)
        model_settings.read_model_defaults(parameters, model_settings.PRECHECK_IMAGE_SIZE)
        engine_options(dict(parameters))
        self.model_name = str(args.get("model_name", ""))
        version_dir = Path(args["model_repository"]) / str(args.get("model_version", "1"))
        lora_dir = model_settings.locate_lora_dir(version_dir, parameters)
        version = parameters.get("version", "").strip()

        # 2. Find the weights and choose the device
        weights, config_dir = model_settings.locate_weights(version_dir, parameters)
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        placement = choose_placement(args.get("model_instance_kind", "GPU"), device_id)
        if placement.warning is not None:
            pb_utils.Logger.log_warn(f"{args.get('model_name', '')}: {placement.warning}")

        # 3. Load the models
        started = time.perf_counter()
        components = load_components(weights, placement.device, placement.dtype, config_dir,
                                     model_settings.read_checkpoint_options(version_dir, parameters))
        loaded = time.perf_counter()
        engine_dir = engine_dir_for(args.get("model_name", ""), str(args.get("model_version", "1")), version_dir,
                                    parameters, args.get("engine_cache_dir"))
        components = prepare_for_model(components, placement, engine_dir, model_config, parameters, weights, pb_utils.Logger.log_info)
        seconds = f"weights {loaded - started:.1f} s, engine {time.perf_counter() - loaded:.1f} s"
        mismatch = model_settings.version_mismatch(version, detect_version(components), components.is_sdxl)
        if mismatch is not None:
            pb_utils.Logger.log_warn(mismatch)

        # 4. Check the defaults against the model
        few_step = few_step_defaults(components)
        if few_step is not None:
            pb_utils.Logger.log_info(f"{self.model_name}: a few-step model ({few_step.kind}): defaults {few_step.steps} "
                                     f"steps at guidance {few_step.guidance_scale} unless the config sets them")
        self.defaults = model_settings.read_model_defaults(
            parameters, components.default_image_size,
            *((few_step.steps, few_step.guidance_scale) if few_step is not None else ()))
        try:
            resolve_scheduler_class(self.defaults.settings.scheduler, components.scheduler_class)
        except ValueError as error:
            raise InvalidParameter(f"config parameter {error}") from None
        refiner = None
        if self.defaults.refiner:
            refiner = self._load_refiner(Path(args["model_repository"]), self.defaults.refiner, placement, components)
        self.pipeline = TextToImagePipeline(components, prompt_cache_size=self.defaults.prompt_cache_size,
                                            lora_dir=lora_dir,
                                            lora_cache_size=self.defaults.lora_cache_size, refiner=refiner,
                                            lora_slots=self.defaults.lora_slots, lora_max_rank=self.defaults.lora_max_rank)
        max_images = int(model_config.get("max_batch_size", 0) or 0)
        max_steps = min(model_settings.MAX_STEPS, max_inference_steps(components.scheduler_config))
        self.declared = capabilities.declare(self.defaults, max_images, max_steps, self.pipeline.loras.available(),
                                             is_refiner=components.requires_aesthetics_score)
        self.encoder = ThreadPoolExecutor(max_workers=ENCODER_THREADS, thread_name_prefix="sdserve-encoder")

        # 5. Start the step batcher: up to max_batch_size images share a UNet call
        self.step_batcher: StepBatcher | None = None
        if self.defaults.step_batching:
            self.step_batcher = StepBatcher(self.pipeline, max_images=max_images)
        pb_utils.Logger.log_info(
            f"{args.get('model_name', '')}: loaded {weights} on {placement.device} ({placement.dtype}), "
            f"{'SDXL' if components.is_sdxl else 'SD'}, "
            f"{'step' if self.step_batching else 'request'}-level batching, defaults {self.defaults.settings} ({seconds})"
        )

    def _load_refiner(self, model_dir: Path, name: str, placement: Any, base: Any) -> Any:
        """The refiner model `name` of this repository, from its highest version folder, onto this
        model's device: its weights are read, its config is not (it is served on its own too)."""
        refiner_dir = model_dir.parent / name
        versions = sorted((int(entry.name) for entry in refiner_dir.iterdir() if entry.name.isdigit() and entry.is_dir()),
                          reverse=True) if refiner_dir.is_dir() else []
        if not versions:
            raise ModelFileNotFound(f"config parameter 'refiner': no model {quoted(name)} with a version folder in the model repository")
        try:
            weights = model_settings.resolve_weights(refiner_dir / str(versions[0]), "", "")
            refiner = load_components(weights, placement.device, placement.dtype)
        except ModelConfigError as error:
            # The caller named a model, not the repository's place on this host: its files are named from the repository.
            where = f"{model_dir.parent}{os.sep}"
            raise type(error)(f"config parameter 'refiner': model {quoted(name)}: {str(error).replace(where, '')}") from None
        if not refiner.requires_aesthetics_score or not base.is_sdxl:
            raise InvalidParameter(f"config parameter 'refiner': {quoted(name)} must be an SDXL refiner (its model_index.json sets "
                             "requires_aesthetics_score) and this model an SDXL base")
        return share_equal_modules(refiner, base)

    @property
    def step_batching(self) -> bool:
        return self.step_batcher is not None

    def capabilities(self) -> dict[str, Any]:
        """What this model declares in its LoadResponse (docs/backend-protocol.md, "Capabilities")."""
        return self.declared

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
        job = self._parse(request)

        def send(outcome: np.ndarray | Exception) -> None:
            response = self._response(job, outcome)
            answer.set_result(response)
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

        def on_done(outcome: np.ndarray | Exception) -> None:
            # Called on the batcher's decoder thread: files are encoded on the encoder's.
            if isinstance(job, Job) and job.encoding is not None and isinstance(outcome, np.ndarray):
                self.encoder.submit(send, outcome)
            else:
                send(outcome)

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
        answers = [self.encoder.submit(self._response, job, outcome) for job, outcome in zip(jobs, outcomes, strict=True)]
        return [answer.result() for answer in answers]

    def finalize(self) -> None:
        if self.step_batcher is not None:
            # Requests already handed over still get their images.
            self.step_batcher.close()
            self.step_batcher = None
        self.encoder.shutdown(wait=True)
        self.pipeline = None

    def _response(self, job: Job | Exception, outcome: np.ndarray | Exception) -> Any:
        """The request's answer: its images (and their files when it asked), or its error."""
        if isinstance(outcome, Exception):
            return _error_response(outcome)
        assert isinstance(job, Job)
        outputs = [pb_utils.Tensor(OUTPUT_NAME, outcome)]
        if job.encoding is not None:
            try:
                files = [encode_image(image, job.encoding, self._info(job, index)) for index, image in enumerate(outcome)]
            except Exception as error:  # noqa: BLE001 - the request must still get its final answer
                pb_utils.Logger.log_error(f"encoding images as {job.encoding.format} failed: {error!r}")
                return _error_response(RuntimeError(f"encoding the images as {job.encoding.format} failed: {error}"))
            outputs.append(pb_utils.Tensor(ENCODED_OUTPUT_NAME, np.array(files, dtype=np.object_).reshape(-1, 1)))
        parameters: dict[str, Any] = {"seed": job.request.seed}
        if job.warnings:
            parameters["warning"] = "; ".join(job.warnings)
        return pb_utils.InferenceResponse(output_tensors=outputs, parameters=parameters)

    def _info(self, job: Job, index: int) -> GenerationInfo:
        request, settings = job.request, job.settings
        scheduler = resolve_scheduler_class(settings.scheduler, self.pipeline.components.scheduler_class)
        refined = bool(self.defaults.refiner) and request.task_name == "text_to_image" and uses_refiner(request)
        return GenerationInfo(
            # The LoRAs as Automatic1111 writes them in its prompt, so the parameters text reproduces the image.
            prompt=request.prompts[index] + "".join(f" <lora:{c.adapter.name}:{c.scale:g}>" for c in request.loras),
            negative_prompt=request.negatives()[index],
            steps=settings.steps,
            scheduler_class=scheduler.__name__,
            guidance_scale=settings.guidance_scale,
            seed=request.seed,
            width=settings.width,
            height=settings.height,
            model=self.model_name,
            batch_size=len(request.prompts),
            batch_position=index,
            refiner=self.defaults.refiner if refined else None,
            refiner_switch_at=request.high_noise_fraction if refined else None,
        )

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
            image_parameters = model_settings.read_image_parameters(request.parameters())
            images, masks = _input_images(request, image_parameters, len(prompts))
            if images is not None and not image_parameters.size_given:
                # The output takes the input image's size (down to a multiple of 8), as diffusers does.
                factor = self.pipeline.components.vae_scale_factor
                width, height = images[0].size
                settings = dataclasses.replace(settings, width=max(factor, width - width % factor),
                                               height=max(factor, height - height % factor))
            encoding = model_settings.read_output_encoding(
                request.parameters(), ENCODED_OUTPUT_NAME in _requested_output_names(request)
            )
            refining = model_settings.read_refiner_parameters(request.parameters(), self.defaults,
                                                              self.pipeline.components.requires_aesthetics_score)
            if images is not None and "high_noise_fraction" in json.loads(request.parameters() or "{}"):
                raise ValueError("parameter 'high_noise_fraction' applies to text-to-image; the refiner does not run "
                                 "on requests with an input 'image'")
            chunk_prompts = model_settings.read_prompt_chunking(request.parameters(), self.defaults.prompt_chunking)
            prompts, requested_loras = model_settings.read_loras(request.parameters(), prompts)
            loras = self.pipeline.loras.choose(requested_loras)
        except ValueError as error:
            return error
        except (RuntimeError, OSError) as error:  # loading a LoRA onto the device (out of memory, say)
            pb_utils.Logger.log_error(f"loading the LoRAs of request {request.request_id()!r} failed: {error!r}")
            return RuntimeError(f"loading the LoRAs failed: {error}")
        generation = GenerationRequest(prompts=prompts, seed=seed, negative_prompts=list(negatives) if negatives else None,
                                       chunk_prompts=chunk_prompts, images=images, masks=masks,
                                       strength=image_parameters.strength, mask_blur=image_parameters.mask_blur, loras=loras,
                                       aesthetic_score=refining.aesthetic_score,
                                       negative_aesthetic_score=refining.negative_aesthetic_score,
                                       high_noise_fraction=refining.high_noise_fraction)
        return Job(generation, settings, encoding, self._prompt_warnings(generation))

    def _prompt_warnings(self, request: GenerationRequest) -> tuple[str, ...]:
        """What the client should know of its prompts being cut: never done silently."""
        encoder = self.pipeline.prompt_encoder
        texts = request.prompts + [text for text in request.negatives() if text]
        if not request.chunk_prompts:
            cut = encoder.truncated_prompts(texts)
            return (f"{len(cut)} prompt(s) longer than CLIP's 75 tokens were cut to their first 75 tokens "
                    "(prompt_chunking is false)",) if cut else ()
        cut = encoder.too_long(texts)
        tokens = MAX_PROMPT_CHUNKS * 75
        return (f"{len(cut)} prompt(s) longer than {tokens} tokens ({MAX_PROMPT_CHUNKS} chunks of 75) were cut "
                f"to their first {tokens} tokens",) if cut else ()


def share_equal_modules(refiner: Any, base: Any) -> Any:
    """The refiner's components, holding the base's second text encoder and VAE where their
    weights are the same (as the published SDXL refiner's are the base's): one copy on the device."""
    shared = {}
    for name in ("text_encoder_2", "vae"):
        mine, theirs = getattr(refiner, name), getattr(base, name)
        if type(mine) is type(theirs) and _same_weights(mine, theirs):
            shared[name] = theirs
    return dataclasses.replace(refiner, **shared) if shared else refiner


def _same_weights(first: Any, second: Any) -> bool:
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(
        one[key].shape == other[key].shape and one[key].dtype == other[key].dtype and torch.equal(one[key], other[key])
        for key in one)


def _input_images(
    request: Any, parameters: model_settings.ImageParameters, prompts: int
) -> tuple[tuple[Image.Image, ...] | None, tuple[Image.Image, ...] | None]:
    """The request's input images and masks (inputs `image`, `mask`), decoded and checked."""
    image_tensor = pb_utils.get_input_tensor_by_name(request, "image")
    mask_tensor = pb_utils.get_input_tensor_by_name(request, "mask")
    if image_tensor is None:
        if mask_tensor is not None:
            raise ValueError("input 'mask' needs an input 'image' to repaint")
        if parameters.strength is not None:
            raise ValueError("parameter 'strength' needs an input 'image'")
        return None, None
    decoded = input_images.read_images("image", image_tensor.as_numpy())
    if len(decoded) not in (1, prompts):
        raise ValueError(f"input 'image' must hold 1 or {prompts} images (one per prompt), got {len(decoded)}")
    masks = None
    if mask_tensor is not None:
        masks = input_images.as_masks(input_images.read_images("mask", mask_tensor.as_numpy()), parameters.mask_from_alpha)
    elif parameters.mask_from_alpha:
        masks = input_images.alpha_masks(decoded)
    if masks is not None:
        if len(masks) not in (1, prompts):
            raise ValueError(f"input 'mask' must hold 1 or {prompts} masks (one per prompt), got {len(masks)}")
        for index, mask in enumerate(masks):
            image = decoded[index if len(decoded) > 1 else 0]
            if mask.size != image.size:
                raise ValueError(f"input 'mask' {index} is {mask.width}x{mask.height} but input 'image' is "
                                 f"{image.width}x{image.height}; a mask must be the size of its image")
    return tuple(input_images.as_rgb(decoded)), None if masks is None else tuple(masks)


def _requested_output_names(request: Any) -> list[str]:
    names = getattr(request, "requested_output_names", None)
    return list(names()) if callable(names) else []


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


def _error_response(outcome: Exception) -> Any:
    if isinstance(outcome, RequestCancelled):
        code = pb_utils.TritonError.CANCELLED
    elif isinstance(outcome, ValueError):
        code = pb_utils.TritonError.INVALID_ARG
    else:
        code = pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(outcome), code))

"""Reading the model's config parameters and each request's parameters into typed settings.

Triton hands config parameters over as strings ({"steps": {"string_value": "30"}}); KServe request
parameters may be strings, numbers or booleans. Both go through the same checks, and every error
names the parameter and the value it got.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdserve_backend.booleans import parse_bool
from sdserve_backend.config_errors import InvalidParameter, ModelFileNotFound
from sdserve_backend.image_encoding import DEFAULT_COMPRESSION, OUTPUT_FORMATS, OutputEncoding
from sdserve_backend.pipelines import GenerationSettings
from sdserve_backend.pipelines.lora_library import DEFAULT_CAPACITY as DEFAULT_LORA_CAPACITY
from sdserve_backend.pipelines.lora_library import LoraRequest, merge_requests, parse_loras_parameter, take_prompt_tags
from sdserve_backend.pipelines.lora_slots import DEFAULT_MAX_RANK as DEFAULT_LORA_MAX_RANK
from sdserve_backend.pipelines.lora_slots import DEFAULT_SLOTS as DEFAULT_LORA_SLOTS
from sdserve_backend.pipelines.single_file import PREDICTION_TYPES, CheckpointOptions
from sdserve_backend.pipelines.prompts import DEFAULT_PROMPT_CACHE_SIZE
from sdserve_backend.pipelines.requests import DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE
from sdserve_backend.pipelines.tasks.inpaint import MAX_MASK_BLUR
from sdserve_backend.pipelines.tasks.refined import DEFAULT_HIGH_NOISE_FRACTION
from sdserve_backend.pipelines.tasks.text_to_image import MAX_AESTHETIC_SCORE
from sdserve_backend.quoting import quoted

README_HINT = 'see README "Serving real weights"'
KNOWN_VERSIONS = ("1.5", "2.1", "xl-1.0")
MAX_SEED = 2**64 - 1
MAX_IMAGE_SIDE = 4096
# A model's name as a repository folder: no separators, so it never leaves the repository.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# One less than the 1000 training timesteps of every SD model: see max_inference_steps.
MAX_STEPS = 999
# Per-request parameters that override the config; the config spells the image size differently.
REQUEST_OVERRIDES = ("steps", "guidance_scale", "seed", "scheduler", "height", "width", "guidance_start", "guidance_end",
                     "cache_interval")

# Every config.pbtxt parameter a diffusion model may set, and what it does; any other name fails
# the load. A feature that reads a new config parameter adds it here (one place).
CONFIG_PARAMETERS: dict[str, str] = {
    "image_height": "default image height (a multiple of 8); also the size the GPU engine captures",
    "image_width": "default image width (a multiple of 8); also the size the GPU engine captures",
    "steps": "default number of denoising steps (30; few-step models' weights call for 1 or 4)",
    "guidance_scale": "default classifier-free guidance scale (7.5; few-step models' weights call for 0, 1 or 8.5)",
    "scheduler": 'default scheduler ("" is the model\'s own)',
    "guidance_start": "fast mode, default 0: classifier-free guidance only from this fraction of the steps on",
    "guidance_end": "fast mode, default 1: classifier-free guidance only before this fraction of the steps",
    "cache_interval": "fast mode, default 1 (off): the whole UNet every N-th step, its outer blocks on kept deep features between",
    "seed": "default seed (empty: a fresh random seed per request)",
    "version": "the Stable Diffusion version the weights should be (1.5, 2.1, xl-1.0); a warning when they differ",
    "weights": "where the weights are, relative to the version folder",
    "weights_config": "a local diffusers folder describing a single-file checkpoint, instead of the shipped configs",
    "vae_weights": "a single-file checkpoint's VAE from another file (.safetensors, original layout) or diffusers VAE folder",
    "text_encoder_weights": "text encoders for a single-file checkpoint without them: a .safetensors checkpoint of the same architecture or a diffusers model folder",
    "prediction_type": 'the scheduler\'s prediction type: "epsilon" or "v_prediction" (default: the model\'s own; SD 2.x single files: v_prediction)',
    "step_batching": "true: requests join and leave the UNet batch per step; false: whole requests",
    "prompt_cache_size": "how many prompts' text embeddings are kept for reuse",
    "prompt_chunking": "default of the request parameter: true: prompts over CLIP's 75 tokens are chunked; false: cut",
    "lora_dir": "the folder of the LoRA files requests may name (default: loras/ in the version folder)",
    "lora_cache_size": "how many LoRAs are kept loaded on the device (least recently used dropped first)",
    "lora_slots": "GPU engine, default 8: entries of the slot tables its LoRA graphs read, one kept empty (so 7 "
                  "adapter sets per UNet batch; more run eagerly); 0: no LoRA graphs, rows with LoRAs run eagerly",
    "lora_max_rank": "GPU engine, default 128: the largest LoRA rank per layer its LoRA graphs take (several LoRAs of "
                     "one request add up); higher ones run eagerly",
    "force_engine_build": "true: rebuild the GPU engine at load",
    "engine_compile": "true: torch.compile the UNet into the GPU engine",
    "engine_fp8": 'fast mode, default "off": "static" runs the UNet\'s transformer-block Linear layers in FP8 with '
                  'calibrated activation scales (compiled engines on compute capability 8.9 and up; elsewhere off, '
                  'logged: README "GPU engine")',
    "engine_sizes": 'more image sizes the GPU engine captures graphs for, besides image_height x image_width: "768x768,512x768" (height x width)',
    "engine_cache_dir": "where this model's GPU engine is kept (absolute, or relative to the server's --engine-cache-dir)",
    "refiner": "SDXL base: the name of an SDXL refiner model in this repository whose weights (its highest version "
               "folder) finish text-to-image requests, loaded into this model's backend",
    "high_noise_fraction": "with a refiner, default 0.8: the fraction of the schedule the base runs before the refiner "
                           "takes over (1: the base alone)",
    "onnx_opset": "ignored: accepted so that configs written for the ONNX/TensorRT tutorial load",
    # Read and enforced by the core before a request reaches the backend (src/core/request-limits.ts,
    # src/core/execution-deadline.ts; README "Security").
    "max_image_pixels": "most pixels (height x width) of one image; 0: no limit",
    "max_request_cost": "most images x pixels x steps of one request; 0: no limit",
    "max_prompt_chars": "most characters of one prompt or negative prompt; 0: no limit",
    "max_execution_secs": "a request running longer is cancelled, its backend restarted if stuck; 0: no limit",
    "execution_grace_secs": "how long a request past max_execution_secs may take to stop before its backend is killed",
}


def check_config_parameter_names(parameters: Mapping[str, str]) -> None:
    """Raise InvalidParameter naming the first config parameter the backend does not read."""
    for name in parameters:
        if name not in CONFIG_PARAMETERS:
            raise InvalidParameter(unknown_name_message("config parameter", name, CONFIG_PARAMETERS))


def unknown_name_message(what: str, name: str, accepted: Mapping[str, object] | list[str]) -> str:
    """"config parameter 'stepz' is not known (did you mean 'steps'?); known: ..." """
    # A name that starts several accepted ones ('guidance') names them all; else the closest typo.
    close = sorted(known for known in accepted if len(name) >= 3 and known.startswith(name))
    close = close or difflib.get_close_matches(name, list(accepted), n=1)
    meant = [repr(known) for known in close]
    options = meant[0] if len(meant) == 1 else f"{', '.join(meant[:-1])} or {meant[-1]}" if meant else ""
    hint = f" (did you mean {options}?)" if meant else ""
    return f"{what} {quoted(name)} is not known{hint}; known: {', '.join(sorted(accepted))}"


@dataclass(frozen=True)
class ModelDefaults:
    """The config's defaults for every request, after checking."""

    settings: GenerationSettings
    # None: a fresh random seed for every request.
    seed: int | None
    version: str
    weights: str
    weights_config: str
    # Step-level batching (requests join and leave the UNet batch per step); False: whole requests.
    step_batching: bool = True
    # How many prompts' text embeddings are kept for reuse (0: none).
    prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE
    # Prompts over CLIP's 75 tokens: chunked (True) or cut with a warning (False).
    prompt_chunking: bool = True
    # LoRAs kept loaded on the device.
    lora_cache_size: int = DEFAULT_LORA_CAPACITY
    # The slot tables of the engine's LoRA graphs: entries (0: none) and the largest rank per layer.
    lora_slots: int = DEFAULT_LORA_SLOTS
    lora_max_rank: int = DEFAULT_LORA_MAX_RANK
    # Image sizes (height, width) the GPU engine also captures, besides the default one.
    engine_sizes: tuple[tuple[int, int], ...] = ()
    # The refiner model that finishes text-to-image requests ("": none), and where it takes over.
    refiner: str = ""
    high_noise_fraction: float = DEFAULT_HIGH_NOISE_FRACTION


def config_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """{"steps": {"string_value": "30"}} -> {"steps": "30"}."""
    parameters = model_config.get("parameters") or {}
    flat: dict[str, str] = {}
    for key, value in parameters.items():
        flat[key] = str(value.get("string_value", "")) if isinstance(value, Mapping) else str(value)
    return flat


# An ordinary model's defaults when the config sets none.
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5


# A valid image size for checking a config's values before the model's own size is known.
PRECHECK_IMAGE_SIZE = 512


def read_model_defaults(parameters: Mapping[str, str], default_image_size: int, default_steps: int = DEFAULT_STEPS,
                        default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> ModelDefaults:
    """Check the config parameters; raises InvalidParameter naming the first bad one (an unknown name
    included). `default_steps` and `default_guidance_scale` apply where the config sets none (a
    few-step model's weights call for their own: `pipelines/few_step.py`)."""
    check_config_parameter_names(parameters)
    source = "config parameter"
    settings = GenerationSettings(
        height=parse_image_side("image_height", parameters.get("image_height", ""), default_image_size, source),
        width=parse_image_side("image_width", parameters.get("image_width", ""), default_image_size, source),
        steps=parse_steps(parameters.get("steps", ""), default_steps, source),
        guidance_scale=parse_guidance_scale(parameters.get("guidance_scale", ""), default_guidance_scale, source),
        scheduler=str(parameters.get("scheduler", "")).strip(),
        guidance_start=parse_fraction("guidance_start", parameters.get("guidance_start", ""), 0.0, source),
        guidance_end=parse_fraction("guidance_end", parameters.get("guidance_end", ""), 1.0, source),
        cache_interval=parse_cache_interval(parameters.get("cache_interval", ""), 1, source),
    )
    seed_text = str(parameters.get("seed", "")).strip()
    return ModelDefaults(
        settings=settings,
        seed=parse_seed(seed_text, source) if seed_text else None,
        version=str(parameters.get("version", "")).strip(),
        weights=str(parameters.get("weights", "")).strip(),
        weights_config=str(parameters.get("weights_config", "")).strip(),
        step_batching=parse_bool("step_batching", parameters.get("step_batching", ""), True, source),
        prompt_cache_size=parse_prompt_cache_size(parameters.get("prompt_cache_size", ""), source),
        prompt_chunking=parse_bool("prompt_chunking", parameters.get("prompt_chunking", ""), True, source),
        lora_cache_size=parse_lora_cache_size(parameters.get("lora_cache_size", ""), source),
        lora_slots=parse_lora_slots(parameters.get("lora_slots", ""), source),
        lora_max_rank=parse_lora_max_rank(parameters.get("lora_max_rank", ""), source),
        engine_sizes=parse_engine_sizes(parameters.get("engine_sizes", ""), source),
        refiner=parse_model_name("refiner", parameters.get("refiner", ""), source),
        high_noise_fraction=parse_fraction("high_noise_fraction", parameters.get("high_noise_fraction", ""),
                                           DEFAULT_HIGH_NOISE_FRACTION, source),
    )


def read_request_overrides(parameters_json: str, defaults: ModelDefaults) -> tuple[GenerationSettings, int]:
    """The settings and seed for one request: its parameters over the model's defaults."""
    parameters = json.loads(parameters_json or "{}")
    if not isinstance(parameters, dict):
        raise InvalidParameter(f"request parameters must be a JSON object, got {quoted(parameters_json)}")
    source = "parameter"
    base = defaults.settings
    settings = GenerationSettings(
        height=parse_image_side("height", parameters["height"], base.height, source)
        if "height" in parameters
        else base.height,
        width=parse_image_side("width", parameters["width"], base.width, source)
        if "width" in parameters
        else base.width,
        steps=parse_steps(parameters["steps"], base.steps, source) if "steps" in parameters else base.steps,
        guidance_scale=parse_guidance_scale(parameters["guidance_scale"], base.guidance_scale, source)
        if "guidance_scale" in parameters
        else base.guidance_scale,
        scheduler=_parse_scheduler(parameters["scheduler"]) if "scheduler" in parameters else base.scheduler,
        guidance_start=parse_fraction("guidance_start", parameters.get("guidance_start", ""), base.guidance_start, source),
        guidance_end=parse_fraction("guidance_end", parameters.get("guidance_end", ""), base.guidance_end, source),
        cache_interval=parse_cache_interval(parameters.get("cache_interval", ""), base.cache_interval, source),
    )
    seed = parameters.get("seed", "")
    if seed == "" or seed is None:
        chosen = defaults.seed if defaults.seed is not None else secrets.randbits(32)
    else:
        chosen = parse_seed(seed, source)
    return settings, chosen


def read_preview_every(parameters_json: str) -> int:
    """The request parameter `preview`: a preview image every N steps (true: every 5; absent,
    false or 0: none)."""
    value = json.loads(parameters_json or "{}").get("preview", 0)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = parse_bool("preview", value, False, "parameter")
    if value is True:
        return 5
    if value is False or value is None:
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    raise InvalidParameter(f"parameter 'preview' must be true, false or a non-negative number of steps, got {quoted(value)}")


@dataclass(frozen=True)
class ImageParameters:
    """The request parameters of image-to-image and inpainting."""

    # None: the task's default (image-to-image 0.8, inpainting 1.0, as diffusers).
    strength: float | None = None
    mask_blur: int = 0
    # The mask's transparent pixels mark what to repaint (OpenAI's images/edits), not its white ones.
    mask_from_alpha: bool = False
    # Whether the request set `height` / `width` (else the size comes from its input image).
    size_given: bool = False


def read_image_parameters(parameters_json: str) -> ImageParameters:
    """The request parameters `strength`, `mask_blur` and `mask_from_alpha`."""
    parameters = json.loads(parameters_json or "{}")
    strength = parameters.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise InvalidParameter(f"parameter 'strength' must be a number in (0, 1], got {quoted(strength)}")
        strength = float(strength)
    mask_blur = _parse_int("mask_blur", parameters.get("mask_blur"), 0, "parameter")
    if not 0 <= mask_blur <= MAX_MASK_BLUR:
        raise InvalidParameter(f"parameter 'mask_blur' must be an integer from 0 to {MAX_MASK_BLUR}, got {quoted(mask_blur)}")
    return ImageParameters(
        strength=strength,
        mask_blur=mask_blur,
        mask_from_alpha=parse_bool("mask_from_alpha", parameters.get("mask_from_alpha"), False, "parameter"),
        size_given="height" in parameters or "width" in parameters,
    )


@dataclass(frozen=True)
class RefinerParameters:
    """The request parameters of the SDXL refiner and of a base model with one."""

    aesthetic_score: float = DEFAULT_AESTHETIC_SCORE
    negative_aesthetic_score: float = DEFAULT_NEGATIVE_AESTHETIC_SCORE
    # A base with a refiner: where the refiner takes over (None: the model has no refiner).
    high_noise_fraction: float | None = None


def read_refiner_parameters(parameters_json: str, defaults: ModelDefaults, is_refiner: bool) -> RefinerParameters:
    """`aesthetic_score` and `negative_aesthetic_score` (a refiner), `high_noise_fraction` (a base
    with a refiner); each refused, naming it, by a model that does not read it."""
    parameters = json.loads(parameters_json or "{}")
    source = "parameter"
    scores = {}
    for name, default in (("aesthetic_score", DEFAULT_AESTHETIC_SCORE),
                          ("negative_aesthetic_score", DEFAULT_NEGATIVE_AESTHETIC_SCORE)):
        if name in parameters and not is_refiner:
            raise InvalidParameter(f"{source} '{name}' is read by SDXL refiner models only; this model is not one")
        scores[name] = parse_number_in(name, parameters.get(name), default, 0.0, MAX_AESTHETIC_SCORE, source)
    fraction = None
    if defaults.refiner:
        fraction = parse_fraction("high_noise_fraction", parameters.get("high_noise_fraction", ""),
                                  defaults.high_noise_fraction, source)
    elif "high_noise_fraction" in parameters:
        raise InvalidParameter(f"{source} 'high_noise_fraction' needs a model with a refiner (config parameter 'refiner')")
    return RefinerParameters(high_noise_fraction=fraction, **scores)


def read_prompt_chunking(parameters_json: str, default: bool) -> bool:
    """The request parameter `prompt_chunking` (a boolean), else the config's default."""
    value = json.loads(parameters_json or "{}").get("prompt_chunking")
    return parse_bool("prompt_chunking", value, default, "parameter")


def read_loras(parameters_json: str, prompts: list[str]) -> tuple[list[str], LoraRequest]:
    """The LoRAs a request asks for: its parameter `loras` (a JSON list of {"name", "scale"}) and
    Automatic1111's `<lora:name:scale>` tags in its prompts, which are taken out of them."""
    prompts, tagged = take_prompt_tags(prompts)
    given = parse_loras_parameter(json.loads(parameters_json or "{}").get("loras"))
    return prompts, merge_requests(given, tagged)


def locate_lora_dir(version_dir: Path, parameters: Mapping[str, str]) -> Path:
    """The LoRA folder: `lora_dir` relative to the version folder (or absolute; the core has
    confined it to the model's folder or an --allowed-path root), else `<version>/loras`."""
    configured = str(parameters.get("lora_dir", "") or "").strip()
    if not configured:
        return version_dir / "loras"
    folder = Path(configured) if Path(configured).is_absolute() else version_dir / configured
    if not folder.is_dir():
        # Named explicitly, a missing folder is a mistake to report, not a model without LoRAs.
        raise ModelFileNotFound(f"config parameter 'lora_dir' names {quoted(configured)}, which is not a folder")
    return folder


def read_output_encoding(parameters_json: str, encoded_output_requested: bool) -> OutputEncoding | None:
    """The request parameters `output_format` and `output_compression`; None when the request
    asks for no encoded image (neither parameter, nor the encoded output by name)."""
    parameters = json.loads(parameters_json or "{}")
    given_format = parameters.get("output_format")
    given_compression = parameters.get("output_compression")
    if given_format is None and given_compression is None and not encoded_output_requested:
        return None
    output_format = "png" if given_format is None else given_format
    if not isinstance(output_format, str) or output_format.strip().lower() not in OUTPUT_FORMATS:
        raise InvalidParameter(f"parameter 'output_format' must be one of {', '.join(OUTPUT_FORMATS)}, got {quoted(output_format)}")
    compression = DEFAULT_COMPRESSION
    if given_compression is not None:
        compression = _parse_int("output_compression", given_compression, None, "parameter")
        if not 0 <= compression <= 100:
            raise InvalidParameter(f"parameter 'output_compression' must be an integer from 0 to 100, got {quoted(given_compression)}")
    return OutputEncoding(format=output_format.strip().lower(), compression=compression)


def locate_weights(version_dir: Path, parameters: dict[str, str]) -> tuple[Path, Path | None]:
    """The weights (`weights` parameter, see `resolve_weights`) and the local config folder a
    single-file checkpoint needs (`weights_config`, relative to the version folder), if any."""
    weights = resolve_weights(version_dir, parameters.get("weights", "").strip(), parameters.get("version", "").strip())
    weights_config = parameters.get("weights_config", "").strip()
    if not weights_config:
        return weights, None
    return weights, Path(weights_config) if Path(weights_config).is_absolute() else version_dir / weights_config


def read_checkpoint_options(version_dir: Path, parameters: Mapping[str, str]) -> CheckpointOptions:
    """`vae_weights` and `text_encoder_weights` (relative to the version folder, or absolute: the core
    has confined them to the model's folder or an --allowed-path root) and `prediction_type`."""

    def path(name: str) -> Path | None:
        value = str(parameters.get(name, "") or "").strip()
        if not value:
            return None
        located = Path(value) if Path(value).is_absolute() else version_dir / value
        if located.is_dir() or (located.is_file() and located.suffix == ".safetensors"):
            return located
        what = "not found" if not located.exists() else "not a .safetensors file or a folder"
        raise ModelFileNotFound(f"config parameter '{name}': {located} is {what}; {README_HINT}")

    prediction_type = str(parameters.get("prediction_type", "") or "").strip()
    if prediction_type and prediction_type not in PREDICTION_TYPES:
        raise InvalidParameter(f"config parameter 'prediction_type' must be one of {', '.join(PREDICTION_TYPES)} "
                         f"(or empty: the model's own), got {quoted(prediction_type)}")
    return CheckpointOptions(vae=path("vae_weights"), text_encoders=path("text_encoder_weights"),
                             prediction_type=prediction_type or None)


def resolve_weights(version_dir: Path, weights: str, version: str) -> Path:
    """Where the weights are: `weights` relative to the version folder (or absolute), else the
    version folder itself when it is a diffusers folder, else `<version>-pytorch_model` in it,
    else the one `.safetensors` file in it. Raises ModelFileNotFound when there are none."""
    if weights:
        path = Path(weights) if Path(weights).is_absolute() else version_dir / weights
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise ModelFileNotFound(f"weights not found at {path}: it holds no model_index.json; {README_HINT}")
        if not path.exists():
            raise ModelFileNotFound(f"weights not found at {path}; {README_HINT}")
        return path
    if (version_dir / "model_index.json").is_file():
        return version_dir
    tutorial_layout = version_dir / f"{version or '1.5'}-pytorch_model"
    if (tutorial_layout / "model_index.json").is_file():
        return tutorial_layout
    checkpoints = sorted(version_dir.glob("*.safetensors")) if version_dir.is_dir() else []
    if len(checkpoints) == 1:
        return checkpoints[0]
    if len(checkpoints) > 1:
        names = ", ".join(path.name for path in checkpoints)
        raise ModelFileNotFound(f"{version_dir} holds several checkpoints ({names}); name one with the weights parameter")
    raise ModelFileNotFound(f"weights not found at {tutorial_layout}; {README_HINT}")


def version_mismatch(configured: str, detected: str | None, is_sdxl: bool) -> str | None:
    """A warning when the config's `version` disagrees with the weights, else None."""
    if configured == "":
        return None
    if configured not in KNOWN_VERSIONS:
        return f"config parameter 'version' is {quoted(configured)}, not one of {', '.join(KNOWN_VERSIONS)}; ignoring it"
    weights_kind = detected or ("xl-1.0" if is_sdxl else "1.x/2.x")
    agrees = configured == detected if detected is not None else (configured == "xl-1.0") == is_sdxl
    if agrees:
        return None
    return f"config parameter 'version' says {quoted(configured)} but the weights are Stable Diffusion {weights_kind}; using the weights"


# ---------------------------------------------------------------------------------------------
# Single values


def parse_image_side(name: str, value: Any, default: int, source: str) -> int:
    side = _parse_int(name, value, default, source)
    if not 8 <= side <= MAX_IMAGE_SIDE or side % 8 != 0:
        raise InvalidParameter(f"{source} '{name}' must be a multiple of 8 from 8 to {MAX_IMAGE_SIDE}, got {quoted(value)}")
    return side


def parse_steps(value: Any, default: int, source: str) -> int:
    steps = _parse_int("steps", value, default, source)
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidParameter(f"{source} 'steps' must be an integer from 1 to {MAX_STEPS}, got {quoted(value)}")
    return steps


def parse_lora_cache_size(value: Any, source: str) -> int:
    size = _parse_int("lora_cache_size", value, DEFAULT_LORA_CAPACITY, source)
    if size < 1:
        raise InvalidParameter(f"{source} 'lora_cache_size' must be an integer >= 1, got {quoted(value)}")
    return size


def parse_lora_slots(value: Any, source: str) -> int:
    slots = _parse_int("lora_slots", value, DEFAULT_LORA_SLOTS, source)
    if slots != 0 and not 2 <= slots <= 256:
        raise InvalidParameter(f"{source} 'lora_slots' must be 0 (off) or an integer from 2 to 256, got {quoted(value)}")
    return slots


def parse_lora_max_rank(value: Any, source: str) -> int:
    rank = _parse_int("lora_max_rank", value, DEFAULT_LORA_MAX_RANK, source)
    if not 1 <= rank <= 1024:
        raise InvalidParameter(f"{source} 'lora_max_rank' must be an integer from 1 to 1024, got {quoted(value)}")
    return rank


def parse_prompt_cache_size(value: Any, source: str) -> int:
    size = _parse_int("prompt_cache_size", value, DEFAULT_PROMPT_CACHE_SIZE, source)
    if size < 0:
        raise InvalidParameter(f"{source} 'prompt_cache_size' must be an integer >= 0, got {quoted(value)}")
    return size


def parse_guidance_scale(value: Any, default: float, source: str) -> float:
    if value == "" or value is None:
        return default
    try:
        scale = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        scale = math.nan
    if not math.isfinite(scale) or scale < 0:
        raise InvalidParameter(f"{source} 'guidance_scale' must be a finite number >= 0, got {quoted(value)}")
    return scale


def parse_fraction(name: str, value: Any, default: float, source: str) -> float:
    """A fraction of the denoising steps, 0 to 1 (the guidance interval's ends)."""
    if value == "" or value is None:
        return default
    try:
        fraction = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:
        raise InvalidParameter(f"{source} '{name}' must be a number from 0 to 1, got {quoted(value)}")
    return fraction


def parse_number_in(name: str, value: Any, default: float, low: float, high: float, source: str) -> float:
    """A number from `low` to `high`."""
    if value == "" or value is None:
        return default
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:
        raise InvalidParameter(f"{source} '{name}' must be a number from {low:g} to {high:g}, got {quoted(value)}")
    return number


def parse_model_name(name: str, value: Any, source: str) -> str:
    """A model of the repository, by its plain name ("" for none): never a path."""
    text = str(value or "").strip()
    if text and (not MODEL_NAME.match(text) or text in (".", "..")):
        raise InvalidParameter(f"{source} '{name}' must be the plain name of a model in the repository, got {quoted(value)}")
    return text


def parse_cache_interval(value: Any, default: int, source: str) -> int:
    interval = _parse_int("cache_interval", value, default, source)
    if not 1 <= interval <= MAX_STEPS:
        raise InvalidParameter(f"{source} 'cache_interval' must be an integer from 1 to {MAX_STEPS}, got {quoted(value)}")
    return interval


def parse_engine_sizes(value: Any, source: str = "config parameter") -> tuple[tuple[int, int], ...]:
    """`engine_sizes`: "HEIGHTxWIDTH" pairs separated by commas ("" is none), each side a multiple of 8."""
    sizes: list[tuple[int, int]] = []
    for part in str(value or "").split(","):
        if part.strip() == "":
            continue
        sides = part.strip().lower().split("x")
        if len(sides) != 2:
            raise InvalidParameter(f"{source} 'engine_sizes' must be sizes like 768x768 separated by commas, got {quoted(value)}")
        height = parse_image_side("engine_sizes", sides[0].strip(), None, source)  # type: ignore[arg-type]
        width = parse_image_side("engine_sizes", sides[1].strip(), None, source)  # type: ignore[arg-type]
        if (height, width) not in sizes:
            sizes.append((height, width))
    return tuple(sizes)


def parse_seed(value: Any, source: str) -> int:
    seed = _parse_int("seed", value, None, source)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(f"{source} 'seed' must be an integer from 0 to {MAX_SEED}, got {quoted(value)}")
    return seed


def _parse_scheduler(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(f"parameter 'scheduler' must be a scheduler name, got {quoted(value)}")
    return value.strip()


def _parse_int(name: str, value: Any, default: int | None, source: str) -> int:
    if (value == "" or value is None) and default is not None:
        return default
    if isinstance(value, bool):
        raise InvalidParameter(f"{source} '{name}' must be an integer, got {quoted(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidParameter(f"{source} '{name}' must be an integer, got {quoted(value)}")

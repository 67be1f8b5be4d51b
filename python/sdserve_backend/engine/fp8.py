"""FP8 fast mode (`engine_fp8: "static"`): the UNet's transformer-block Linear layers in float8.

The layers FP8 targets are the Linear layers inside the UNet's transformer blocks (attention
projections, feed-forward) that a call actually runs, with both sizes multiples of 16 (what
cuBLAS's FP8 GEMM takes). Their weights are cast to float8 (e4m3) with a scale per tensor, and
their activations with a scale per tensor calibrated once, beforehand: the UNet runs on
representative inputs with an observer on each targeted layer's input (its running max), then each
layer is converted with that fixed scale (torchao's observer flow). A fixed scale makes the
activation's quantisation a multiply and a cast that torch.compile fuses into the kernel before it;
a scale computed per call (dynamic) is an extra reduction over the activation and measured slower
than float16 (`bench/gpu/README.md`, "FP8").

FP8 GEMMs need tensor cores of compute capability 8.9 and up (Ada, Hopper): `unavailable_reason`
says why FP8 stays off elsewhere. On a CPU torchao emulates the float8 arithmetic, which is what the
tests run. torchao is imported only here, and only when FP8 is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sdserve_backend.config_errors import InvalidParameter

# The values of the `engine_fp8` config parameter.
FP8_MODES = ("off", "static")
MIN_CAPABILITY = (8, 9)
TARGET_BLOCKS = "transformer_blocks"
# cuBLAS's FP8 GEMM takes matrices whose sides are multiples of 16.
GEMM_MULTIPLE = 16
# torchao 0.18 takes the per-tensor scale of a weight of exactly this shape for its 128x128 block
# scaling and then fails every call ("input_tensor must be 1x128 scaled"): such layers stay as they are.
MISREAD_WEIGHT_SHAPE = (128, 128)
# Calibration: varied subjects, styles and lengths, each paired with the empty prompt as the
# unconditional row of classifier-free guidance, at timesteps across the whole schedule.
CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse on the moon, highly detailed",
    "a watercolor painting of a small red fox in a snowy forest at dawn",
    "close-up portrait of an old fisherman with a grey beard, dramatic lighting, 85mm",
    "isometric illustration of a futuristic city with neon signs and flying cars at night",
    "a bowl of fruit on a wooden table",
)
CALIBRATION_TIMESTEP_COUNT = 5
CALIBRATION_SEED = 0


def parse_fp8_mode(value: Any, source: str = "config parameter") -> str:
    """`engine_fp8`: "" or "off" (the default) or "static"."""
    text = str(value or "").strip().lower() or "off"
    if text not in FP8_MODES:
        raise InvalidParameter(f"{source} 'engine_fp8' must be one of {', '.join(repr(mode) for mode in FP8_MODES)}, got {value!r}")
    return text


def unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 cannot pay on `device` (None: it can)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_CAPABILITY:
        return (f"compute capability {major}.{minor} has no FP8 tensor cores "
                f"({MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} and up: Ada, Hopper)")
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao is not installed (requirements.txt pins it)"
    return None


def _forward(unet: torch.nn.Module, inputs: Mapping[str, Any]) -> Any:
    return unet(**inputs, return_dict=False)[0]


def linears_called(unet: torch.nn.Module, calibration_inputs: Sequence[Mapping[str, Any]]) -> set[str]:
    """The paths of the Linear layers the calls on `calibration_inputs` run (fused QKV projections
    leave the unfused ones unused)."""
    called: set[str] = set()
    hooks = [module.register_forward_hook(lambda *_, path=path: called.add(path))
             for path, module in unet.named_modules() if isinstance(module, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for inputs in calibration_inputs:
                _forward(unet, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return called


def fp8_targets(unet: torch.nn.Module, called: set[str]) -> list[str]:
    """The paths of the Linear layers FP8 replaces: inside the transformer blocks, run by the
    calibration calls, both sizes multiples of GEMM_MULTIPLE, not of MISREAD_WEIGHT_SHAPE, not
    converted already (a converted layer is still a Linear, its weight a float8 tensor subclass)."""
    return [path for path, module in unet.named_modules()
            if type(module) is torch.nn.Linear and type(module.weight) is torch.nn.Parameter
            and TARGET_BLOCKS in path.split(".") and path in called
            and module.in_features % GEMM_MULTIPLE == 0 and module.out_features % GEMM_MULTIPLE == 0
            and tuple(module.weight.shape) != MISREAD_WEIGHT_SHAPE]


def quantize_unet_static(unet: torch.nn.Module, calibration_inputs: Sequence[Mapping[str, Any]]) -> int:
    """Convert `unet`'s FP8 targets in place to float8 weights and activations with static scales
    calibrated on `calibration_inputs` (each the keyword arguments of one UNet call); the number of
    layers converted. Layers none of the calls runs stay as they are."""
    from torchao.prototype.quantization.quant_api import Float8StaticActivationFloat8WeightConfig
    from torchao.quantization import quantize_

    if not calibration_inputs:
        raise ValueError("FP8 calibration needs at least one UNet call's inputs")
    targets = set(fp8_targets(unet, linears_called(unet, calibration_inputs)))
    if not targets:
        return 0
    chosen: Callable[[torch.nn.Module, str], bool] = lambda module, path: path in targets  # noqa: E731
    with torch.no_grad():
        quantize_(unet, Float8StaticActivationFloat8WeightConfig(step="prepare"), filter_fn=chosen)
        for inputs in calibration_inputs:
            _forward(unet, inputs)
        quantize_(unet, Float8StaticActivationFloat8WeightConfig(step="convert"), filter_fn=chosen)
    return len(targets)


def calibration_inputs(components: Any, unet: torch.nn.Module, height: int, width: int,
                       prompts: Sequence[str] = CALIBRATION_PROMPTS,
                       timestep_count: int = CALIBRATION_TIMESTEP_COUNT) -> list[dict[str, Any]]:
    """Representative UNet calls for `components` (`DiffusionComponents`) at `height` x `width`:
    one per prompt and timestep, each two rows, the empty prompt's conditioning (the unconditional
    row of classifier-free guidance, as the pipeline builds it) and the prompt's, on random latents
    of unit variance (what the UNet sees after the scheduler's input scaling), at `timestep_count`
    timesteps spread over the training schedule."""
    # Imported here: the engine's other modules do not need the pipelines' tasks.
    from sdserve_backend.pipelines.prompts import PromptEncoder
    from sdserve_backend.pipelines.requests import GenerationRequest, GenerationSettings
    from sdserve_backend.pipelines.tasks.text_to_image import TextToImage

    device, dtype = components.device, unet.dtype
    task = TextToImage(components, PromptEncoder(components, cache_size=0))
    # Guidance on, so that the conditioning holds the negative (empty prompt) row first.
    settings = GenerationSettings(height, width, 1, 7.5)
    training_steps = int(components.scheduler_config.get("num_train_timesteps", 1000))
    timesteps = torch.linspace(training_steps - 1, 0, timestep_count).round()
    factor = components.vae_scale_factor
    generator = torch.Generator(device="cpu").manual_seed(CALIBRATION_SEED)
    calls: list[dict[str, Any]] = []
    with torch.inference_mode():
        conditioning = [task.conditioning(GenerationRequest([prompt], seed=0), settings) for prompt in prompts]
    for timestep in timesteps:
        for text, added in conditioning:
            sample = torch.randn((2, int(unet.config.in_channels), height // factor, width // factor), generator=generator)
            call: dict[str, Any] = {
                # Inference tensors from the encoders become ordinary ones, usable outside inference mode.
                "sample": sample.to(device=device, dtype=dtype),
                "timestep": torch.full((2,), float(timestep), device=device),
                "encoder_hidden_states": text.clone().to(dtype=dtype),
            }
            if added is not None:
                call["added_cond_kwargs"] = {key: value.clone().to(dtype=dtype) for key, value in added.items()}
            calls.append(call)
    return calls

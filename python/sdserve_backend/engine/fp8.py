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

The calibrated scales are kept in the engine folder (`SCALES_FILE`, safetensors): a warm start of a
current engine converts the same layers with the saved scales instead of calibrating again, so it
gets the same arithmetic without its calibration calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sdserve_backend.config_errors import InvalidParameter
from sdserve_backend.quoting import quoted

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
# The activation scale of each converted layer, by its path in the UNet, in the engine folder.
SCALES_FILE = "fp8_scales.safetensors"
# torchao's configs by default switch on Inductor's coordinate-descent tuning for the whole process:
# every Triton kernel of the compiled UNet is then tuned on its first run, each candidate a
# ptxas compile. On an H200 that kept the FP8 engine's first calls busy for minutes (SD 1.5 over
# 6, SDXL over 6; py-spy: CoordescTuner under the graph warm-ups), and it would slow every model
# compiled later in the process. The engine compiles with Inductor's defaults.
KEEP_INDUCTOR_CONFIG = {"set_inductor_config": False}


def parse_fp8_mode(value: Any, source: str = "config parameter") -> str:
    """`engine_fp8`: "" or "off" (the default) or "static"."""
    text = str(value or "").strip().lower() or "off"
    if text not in FP8_MODES:
        raise InvalidParameter(f"{source} 'engine_fp8' must be one of {', '.join(repr(mode) for mode in FP8_MODES)}, got {quoted(value)}")
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
        quantize_(unet, Float8StaticActivationFloat8WeightConfig(step="prepare", **KEEP_INDUCTOR_CONFIG), filter_fn=chosen)
        for inputs in calibration_inputs:
            _forward(unet, inputs)
        quantize_(unet, Float8StaticActivationFloat8WeightConfig(step="convert", **KEEP_INDUCTOR_CONFIG), filter_fn=chosen)
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


def activation_scales(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The static activation scale of each FP8 layer of `unet`, by path (float32, on the CPU)."""
    scales: dict[str, torch.Tensor] = {}
    for path, module in unet.named_modules():
        scale = getattr(getattr(module, "weight", None), "act_quant_scale", None)
        if isinstance(module, torch.nn.Linear) and isinstance(scale, torch.Tensor):
            scales[path] = scale.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return scales


def quantize_unet_with_scales(unet: torch.nn.Module, scales: Mapping[str, torch.Tensor]) -> int:
    """Convert the layers `scales` names, in place, with those activation scales (what
    `quantize_unet_static` computed for them before); the number converted. Raises ValueError,
    converting nothing, when a path is not a float16 Linear layer of `unet`."""
    from torchao.prototype.quantization.quant_api import Float8StaticActivationFloat8WeightConfig
    from torchao.quantization import quantize_

    modules = dict(unet.named_modules())
    wrong = [path for path in scales if type(modules.get(path)) is not torch.nn.Linear
             or type(modules[path].weight) is not torch.nn.Parameter]
    if wrong:
        raise ValueError(f"saved FP8 scales name {len(wrong)} layers that are not unconverted Linear layers, e.g. {wrong[0]!r}")
    with torch.no_grad():
        for path, scale in scales.items():
            layer = modules[path]
            config = Float8StaticActivationFloat8WeightConfig(act_quant_scale=scale.to(layer.weight.device),
                                                              **KEEP_INDUCTOR_CONFIG)
            quantize_(layer, config, filter_fn=lambda module, _: module is layer)
    return len(scales)


def save_scales(path: Path, scales: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    temporary = path.with_name(path.name + ".tmp")
    save_file(dict(scales), str(temporary))
    temporary.replace(path)


def load_scales(path: Path) -> dict[str, torch.Tensor] | None:
    """The scales `save_scales` wrote, or None when the file is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path)) if path.is_file() else None
    except (OSError, SafetensorError):
        return None

"""Scheduler lookup by name, built from the model folder's own scheduler config.

A fresh scheduler is built for every pipeline batch: schedulers keep per-run state (step index,
multistep history), so one instance must never serve two batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers import SchedulerMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import is_scipy_available

from sdserve_backend.quoting import quoted


@dataclass(frozen=True)
class SchedulerVariant:
    """A diffusers scheduler class and the config options that make a named variant of it."""

    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)


_KARRAS = {"use_karras_sigmas": True}
_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPM_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

# Short names, with Automatic1111's and ComfyUI's spellings of the Karras-sigma and SDE variants
# (diffusers' documented equivalents: the class, built from the model's config with these options).
SCHEDULER_VARIANTS: dict[str, SchedulerVariant] = {
    "euler": SchedulerVariant("EulerDiscreteScheduler"),
    "euler_karras": SchedulerVariant("EulerDiscreteScheduler", _KARRAS),
    "euler_a": SchedulerVariant("EulerAncestralDiscreteScheduler"),
    "heun": SchedulerVariant("HeunDiscreteScheduler"),
    "heun_karras": SchedulerVariant("HeunDiscreteScheduler", _KARRAS),
    "lms": SchedulerVariant("LMSDiscreteScheduler"),
    "lms_karras": SchedulerVariant("LMSDiscreteScheduler", _KARRAS),
    "ddim": SchedulerVariant("DDIMScheduler"),
    "ddpm": SchedulerVariant("DDPMScheduler"),
    "pndm": SchedulerVariant("PNDMScheduler"),
    "unipc": SchedulerVariant("UniPCMultistepScheduler"),
    "deis": SchedulerVariant("DEISMultistepScheduler"),
    "dpm++": SchedulerVariant("DPMSolverMultistepScheduler"),
    "dpm++_2m": SchedulerVariant("DPMSolverMultistepScheduler", _DPM_2M),
    "dpm++_2m_karras": SchedulerVariant("DPMSolverMultistepScheduler", {**_DPM_2M, **_KARRAS}),
    "dpm++_2m_sde": SchedulerVariant("DPMSolverMultistepScheduler", _DPM_2M_SDE),
    "dpm++_2m_sde_karras": SchedulerVariant("DPMSolverMultistepScheduler", {**_DPM_2M_SDE, **_KARRAS}),
    "dpm++_sde": SchedulerVariant("DPMSolverSDEScheduler"),
    "dpm++_sde_karras": SchedulerVariant("DPMSolverSDEScheduler", _KARRAS),
    "dpm2": SchedulerVariant("KDPM2DiscreteScheduler"),
    "dpm2_karras": SchedulerVariant("KDPM2DiscreteScheduler", _KARRAS),
    "dpm2_a": SchedulerVariant("KDPM2AncestralDiscreteScheduler"),
    "dpm2_a_karras": SchedulerVariant("KDPM2AncestralDiscreteScheduler", _KARRAS),
    # Few-step schedulers: latent consistency models (LCM, LCM-LoRA) and trajectory consistency
    # distillation (TCD); with guidance 0 or 1 and 1-8 steps.
    "lcm": SchedulerVariant("LCMScheduler"),
    "tcd": SchedulerVariant("TCDScheduler"),
}
SCHEDULER_SHORT_NAMES: dict[str, str] = {name: variant.class_name for name, variant in SCHEDULER_VARIANTS.items()}

# The schedulers diffusers declares compatible with the Stable Diffusion pipelines, and the
# few-step ones its LCM-LoRA and TCD guides use with them.
SUPPORTED_SCHEDULER_CLASSES: frozenset[str] = frozenset(member.name for member in KarrasDiffusionSchedulers) | {
    "LCMScheduler",
    "TCDScheduler",
}

_NEEDS_SCIPY = frozenset({"LMSDiscreteScheduler"})
# Schedulers whose step noise comes from a Brownian tree seeded by their config's
# noise_sampler_seed (torchsde's BrownianInterval), not from a generator passed to `step`: each
# request's gets the request's seed, over that request's own rows only, so the noise is the one
# diffusers draws for that request alone whatever it is batched with.
_SEEDED_NOISE = frozenset({"DPMSolverSDEScheduler"})
# Schedulers that draw their timesteps from a distillation schedule of this many steps (their
# config's original_inference_steps) and cannot run more.
_DISTILLED = frozenset({"LCMScheduler", "TCDScheduler"})


def resolve_scheduler(name: str, default_class: type[SchedulerMixin]) -> tuple[type[SchedulerMixin], Mapping[str, Any]]:
    """The scheduler class for `name` and the config options of its variant: "" is the model's
    own, else a short name (SCHEDULER_VARIANTS) or a class name.

    Raises ValueError naming the scheduler when it is unknown or cannot run here.
    """
    if name == "":
        return default_class, {}
    variant = SCHEDULER_VARIANTS.get(name.lower(), SchedulerVariant(name))
    class_name = variant.class_name
    if class_name not in SUPPORTED_SCHEDULER_CLASSES:
        known = ", ".join(sorted(SCHEDULER_VARIANTS) + sorted(SUPPORTED_SCHEDULER_CLASSES))
        raise ValueError(f"scheduler {quoted(name)} is not supported; use one of: {known}")
    if class_name in _NEEDS_SCIPY and not is_scipy_available():
        raise ValueError(f"scheduler {quoted(name)} needs the scipy package, which is not installed")
    scheduler_class = getattr(diffusers, class_name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        # diffusers exports a placeholder when a scheduler's optional dependency is missing
        # (DPMSolverSDEScheduler needs torchsde).
        raise ValueError(f"scheduler {quoted(name)} is not available in this installation of diffusers")
    return scheduler_class, variant.options


def resolve_scheduler_class(name: str, default_class: type[SchedulerMixin]) -> type[SchedulerMixin]:
    """The scheduler class for `name` (see `resolve_scheduler`)."""
    return resolve_scheduler(name, default_class)[0]


def canonical_scheduler_name(name: str, default_class: type[SchedulerMixin]) -> str:
    """One spelling per scheduler a name makes: the class name, or the short name of a variant
    with options, so that "euler" and "EulerDiscreteScheduler" batch together and "euler_karras"
    stays itself."""
    scheduler_class, options = resolve_scheduler(name, default_class)
    return name.lower() if options else scheduler_class.__name__


def max_scheduler_steps(name: str, default_class: type[SchedulerMixin], model_config: Mapping[str, Any]) -> int:
    """The most denoising steps the scheduler `name` runs for this model: `max_inference_steps`,
    or for LCM and TCD the steps of their distillation schedule (50 unless the config says)."""
    scheduler_class, options = resolve_scheduler(name, default_class)
    if scheduler_class.__name__ in _DISTILLED:
        return int(scheduler_class.from_config(model_config, **options).config.original_inference_steps)
    return max_inference_steps(model_config)


def available_short_names() -> list[str]:
    """The short names of SCHEDULER_VARIANTS that run in this installation, in table order."""
    names: list[str] = []
    for name in SCHEDULER_VARIANTS:
        try:
            resolve_scheduler(name, SchedulerMixin)
        except ValueError:
            continue
        names.append(name)
    return names


def supported_scheduler_names() -> list[str]:
    """The diffusers class names `resolve_scheduler_class` accepts in this installation, sorted."""
    names: list[str] = []
    for class_name in sorted(SUPPORTED_SCHEDULER_CLASSES):
        try:
            resolve_scheduler_class(class_name, SchedulerMixin)
        except ValueError:
            continue
        names.append(class_name)
    return names


def max_inference_steps(scheduler_config: Mapping[str, Any]) -> int:
    """The most denoising steps every scheduler runs: one less than the training timesteps. With
    the SD configs' "leading" spacing and steps_offset 1, as many steps as training timesteps puts
    the last timestep one past the end of DDIM's, PNDM's and DDPM's tables (and DPM-Solver's,
    UniPC's and DEIS's sigmas)."""
    return int(scheduler_config.get("num_train_timesteps", 1000)) - 1


def make_scheduler(
    name: str, default_class: type[SchedulerMixin], model_config: Mapping[str, Any], seed: int | None = None
) -> SchedulerMixin:
    """A new scheduler of the class `name` names, configured like the model's own scheduler
    with its variant's options (Karras sigmas, an SDE solver).

    Building from the model's config keeps its noise schedule and prediction type (epsilon or
    v-prediction), as diffusers does when swapping schedulers. `seed`: the request's, for the
    schedulers that draw their step noise from a seed of their own rather than from the request's
    generator (DPM++ SDE's Brownian tree); without it they draw a random one.
    """
    scheduler_class, options = resolve_scheduler(name, default_class)
    if seed is not None and scheduler_class.__name__ in _SEEDED_NOISE:
        options = {**options, "noise_sampler_seed": seed}
    return scheduler_class.from_config(model_config, **options)

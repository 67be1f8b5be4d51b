"""Scheduler lookup by name, built from the model folder's own scheduler config.

A fresh scheduler is built for every pipeline batch: schedulers keep per-run state (step index,
multistep history), so one instance must never serve two batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffusers
from diffusers import SchedulerMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import is_scipy_available

SCHEDULER_SHORT_NAMES: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "heun": "HeunDiscreteScheduler",
}

# The schedulers diffusers declares compatible with the Stable Diffusion pipelines.
SUPPORTED_SCHEDULER_CLASSES: frozenset[str] = frozenset(member.name for member in KarrasDiffusionSchedulers)

_NEEDS_SCIPY = frozenset({"LMSDiscreteScheduler"})


def resolve_scheduler_class(name: str, default_class: type[SchedulerMixin]) -> type[SchedulerMixin]:
    """The scheduler class for `name`: "" is the model's own, else a short name or a class name.

    Raises ValueError naming the scheduler when it is unknown or cannot run here.
    """
    if name == "":
        return default_class
    class_name = SCHEDULER_SHORT_NAMES.get(name.lower(), name)
    if class_name not in SUPPORTED_SCHEDULER_CLASSES:
        known = ", ".join(sorted(SCHEDULER_SHORT_NAMES) + sorted(SUPPORTED_SCHEDULER_CLASSES))
        raise ValueError(f"scheduler {name!r} is not supported; use one of: {known}")
    if class_name in _NEEDS_SCIPY and not is_scipy_available():
        raise ValueError(f"scheduler {name!r} needs the scipy package, which is not installed")
    scheduler_class = getattr(diffusers, class_name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        # diffusers exports a placeholder when a scheduler's optional dependency is missing.
        raise ValueError(f"scheduler {name!r} is not available in this installation of diffusers")
    return scheduler_class


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
    name: str, default_class: type[SchedulerMixin], model_config: Mapping[str, Any]
) -> SchedulerMixin:
    """A new scheduler of the class `name` names, configured like the model's own scheduler.

    Building from the model's config keeps its noise schedule and prediction type (epsilon or
    v-prediction), as diffusers does when swapping schedulers.
    """
    scheduler_class = resolve_scheduler_class(name, default_class)
    return scheduler_class.from_config(model_config)

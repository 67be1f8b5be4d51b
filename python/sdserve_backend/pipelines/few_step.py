"""The defaults a few-step model's weights call for, so that a client who knows nothing of the
model gets a good image from it: distilled models want 1-4 steps and little or no guidance, and the
30 steps at guidance 7.5 of an ordinary Stable Diffusion model spoil them.

What the weights tell:
- a guidance-distilled UNet (LCM-distilled models: `time_cond_proj_dim` set) takes the guidance
  scale embedded: 4 steps at guidance 8.5, as diffusers' LatentConsistencyModelPipeline defaults;
- the LCM scheduler as the model's own (an LCM-LoRA fused into the weights): 4 steps, guidance 1
  (none), as diffusers' LCM-LoRA guide runs them;
- the TCD scheduler as the model's own: 4 steps, guidance 0, as diffusers' TCD guide;
- Euler (ancestral or not) with "trailing" timesteps as the model's own scheduler, the scheduler
  SD-Turbo and SDXL-Turbo ship (adversarial diffusion distillation): 1 step, guidance 0.
A model's config.pbtxt `steps` and `guidance_scale` still win over these.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdserve_backend.pipelines.components import DiffusionComponents

TURBO_SCHEDULERS = frozenset({"EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler"})


@dataclass(frozen=True)
class FewStepDefaults:
    """What kind of few-step model the weights are, and its default steps and guidance scale."""

    kind: str
    steps: int
    guidance_scale: float


def few_step_defaults(components: DiffusionComponents) -> FewStepDefaults | None:
    """The few-step defaults the weights call for (module docstring); None for other models."""
    if components.guidance_embedding_dim is not None:
        return FewStepDefaults("lcm", steps=4, guidance_scale=8.5)
    scheduler = components.scheduler_class.__name__
    if scheduler == "LCMScheduler":
        return FewStepDefaults("lcm-lora", steps=4, guidance_scale=1.0)
    if scheduler == "TCDScheduler":
        return FewStepDefaults("tcd", steps=4, guidance_scale=0.0)
    if scheduler in TURBO_SCHEDULERS and components.scheduler_config.get("timestep_spacing") == "trailing":
        return FewStepDefaults("turbo", steps=1, guidance_scale=0.0)
    return None

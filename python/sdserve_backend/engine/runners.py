"""Drop-in stand-ins for the UNet and the VAE that run through `BucketedCall`s.

Each keeps its model's call signature and hands every other attribute (config, dtype, submodules)
to the wrapped model, so pipelines use them unchanged. Calls the captured shapes do not cover
(another image size, more rows than the largest bucket, extra keyword arguments) run eagerly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from sdserve_backend.engine.attention import attention_backend
from sdserve_backend.engine.buckets import chunks
from sdserve_backend.engine.static_call import BucketedCall


class _ModelRunner:
    """A model behind per-image-size `BucketedCall`s; every other attribute is the model's."""

    def __init__(self, model: Any, attention: str, calls: dict[tuple[int, int], BucketedCall] | None = None,
                 compiled: Any = None) -> None:
        self.__dict__["_model"] = model
        self.__dict__["_attention"] = attention
        # Keyed by the latent (height, width).
        self.__dict__["calls"] = calls if calls is not None else {}
        # The torch.compile'd model (or method), used only for what the buckets capture.
        self.__dict__["_compiled"] = compiled
        # Inside `eager()`: calls skip the captured graphs.
        self.__dict__["_eager"] = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_model"], name)

    @property
    def model(self) -> Any:
        return self._model

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Calls inside run the model's own forward (with the engine's attention backend), not
        the captured graphs: for what the graphs do not hold, such as per-request LoRA layers."""
        self.__dict__["_eager"] = True
        try:
            yield
        finally:
            self.__dict__["_eager"] = False


class UNetRunner(_ModelRunner):
    """`unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=..., return_dict=...)`."""

    def run_eager(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own forward for per-row inputs."""
        return self._forward(self._model, sample, timestep, encoder_hidden_states, text_embeds, time_ids)

    def run_captured(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                     text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """What each bucket captures: the compiled model when there is one, else `run_eager`.

        The compiled model is traced once with the row count symbolic (2 and up), so every bucket
        shares one compiled graph; a single row (guidance off) would need a second one and runs
        eagerly inside its graph instead. Calls outside the buckets (another image size) stay
        eager too: compiling for them mid-service would stall the model for a minute.
        """
        if self._compiled is None or sample.shape[0] < 2:
            return self.run_eager(sample, timestep, encoder_hidden_states, text_embeds, time_ids)
        inputs = [sample, timestep, encoder_hidden_states] + [t for t in (text_embeds, time_ids) if t is not None]
        for tensor in inputs:
            torch._dynamo.mark_dynamic(tensor, 0)
        return self._forward(self._compiled, sample, timestep, encoder_hidden_states, text_embeds, time_ids)

    def _forward(self, model: Any, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 text_embeds: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        with attention_backend(self._attention):
            return model(
                sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
            )[0]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
        **extra: Any,
    ) -> Any:
        rows = sample.shape[0]
        # A scalar timestep (the same for every row) becomes one per row, as the model does itself.
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(1).expand(rows) if timesteps.ndim == 0 else timesteps
        inputs = {"sample": sample, "timestep": timesteps, "encoder_hidden_states": encoder_hidden_states}
        if added_cond_kwargs:
            inputs["text_embeds"] = added_cond_kwargs["text_embeds"]
            inputs["time_ids"] = added_cond_kwargs["time_ids"]
        call = None if self._eager else self.calls.get(tuple(sample.shape[-2:]))
        unused_extra = all(value is None for value in extra.values())
        if call is not None and unused_extra and call.accepts(inputs):
            with torch.inference_mode():
                output = call(inputs)
        elif unused_extra:
            output = self.run_eager(**inputs)
        else:
            with attention_backend(self._attention):
                return self._model(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                  added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **extra)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=output)
        return (output,)


class VaeRunner(_ModelRunner):
    """The VAE with `decode(latents, return_dict=...)` run through per-bucket graphs, in chunks of
    the largest bucket (the decoder treats images independently, so chunking changes nothing)."""

    def run_eager(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(self._model.decode, latents)

    def run_captured(self, latents: torch.Tensor) -> torch.Tensor:
        """What each bucket captures: the compiled `decode` when there is one, else `run_eager`.

        A single image, the usual decode, has a trace of its own; two images and up share one
        with the row count symbolic, so the buckets cost at most two compiles.
        """
        if self._compiled is None:
            return self.run_eager(latents)
        if latents.shape[0] >= 2:
            torch._dynamo.mark_dynamic(latents, 0)
        return self._decode(self._compiled, latents)

    def _decode(self, decode: Any, latents: torch.Tensor) -> torch.Tensor:
        with attention_backend(self._attention):
            return decode(latents, return_dict=False)[0]

    def decode(self, latents: torch.Tensor, return_dict: bool = True, **extra: Any) -> Any:
        call = self.calls.get(tuple(latents.shape[-2:]))
        if extra or call is None:
            images = self.run_eager(latents) if not extra else self._model.decode(latents, return_dict=False, **extra)[0]
        else:
            parts = []
            for start, stop in chunks(latents.shape[0], call.max_rows):
                piece = {"latents": latents[start:stop]}
                if call.accepts(piece):
                    with torch.inference_mode():
                        parts.append(call(piece))
                else:
                    parts.append(self.run_eager(latents[start:stop]))
            images = torch.cat(parts) if len(parts) > 1 else parts[0]
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=images)
        return (images,)

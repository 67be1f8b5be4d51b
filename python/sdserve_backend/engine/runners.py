"""Drop-in stand-ins for the UNet and the VAE that run through `BucketedCall`s.

Each keeps its model's call signature and hands every other attribute (config, dtype, submodules)
to the wrapped model, so pipelines use them unchanged. Calls the captured shapes do not cover
(another image size, more rows than the largest bucket, extra keyword arguments) run eagerly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.fx.experimental import _config as fx_config

from sdserve_backend.engine.attention import attention_backend
from sdserve_backend.engine.buckets import chunks
from sdserve_backend.engine.static_call import BucketedCall
from sdserve_backend.pipelines import feature_cache

if TYPE_CHECKING:
    from sdserve_backend.pipelines.lora_slots import LoraSlots

log = logging.getLogger("sdserve.engine")


class _ModelRunner:
    """A model behind per-image-size `BucketedCall`s; every other attribute is the model's."""

    def __init__(self, model: Any, attention: str, calls: dict[tuple[int, int], BucketedCall] | None = None,
                 compiled: Any = None) -> None:
        self.__dict__["_model"] = model
        self.__dict__["_attention"] = attention
        # Keyed by the latent (height, width).
        self.__dict__["calls"] = calls if calls is not None else {}
        # The compiled forward, `compiled(model, *inputs)`, used only for what the buckets capture.
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


def plain_forward(unet: Any, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  added_cond_kwargs: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """The model's own forward, as a function of the model (what the engine compiles)."""
    return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                return_dict=False)[0]


def decode_forward(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's own decode, as a function of the model (what the engine compiles)."""
    return vae.decode(latents, return_dict=False)[0]


class UNetRunner(_ModelRunner):
    """`unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=..., return_dict=...)`.

    With `keeps_features` (feature caching, `pipelines/feature_cache.py`) the captured call is the
    split forward that also returns the deep features, so a full step and a plain call share one
    graph per bucket (and one compile), and `reuse_calls` holds the graphs of the steps that run
    the outer blocks on kept features. `forward_keeping_features` and `forward_from_features` are
    what the denoise step calls for those.

    Inside `lora_rows`, calls run through `lora_calls`: per image size, the graphs of the model
    with its LoRA sites reading slot tables (`pipelines/lora_slots.py`), captured at the first such
    call and again when the tables grow. They run the model uncompiled: compiling them too would
    cost a second compile of the UNet.
    """

    def __init__(self, model: Any, attention: str, calls: dict[tuple[int, int], BucketedCall] | None = None,
                 compiled: Any = None, keeps_features: bool = False, compiled_reuse: Any = None) -> None:
        super().__init__(model, attention, calls, compiled)
        self.__dict__["keeps_features"] = keeps_features
        self.__dict__["reuse_calls"] = {}
        self.__dict__["_compiled_reuse"] = compiled_reuse
        # Latent size -> (the slot tables it reads, their version), call (None: no memory for it).
        self.__dict__["lora_calls"] = {}
        # Inside `lora_rows`: (slot tables, each row's entry).
        self.__dict__["_lora"] = None

    @contextlib.contextmanager
    def lora_rows(self, slots: LoraSlots, rows: torch.Tensor) -> Iterator[None]:
        """Calls inside run through the LoRA graphs, row i with the adapters of entry `rows[i]` of
        `slots` (`LoraSlots.rows`). Calls those graphs do not cover run the model eagerly, with the
        adapters `lora_layers.ModelLoras.rows` made active."""
        self.__dict__["_lora"] = (slots, rows)
        try:
            yield
        finally:
            self.__dict__["_lora"] = None

    def run_lora_captured(self, slots: LoraSlots, sample: torch.Tensor, timestep: torch.Tensor,
                          encoder_hidden_states: torch.Tensor, lora_slot: torch.Tensor,
                          text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """What each LoRA bucket captures: the model's own forward, its LoRA sites adding each row
        the update of its entry `lora_slot` of `slots`."""
        with slots.active(lora_slot):
            return self.run_eager(sample, timestep, encoder_hidden_states, text_embeds, time_ids)

    def _lora_call(self, latent_size: tuple[int, int], slots: LoraSlots) -> BucketedCall | None:
        """The LoRA graphs for one image size on the current tables, captured when missing or stale,
        in the buckets, memory pool and layout of the base model's graphs for that size."""
        base = self.calls.get(latent_size)
        if base is None:
            return None
        key = (id(slots), slots.version)
        current = self.lora_calls.get(latent_size)
        if current is not None and current[0] == key:
            return current[1]
        self.lora_calls.pop(latent_size, None)
        started = time.perf_counter()
        example = {name: buffer[:1].clone() for name, buffer in base.buffers.items()}
        example["lora_slot"] = torch.zeros((1,), dtype=torch.long, device=example["sample"].device)
        call: BucketedCall | None
        try:
            with torch.inference_mode():
                # Captured while serving: the step batcher's decoder thread may be decoding meanwhile,
                # which a "global" capture would forbid (its allocations, its synchronisations).
                call = BucketedCall(functools.partial(self.run_lora_captured, slots), example, base.buckets,
                                    base.use_graphs, channels_last=base.channels_last, pool=base.pool,
                                    capture_error_mode="thread_local")
                for name, buffer in call.buffers.items():
                    buffer.copy_(example[name].expand_as(buffer))
                call.capture()
        except torch.OutOfMemoryError as error:
            # Without room for them, LoRA rows run eagerly (as before the graphs) until the tables change.
            log.warning("engine: no memory for the LoRA graphs for latents %s (%s); LoRA rows run eagerly",
                        latent_size, str(error).splitlines()[0])
            call = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.lora_calls[latent_size] = (key, call)
        if call is None:
            return None
        if base.use_graphs:
            log.info("engine: captured the LoRA graphs (rank %d per layer, %d slots) for latents %s, rows %s in %.1f s",
                     slots.rank, slots.slots, latent_size, base.buckets, time.perf_counter() - started)
        return call

    def _captured(self, inputs: dict[str, torch.Tensor]) -> tuple[BucketedCall | None, dict[str, torch.Tensor]]:
        """The captured call for `inputs` and what it takes (inside `lora_rows`, the LoRA graphs
        and the rows' entries too), or None when no graph covers them."""
        latent_size = tuple(inputs["sample"].shape[-2:])
        base = self.calls.get(latent_size)
        if base is None or not base.accepts(inputs):
            return None, inputs
        if self._lora is None:
            return base, inputs
        slots, rows = self._lora
        with_rows = {**inputs, "lora_slot": rows}
        call = self._lora_call(latent_size, slots)
        return (call, with_rows) if call is not None and call.accepts(with_rows) else (None, inputs)

    def run_eager(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own forward for per-row inputs."""
        with attention_backend(self._attention):
            return plain_forward(self._model, sample, timestep, encoder_hidden_states, _added(text_embeds, time_ids))

    def run_captured(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                     text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> Any:
        """What each bucket captures: the compiled forward when there is one, else the eager one;
        with `keeps_features`, the prediction and the deep features.

        The compiled forward is traced once with the row count symbolic, a single row (guidance
        off, or outside a guidance interval) included, so every bucket shares one compiled graph
        (`_rows_symbolic_from_one`). Calls outside the buckets (another image size) stay eager:
        compiling for them mid-service would stall the model for a minute.
        """
        function = feature_cache.forward_keeping_features if self.keeps_features else plain_forward
        inputs = [sample, timestep, encoder_hidden_states] + [t for t in (text_embeds, time_ids) if t is not None]
        compiled = self._compiled is not None
        return self._run(self._compiled if compiled else function, compiled, inputs,
                         sample, timestep, encoder_hidden_states, _added(text_embeds, time_ids))

    def run_reuse_captured(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                           features: torch.Tensor, text_embeds: torch.Tensor | None = None,
                           time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """What each reuse bucket captures: the outer blocks on kept features (compiled, one graph
        for every row count, as `run_captured`)."""
        inputs = [sample, timestep, encoder_hidden_states, features] + [t for t in (text_embeds, time_ids) if t is not None]
        compiled = self._compiled_reuse is not None
        return self._run(self._compiled_reuse if compiled else feature_cache.forward_from_features, compiled,
                         inputs, sample, timestep, encoder_hidden_states, features, _added(text_embeds, time_ids))

    def _run(self, function: Any, compiled: bool, row_inputs: list[torch.Tensor], *args: Any) -> Any:
        if compiled:
            for tensor in row_inputs:
                torch._dynamo.mark_dynamic(tensor, 0)
        with attention_backend(self._attention), _rows_symbolic_from_one() if compiled else contextlib.nullcontext():
            return function(self._model, *args)

    def forward_keeping_features(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                                 added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction and the deep features (`feature_cache.forward_keeping_features`)."""
        inputs = _inputs(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        call = None if self._eager or self._lora is not None else self.calls.get(tuple(sample.shape[-2:]))
        if self.keeps_features and call is not None and call.accepts(inputs):
            with torch.inference_mode():
                noise, features = call(inputs)
            return noise, features
        with attention_backend(self._attention):
            return feature_cache.forward_keeping_features(self._model, sample, inputs["timestep"], encoder_hidden_states,
                                                          added_cond_kwargs)

    def forward_from_features(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                              features: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The prediction from kept deep features (`feature_cache.forward_from_features`)."""
        inputs = _inputs(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        inputs["features"] = features
        call = None if self._eager or self._lora is not None else self.reuse_calls.get(tuple(sample.shape[-2:]))
        if call is not None and call.accepts(inputs):
            with torch.inference_mode():
                return call(inputs)
        with attention_backend(self._attention):
            return feature_cache.forward_from_features(self._model, sample, inputs["timestep"], encoder_hidden_states,
                                                       features, added_cond_kwargs)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
        **extra: Any,
    ) -> Any:
        inputs = _inputs(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        unused_extra = all(value is None for value in extra.values())
        call, call_inputs = (None, inputs) if self._eager or not unused_extra else self._captured(inputs)
        if call is not None:
            with torch.inference_mode():
                output = call(call_inputs)
            if isinstance(output, tuple):
                output = output[0]  # the features of a feature-keeping graph are not needed here
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


def _rows_symbolic_from_one() -> contextlib.AbstractContextManager[Any]:
    """Inside, a row dimension marked dynamic stays symbolic at one row too, so the UNet's single
    row shares the graph of 2 rows and up. Otherwise Dynamo specializes a size-1 dimension even
    when it is marked, and one row costs a compile of its own (79 s of an SDXL cold build on an
    H200, 39.5 s for SD 1.5). Measured there (SDXL 1024², compiled ahead of time, CUDA-graph
    captured): the shared graph runs one row in 18.52 ms against 18.63 ms for a one-row compile,
    its outputs as close to eager's. The VAE decoder keeps its one-image compile: shared, it ran
    one image in 43.5 ms against 33.7 ms. This holds for the engine's ahead-of-time compile, which
    keeps no guards; under plain torch.compile (a forward that cannot be compiled ahead of time)
    Inductor may add a guard of its own on the row count, and one row is then compiled apart (seen
    on a CPU: its convolution lowering), a compile more but the same results."""
    return fx_config.patch(backed_size_oblivious=True)


def _inputs(sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
            added_cond_kwargs: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    rows = sample.shape[0]
    # A scalar timestep (the same for every row) becomes one per row, as the model does itself.
    timesteps = torch.as_tensor(timestep, device=sample.device)
    timesteps = timesteps.reshape(1).expand(rows) if timesteps.ndim == 0 else timesteps
    inputs = {"sample": sample, "timestep": timesteps, "encoder_hidden_states": encoder_hidden_states}
    if added_cond_kwargs:
        inputs["text_embeds"] = added_cond_kwargs["text_embeds"]
        inputs["time_ids"] = added_cond_kwargs["time_ids"]
    return inputs


def _added(text_embeds: torch.Tensor | None, time_ids: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
    return None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}


class VaeRunner(_ModelRunner):
    """The VAE with `decode(latents, return_dict=...)` run through per-bucket graphs, in chunks of
    the largest bucket (the decoder treats images independently, so chunking changes nothing)."""

    def run_eager(self, latents: torch.Tensor) -> torch.Tensor:
        return self._decode(self._model.decode, latents)

    def run_captured(self, latents: torch.Tensor) -> torch.Tensor:
        """What each bucket captures: the compiled `decode` when there is one, else `run_eager`.

        A single image has a trace of its own; two images and up share one with the row count
        symbolic. (Unlike the UNet's, the decoder's symbolic graph is slower at one image: SDXL on an
        H200, 43.5 against 33.7 ms; so a compiled engine captures the one-image bucket only and
        decodes a batch image by image, `prepare.vae_bucket_sizes`.)
        """
        if self._compiled is None:
            return self.run_eager(latents)
        if latents.shape[0] >= 2:
            torch._dynamo.mark_dynamic(latents, 0)
        with attention_backend(self._attention):
            return self._compiled(self._model, latents)

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

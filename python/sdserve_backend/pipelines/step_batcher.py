"""Step-level (in-flight) batching: a request joins the running UNet batch at the next denoising
step and leaves when its own steps are done, so a new request never waits for a whole batch.

Every request keeps what makes its image its own: its scheduler instance, step count, guidance
scale, and seeded CPU generator. Only the UNet call is shared (`denoise.denoise_step`, the step
every way of running a task uses), so a request's image does not depend on what else was in the
batch. Requests are prepared and finished by their task (`pipelines/tasks/`); those with the same
batch key (the latent size, for text-to-image) share UNet calls. Requests of different keys run
side by side as groups, one UNet call per group, the GPU shared between the groups by their cost
(`_next_group`): a 512² request arriving while 768² ones run starts at the next step instead of
waiting for them all to finish.

Threads: `submit` runs on the caller's thread and only checks the request (no GPU work); one
engine thread prepares admitted requests (prompt encoding, initial latents) and runs the
denoising loop; one decoder thread turns finished latents into images, so the engine never waits
on the host for a decode (`decode` ends with the copy to the host).
Host syncs: a request's preparation copies its inputs to the device and its timesteps back, and
each of those copies waits for the work already queued on the GPU. Done on the caller's thread,
that wait came once per request, one request after another (the backend's main thread submits
them in turn), so a burst of requests was admitted a step's time apart; done by the engine
thread when it admits them, the first wait drains the queue and the rest are immediate. In the
loop, the engine never waits on the step it just queued; it waits on the step STEPS_AHEAD before
it, which bounds how far the host runs ahead of the GPU (see `_bound_lookahead`) while the GPU
always has work queued. Cancellation and progress are host flags and counters; the schedulers
that draw noise each step (euler_a, ddpm) draw it on the GPU from the request's seeded generator
there, as they do outside the batcher.
"""

from __future__ import annotations

import itertools
import os
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sdserve_backend.pipelines.denoise import DenoisingState
from sdserve_backend.pipelines.requests import GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.tasks import Task
from sdserve_backend.pipelines.text_to_image import TextToImagePipeline, finish_per_request

log = logging.getLogger("sdserve.step_batcher")

# How many UNet calls `trace()` remembers.
TRACE_LENGTH = 256
# Denoising steps the engine thread may queue on the GPU before waiting for the oldest to finish.
STEPS_AHEAD = 2

# Errors of the device itself (an illegal memory access, say) are not one request's: they reach
# the engine's fatal path, which ends the process so that it is restarted with a fresh context.
DEVICE_ERRORS: tuple[type[BaseException], ...] = tuple(
    error for error in (getattr(torch, "AcceleratorError", None),) if error is not None
)

# A finished request's images (uint8 [len(prompts), H, W, 3]) or the error to answer it with.
Outcome = np.ndarray | Exception


class RequestCancelled(Exception):
    """The request was cancelled, so it stopped early."""


@dataclass(frozen=True)
class StepRecord:
    """One UNet call: the image size, and per request (in batch order) its key and the step it took."""

    size: tuple[int, int]
    members: tuple[tuple[int, int], ...]


@dataclass
class InFlight:
    """One request inside the batcher."""

    key: int
    task: Task
    request: GenerationRequest
    settings: GenerationSettings
    on_done: Callable[[Outcome], None]
    on_step: Callable[..., None] | None
    is_cancelled: Callable[[], bool]
    # Send a preview image with every `preview_every`-th step's progress (0: never).
    preview_every: int = 0
    # Requests with equal keys may share UNet calls (the task's `batch_key`, computed once).
    batch_key: Hashable = None
    # The last step told to `on_step`.
    reported: int = 0
    # Set by the engine thread when it admits the request (`_prepare`).
    state: DenoisingState | None = None

    @property
    def images(self) -> int:
        return len(self.request.prompts)

    @property
    def denoising(self) -> DenoisingState:
        assert self.state is not None, "the engine prepares each request as it admits it"
        return self.state

    @property
    def size(self) -> tuple[int, int]:
        return (self.settings.height, self.settings.width)



class StepBatcher:
    """Runs submitted requests through one shared denoising loop, step by step."""

    def __init__(self, pipeline: TextToImagePipeline, max_images: int) -> None:
        """`max_images`: the most images whose rows share one UNet call (a single request with
        more runs alone)."""
        self.pipeline = pipeline
        self.max_images = max(1, max_images)
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[InFlight] = deque()
        self._closing = False
        self._running: list[InFlight] = []  # engine thread only
        # Per running batch key, the work its UNet calls have had (`_next_group`); engine thread only.
        self._served: dict[Hashable, float] = {}
        self._trace: deque[StepRecord] = deque(maxlen=TRACE_LENGTH)
        self._decodes: queue.SimpleQueue[list[InFlight] | None] = queue.SimpleQueue()
        self._steps_on_device: deque[torch.cuda.Event] = deque()  # engine thread only
        self._engine = threading.Thread(target=self._run_engine, name="sdserve-step-engine", daemon=True)
        self._decoder = threading.Thread(target=self._run_decoder, name="sdserve-step-decoder", daemon=True)
        self._engine.start()
        self._decoder.start()

    def submit(
        self,
        request: GenerationRequest,
        settings: GenerationSettings,
        on_done: Callable[[Outcome], None],
        on_step: Callable[..., None] | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
        preview_every: int = 0,
        task: Task | None = None,
    ) -> int:
        """Check `request` on this thread and queue it for the engine; returns its key.

        Raises ValueError (naming the argument) for a request this model cannot run; otherwise
        `on_done` is called exactly once, from a batcher thread, with the images or the error
        (an error preparing it included).
        `on_step(step, steps)` reports progress in the request's own steps (1-based); every
        `preview_every`-th step (and the last) it gets a third argument, a callable returning a
        rough preview image (see `_preview`). `task`: the pipeline's task for the request unless given.
        """
        task = task if task is not None else self.pipeline.task_for(request)
        task.check(request, settings)
        item = InFlight(next(self._keys), task, request, settings, on_done, on_step, is_cancelled, preview_every,
                        batch_key=task.batch_key(request, settings))
        with self._wake:
            if self._closing:
                raise RuntimeError("the step batcher is closed")
            self._waiting.append(item)
            self._wake.notify()
        return item.key

    def trace(self) -> list[StepRecord]:
        """The latest UNet calls, oldest first (at most TRACE_LENGTH)."""
        with self._lock:
            return list(self._trace)

    def close(self) -> None:
        """Finish every request already submitted, then stop both threads."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._engine.join()
        self._decodes.put(None)
        self._decoder.join()

    # -----------------------------------------------------------------------------------------
    # Engine thread

    def _run_engine(self) -> None:
        """The engine thread. An error outside a step's own try (an asynchronous CUDA error
        surfacing at a synchronisation, say) leaves the device in an unknown state: answer every
        request with it and end the process, so the server's supervisor starts a fresh one."""
        try:
            self._engine_loop()
        except BaseException as error:  # noqa: BLE001 - the process cannot go on without its engine
            log.exception("the step engine failed; the backend exits so that it is restarted")
            with self._wake:
                stranded = list(self._running) + list(self._waiting)
                self._waiting.clear()
            self._leave(stranded, error if isinstance(error, Exception) else RuntimeError(str(error)))
            os._exit(70)

    def _engine_loop(self) -> None:
        while True:
            # 1. Admit waiting requests that fit the running batch (sleep while there is no work)
            with self._wake:
                while not self._waiting and not self._running and not self._closing:
                    self._wake.wait()
                if self._closing and not self._waiting and not self._running:
                    return
                leaving, admitted = self._admit()
            # 2. Prepare the admitted requests; cancelled ones leave before the step
            for item in admitted:
                if item.is_cancelled():
                    leaving.append(item)  # before any work is spent on it
                    continue
                try:
                    item.state = self._prepare(item)
                except DEVICE_ERRORS:
                    raise
                except Exception as error:  # noqa: BLE001 - answer this request; the others still run
                    log.exception("preparing a request failed")
                    self._leave([item], error)
            skipped = {id(item) for item in leaving}
            leaving += [item for item in self._running if id(item) not in skipped and item.is_cancelled()]
            self._leave(leaving, RequestCancelled("request was cancelled"))
            if not self._running:
                continue
            # 3. One UNet call for the group whose turn it is
            group = self._next_group()
            states = [item.denoising for item in group]
            record = StepRecord(group[0].size, tuple((item.key, item.denoising.step_index) for item in group))
            try:
                self.pipeline.denoise_batch(states)
            except DEVICE_ERRORS:
                raise
            except Exception as error:  # noqa: BLE001 - a failed step fails its batch, not the engine
                log.exception("a denoising step of %d request(s) failed", len(group))
                self._leave(group, error)
                continue
            with self._lock:
                self._trace.append(record)
            self._bound_lookahead()
            # 4. Progress, in each request's own steps (Heun takes two UNet calls per step)
            for item in group:
                step = item.denoising.completed_steps(item.settings.steps)
                if item.on_step is not None and step > item.reported:
                    item.reported = step
                    every, steps = item.preview_every, item.settings.steps
                    if every and (step % every == 0 or step == steps):
                        _call_safely(item.on_step, step, steps, _preview(item.denoising.latents))
                    else:
                        _call_safely(item.on_step, step, steps)
            # 5. Requests done with their steps leave, to be decoded while the others go on
            finished = [item for item in group if item.denoising.done]
            if finished:
                self._running = [item for item in self._running if not item.denoising.done]
                self._decodes.put(finished)

    def _next_group(self) -> list[InFlight]:
        """The running requests of the batch key whose turn it is: the one whose UNet calls have
        had the least work so far (latent pixels x images per call, a proxy of the GPU time), so
        that groups of different sizes share the GPU by time rather than by calls. A key that
        starts running starts level with the least-served running one, not at zero."""
        groups: dict[Hashable, list[InFlight]] = {}
        for item in self._running:
            groups.setdefault(item.batch_key, []).append(item)
        served = {key: self._served[key] for key in groups if key in self._served}
        start = min(served.values(), default=0.0)
        self._served = {key: served.get(key, start) for key in groups}
        key = min(groups, key=lambda k: self._served[k])  # ties: the key that came first
        group = groups[key]
        height, width = group[0].size
        self._served[key] += height * width * sum(item.images for item in group)
        return group

    def _bound_lookahead(self) -> None:
        """Keeps the engine at most STEPS_AHEAD steps ahead of the GPU.

        Without a bound, CUDA graphs let this thread queue every step of a request within
        milliseconds: the request then counts as finished long before the GPU has run it, and
        a request arriving meanwhile finds an empty batch and runs after it instead of beside
        it. Waiting on the event of an older step leaves the GPU a full step of queued work.
        """
        if self.pipeline.components.device.type != "cuda":
            return
        event = torch.cuda.Event()
        event.record()
        self._steps_on_device.append(event)
        if len(self._steps_on_device) > STEPS_AHEAD:
            self._steps_on_device.popleft().synchronize()

    def _admit(self) -> tuple[list[InFlight], list[InFlight]]:
        """Move waiting requests into the batch, oldest first; returns the cancelled waiting ones
        and the admitted ones (to be prepared before the next step).

        Requests of any batch key are admitted (each key runs as its own group, `_next_group`) while
        the running images stay within max_images. Admission stops at the first request that does
        not fit, so a request never waits behind ones that came after it.
        """
        cancelled = [item for item in self._waiting if item.is_cancelled()]
        for item in cancelled:
            self._waiting.remove(item)
        admitted: list[InFlight] = []
        images = sum(item.images for item in self._running)
        while self._waiting:
            candidate = self._waiting[0]
            if self._running and images + candidate.images > self.max_images:
                break
            self._running.append(self._waiting.popleft())
            admitted.append(candidate)
            images += candidate.images
        return cancelled, admitted

    def _prepare(self, item: InFlight) -> DenoisingState:
        """The request's conditioning, its own scheduler and its latents from its own seed."""
        return self.pipeline.prepare(item.task, item.request, item.settings)

    def _leave(self, items: Sequence[InFlight], error: Exception) -> None:
        if not items:
            return
        gone = {id(item) for item in items}
        self._running = [item for item in self._running if id(item) not in gone]
        for item in items:
            _call_safely(item.on_done, error)

    # -----------------------------------------------------------------------------------------
    # Decoder thread

    def _run_decoder(self) -> None:
        while (finished := self._decodes.get()) is not None:
            # Requests of one task that finished at the same step share one VAE call.
            by_task: dict[int, list[InFlight]] = {}
            for item in finished:
                by_task.setdefault(id(item.task), []).append(item)
            for items in by_task.values():
                self._finish(items)

    def _finish(self, items: list[InFlight]) -> None:
        try:
            images = items[0].task.finish(torch.cat([item.denoising.latents for item in items]))
            outcomes: Sequence[Outcome] = finish_per_request(
                images, [item.request for item in items], [item.denoising for item in items]
            )
        except Exception as error:  # noqa: BLE001 - answer the requests, keep decoding others
            log.exception("decoding %d request(s) failed", len(items))
            outcomes = [error] * len(items)
        for item, outcome in zip(items, outcomes, strict=True):
            # Drop the latents and conditioning now: the answer may be sent long after.
            item.denoising.latents = torch.empty(0)
            _call_safely(item.on_done, outcome)


def _preview(latents: torch.Tensor) -> Callable[[], np.ndarray]:
    """A rough picture of the first image's latents, at latent resolution: their first three
    channels, each stretched to 0..255. Costs a few small kernels and an asynchronous copy; the
    returned callable waits for the copy (the writer thread calls it, not the engine)."""
    channels = latents[0, :3].float()
    low = channels.amin(dim=(1, 2), keepdim=True)
    high = channels.amax(dim=(1, 2), keepdim=True)
    rgb = ((channels - low) / (high - low).clamp_min(1e-6) * 255).round().to(torch.uint8).permute(1, 2, 0)
    host = rgb.to("cpu", non_blocking=True)
    copied = torch.cuda.Event() if rgb.is_cuda else None
    if copied is not None:
        copied.record()

    def ready() -> np.ndarray:
        if copied is not None:
            copied.synchronize()
        return host.numpy()

    return ready


def _call_safely(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a caller's callback must not stop the batcher
        log.exception("a step batcher callback failed")

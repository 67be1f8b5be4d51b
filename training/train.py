"""Trains `shapes_sd` from scratch on scenes drawn on the fly.

    python -m training.train --out DIR [--seed 0] [--vae-seconds 75] [--diffusion-seconds 330]

1. The VAE learns to reconstruct scenes (L1 + MSE, weighted up along the outlines of the shapes
   where the checker reads them, and a small KL term) with a learning rate that decays over its
   budget, then its encoder freezes; the latent scaling factor is measured so that scaled latents
   have unit variance, as in Stable Diffusion. The decoder keeps learning on a slice of each
   diffusion batch.
2. The UNet and the text encoder learn together to predict the noise (epsilon) of noised latents
   conditioned on the caption, with captions dropped to "" a tenth of the time for
   classifier-free guidance, min-SNR loss weights and a little offset noise so that flat
   backgrounds of any brightness come out. Exponential moving averages of both are what is saved.
3. The text encoder also learns to spell out the layout in two fixed padding positions (see
   LAYOUT_SLOTS): CLIP's text encoder is causal, so in "a red circle above a blue square" the
   words of the red circle are read before "above" and none of the caption's own tokens can say
   which object is on top; the padding after the caption sees all of it.

Each stage runs for a wall-clock budget (or a step count, whichever ends first), so a run fits a
fixed time on any machine; checkpoints are written as it goes, so an interrupted run still leaves
weights. The data are seeded: the same seed draws the same scenes in the same order (one thread
draws and tokenizes them ahead of the GPU, in that order).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import queue
import sys
import threading
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from safetensors.torch import load_file

from .model import (
    CHECKPOINT_FILES,
    CHECKPOINT_META,
    IMAGE_SIZE,
    TEXT_HIDDEN_SIZE,
    build_text_encoder,
    build_unet,
    build_vae,
    save_checkpoint,
)
from .render import render_scenes
from .scenes import TRAINING_OPTIONS, Scene, SceneSampler
from .tokenizer import MAX_LENGTH, learn_merges, write_tokenizer
from .vocabulary import COLOUR_NAMES, RELATIONS, SHAPES, SIZES

OFFSET_NOISE = 0.05
MIN_SNR_GAMMA = 5.0
KL_WEIGHT = 1e-6
# Extra reconstruction weight on pixels next to a colour edge: shapes differ only in their outlines.
EDGE_WEIGHT = 4.0
EDGE_THRESHOLD = 0.1
# The last two token positions, padding in every caption (the longest is 18 tokens): the first
# learns to hold the object on top (or on the left), the second the other one, each as colour,
# shape and size. The UNet's cross-attention finds them at the same place in every caption.
LAYOUT_SLOTS = (MAX_LENGTH - 2, MAX_LENGTH - 1)
LAYOUT_ATTRIBUTES = (len(COLOUR_NAMES), len(SHAPES), len(SIZES))
UNKNOWN = -100  # what the caption does not say: no loss (cross_entropy's ignore_index)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def scene_batches(sampler: SceneSampler, batch_size: int) -> Iterator[list[Scene]]:
    while True:
        yield sampler.sample_many(batch_size)


def images_of(scenes: list[Scene], device: torch.device) -> torch.Tensor:
    """Scenes as [-1, 1] images, the range the VAE works in."""
    return render_scenes(scenes, IMAGE_SIZE, device) * 2 - 1


def edge_weights(images: torch.Tensor) -> torch.Tensor:
    """1 on flat areas, 1 + EDGE_WEIGHT within a pixel of a colour edge; [B, 1, H, W]."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().sum(dim=1, keepdim=True)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().sum(dim=1, keepdim=True)
    edges = (F.pad(dx, (0, 1, 0, 0)) + F.pad(dy, (0, 0, 0, 1)) > EDGE_THRESHOLD).float()
    return 1 + EDGE_WEIGHT * F.max_pool2d(edges, 3, stride=1, padding=1)


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    weights = edge_weights(images)
    error = reconstruction - images
    return ((error.abs() + error.square()) * weights).mean() / weights.mean()


class TokenizedBatches:
    """Scene batches and their caption token ids, drawn in order by a thread ahead of the GPU.

    Captions repeat, so each one is tokenized once (the tokenizer is slow next to a training step).
    """

    def __init__(self, sampler: SceneSampler, tokenizer: CLIPTokenizer, batch_size: int, ahead: int = 4) -> None:
        self.sampler, self.tokenizer, self.batch_size = sampler, tokenizer, batch_size
        self.token_ids: dict[str, list[int]] = {}
        self.ready: queue.Queue[tuple[list[Scene], torch.Tensor]] = queue.Queue(maxsize=ahead)
        threading.Thread(target=self._fill, daemon=True).start()

    def _ids(self, caption: str) -> list[int]:
        ids = self.token_ids.get(caption)
        if ids is None:
            ids = self.tokenizer(caption, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
            self.token_ids[caption] = ids
        return ids

    def _fill(self) -> None:
        while True:
            scenes = self.sampler.sample_many(self.batch_size)
            ids = torch.tensor([self._ids(scene.caption) for scene in scenes], dtype=torch.long)
            self.ready.put((scenes, ids))

    def __next__(self) -> tuple[list[Scene], torch.Tensor]:
        return self.ready.get()


def layout_targets(scene: Scene) -> list[list[int]]:
    """Per layout slot: the colour, shape and size ids of the object on top or on the left, then of the other.

    A single object fills the first slot; what the caption leaves unsaid (an omitted colour, the
    whole scene behind a colour-word or empty caption) is UNKNOWN.
    """
    unknown = [UNKNOWN] * len(LAYOUT_ATTRIBUTES)
    if not scene.is_full_description:
        return [unknown, unknown]
    objects = list(scene.objects)
    if scene.relation is not None and RELATIONS[scene.relation][1] > 0:
        objects.reverse()  # "below", "to the right of": the first-named object is the second along the axis
    rows = [
        [COLOUR_NAMES.index(obj.colour) if obj.colour_named else UNKNOWN, SHAPES.index(obj.shape),
         tuple(SIZES).index(obj.size)]
        for obj in objects
    ]
    return rows + [unknown] * (len(LAYOUT_SLOTS) - len(rows))


class LayoutHead(torch.nn.Module):
    """Reads the layout slots' text states as attribute logits; it trains the text encoder and is not shipped."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(TEXT_HIDDEN_SIZE, sum(LAYOUT_ATTRIBUTES))

    def loss(self, hidden_states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over the known attributes of both slots (summed over attributes), and the share read right.

        Both stay on the device: reading them back every step would wait for the GPU.
        """
        logits = self.linear(hidden_states[:, list(LAYOUT_SLOTS)].float())
        losses, hits, known = [], [], []
        for index, part in enumerate(logits.split(LAYOUT_ATTRIBUTES, dim=-1)):
            target = targets[..., index]
            mask = target != UNKNOWN
            count = mask.sum().clamp(min=1)
            error = F.cross_entropy(part.flatten(0, 1), target.flatten(), ignore_index=UNKNOWN, reduction="sum")
            losses.append(error / count)
            hits.append(((part.argmax(dim=-1) == target) & mask).sum())
            known.append(mask.sum())
        return torch.stack(losses).sum(), torch.stack(hits).sum() / torch.stack(known).sum().clamp(min=1)


def train_vae(args: argparse.Namespace, sampler: SceneSampler, device: torch.device) -> AutoencoderKL:
    vae = build_vae().to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    start = time.monotonic()
    deadline = start + args.vae_seconds
    batches = scene_batches(sampler, args.vae_batch_size)
    step = 0
    while step < args.vae_steps and time.monotonic() < deadline:
        # Cosine decay to a twentieth over the budget: the late, small steps sharpen the outlines.
        progress = min(1.0, (time.monotonic() - start) / args.vae_seconds, step / args.vae_steps)
        for group in optimizer.param_groups:
            group["lr"] = args.vae_lr * (0.525 + 0.475 * math.cos(math.pi * progress))
        images = images_of(next(batches), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            posterior = vae.encode(images).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
        reconstruction = reconstruction.float()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = reconstruction_loss(reconstruction, images) + KL_WEIGHT * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 200 == 0 or step == 1:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.2f}")
    log(f"vae: {step} steps")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def measure_latent_scale(vae: AutoencoderKL, sampler: SceneSampler, device: torch.device) -> float:
    latents = [vae.encode(images_of(sampler.sample_many(128), device)).latent_dist.sample() for _ in range(8)]
    return 1.0 / torch.cat(latents).float().std().item()


def train_decoder_step(
    vae: AutoencoderKL, optimizer: torch.optim.Optimizer, latents: torch.Tensor, images: torch.Tensor,
    device: torch.device,
) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        reconstruction = vae.decode(latents).sample.float()
    loss = reconstruction_loss(reconstruction, images)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def load_component(module: torch.nn.Module, checkpoint: Path, name: str) -> None:
    state = load_file(str(checkpoint / CHECKPOINT_FILES[name]))
    missing, unexpected = module.load_state_dict({key: value.float() for key, value in state.items()}, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{name}: checkpoint does not match the architecture: {missing=} {unexpected=}")


class SaveFunction:
    """Saves the VAE with the averaged UNet and text encoder, and how they were trained."""

    def __init__(
        self, args: argparse.Namespace, vae: AutoencoderKL, latent_scale: float, merges: list[tuple[str, str]]
    ) -> None:
        self.args, self.vae, self.latent_scale, self.merges = args, vae, latent_scale, merges
        self.steps_before = 0
        if args.resume is not None:
            self.steps_before = int(json.loads((args.resume / CHECKPOINT_META).read_text())["diffusion_steps"])

    def __call__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, step: int) -> None:
        meta = {
            "latent_scaling_factor": self.latent_scale,
            "diffusion_steps": self.steps_before + step,
            # The token ids the text encoder learned: export writes this very tokenizer.
            "tokenizer_merges": [list(merge) for merge in self.merges],
            "arguments": {key: str(value) for key, value in vars(self.args).items()},
        }
        save_checkpoint(self.args.out, unet, self.vae, text_encoder, meta)
        log(f"checkpoint at step {step} -> {self.args.out}")


def train_diffusion(
    args: argparse.Namespace,
    vae: AutoencoderKL,
    latent_scale: float,
    tokenizer: CLIPTokenizer,
    sampler: SceneSampler,
    device: torch.device,
    save: SaveFunction,
) -> None:
    unet, text_encoder = build_unet(), build_text_encoder(tokenizer)
    if args.resume is not None:
        # Continues from the averaged weights (the optimiser state is not kept).
        load_component(unet, args.resume, "unet")
        load_component(text_encoder, args.resume, "text_encoder")
    unet, text_encoder = unet.to(device).train(), text_encoder.to(device).train()
    # The decoder may keep learning: the encoder, and so the UNet's latents, stay as they are.
    decoder_parameters = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    decoder_optimizer = (
        torch.optim.AdamW(decoder_parameters, lr=args.vae_lr / 2, weight_decay=0.0) if args.decoder_batch_size else None
    )
    vae.decoder.requires_grad_(decoder_optimizer is not None)
    vae.post_quant_conv.requires_grad_(decoder_optimizer is not None)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text_encoder = copy.deepcopy(text_encoder).requires_grad_(False)
    layout_head = LayoutHead().to(device)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    ema_parameters = list(ema_unet.parameters()) + list(ema_text_encoder.parameters())
    optimizer = torch.optim.AdamW(
        parameters + list(layout_head.parameters()), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01,
        fused=device.type == "cuda",
    )
    noise_schedule = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    alphas_cumprod = noise_schedule.alphas_cumprod.to(device)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    loss_weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # min-SNR-gamma for epsilon prediction

    start = time.monotonic()
    deadline = start + args.diffusion_seconds
    next_save = start + args.checkpoint_seconds
    batches = TokenizedBatches(sampler, tokenizer, args.batch_size)
    step, running_loss, running_layout = 0, 0.0, 0.0
    while step < args.diffusion_steps and time.monotonic() < deadline:
        scenes, ids = next(batches)
        ids = ids.to(device, non_blocking=True)
        targets = torch.tensor([layout_targets(scene) for scene in scenes], dtype=torch.long).to(device)
        images = images_of(scenes, device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            latents = vae.encode(images).latent_dist.sample().float() * latent_scale
        if decoder_optimizer is not None:
            train_decoder_step(vae, decoder_optimizer, latents[: args.decoder_batch_size] / latent_scale,
                               images[: args.decoder_batch_size], device)
        noise = torch.randn_like(latents)
        noise += OFFSET_NOISE * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=device)
        timesteps = torch.randint(0, 1000, (latents.shape[0],), device=device)
        signal = alphas_cumprod[timesteps].sqrt()[:, None, None, None]
        noisy = signal * latents + (1 - signal**2).sqrt() * noise
        # Linear warm-up, then cosine decay to a tenth over the stage's expected length.
        progress = min(1.0, (time.monotonic() - start) / args.diffusion_seconds, step / args.diffusion_steps)
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) * (0.55 + 0.45 * math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            encoder_hidden_states = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        per_sample = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * loss_weight[timesteps]).mean()
        layout_loss, layout_accuracy = layout_head.loss(encoder_hidden_states, targets)
        optimizer.zero_grad(set_to_none=True)
        (loss + args.layout_weight * layout_loss).backward()
        # Apart, so that the layout loss's early large gradients do not shrink the UNet's steps.
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()), 1.0)
        torch.nn.utils.clip_grad_norm_(list(text_encoder.parameters()) + list(layout_head.parameters()), 1.0)
        optimizer.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_parameters, [p.detach() for p in parameters], 1 - decay)
        step += 1
        if step % 50 == 0:
            running_loss += loss.item()
            running_layout += layout_accuracy.item()
        if step % 500 == 0:
            log(f"diffusion step {step} loss {running_loss / 10:.4f} layout read right {running_layout / 10:.3f} "
                f"lr {lr:.2e}")
            running_loss, running_layout = 0.0, 0.0
        if time.monotonic() >= next_save:
            save(ema_unet, ema_text_encoder, step)
            next_save = time.monotonic() + args.checkpoint_seconds
    log(f"diffusion: {step} steps in {time.monotonic() - start:.0f} s")
    save(ema_unet, ema_text_encoder, step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the shapes_sd model from scratch.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vae-seconds", type=float, default=75)
    parser.add_argument("--vae-steps", type=int, default=1_000_000)
    parser.add_argument("--vae-batch-size", type=int, default=64)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--diffusion-seconds", type=float, default=330)
    parser.add_argument("--diffusion-steps", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--checkpoint-seconds", type=float, default=60)
    parser.add_argument("--resume", type=Path, help="checkpoint to continue from: keeps its VAE encoder")
    parser.add_argument("--layout-weight", type=float, default=0.1,
                        help="weight of the text encoder's layout-slot loss (0: none)")
    parser.add_argument("--two-objects", type=float, default=TRAINING_OPTIONS.two_objects,
                        help="share of diffusion scenes with two objects and a relation")
    parser.add_argument("--decoder-batch-size", type=int, default=64,
                        help="images per diffusion step that fine-tune the VAE decoder (0: frozen)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    merges = learn_merges()
    if args.resume is not None:
        merges = [tuple(merge) for merge in json.loads((args.resume / CHECKPOINT_META).read_text())["tokenizer_merges"]]
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_tokenizer(Path(folder), merges)
    log(f"device {device}; tokenizer of {len(tokenizer)} tokens")

    # Separate seeded streams, so that changing one stage's length leaves the other's data alone.
    if args.resume is None:
        vae = train_vae(args, SceneSampler(args.seed), device)
        latent_scale = measure_latent_scale(vae, SceneSampler(args.seed + 1), device)
        diffusion_seed = args.seed + 2
    else:
        vae = build_vae()
        load_component(vae, args.resume, "vae")
        vae = vae.to(device).eval().requires_grad_(False)
        latent_scale = float(json.loads((args.resume / CHECKPOINT_META).read_text())["latent_scaling_factor"])
        diffusion_seed = args.seed + 3  # fresh scenes for the continued run
    log(f"latent scaling factor {latent_scale:.4f}")
    save = SaveFunction(args, vae, latent_scale, merges)
    options = dataclasses.replace(TRAINING_OPTIONS, two_objects=args.two_objects)
    train_diffusion(args, vae, latent_scale, tokenizer, SceneSampler(diffusion_seed, options), device, save)
    return 0


if __name__ == "__main__":
    sys.exit(main())

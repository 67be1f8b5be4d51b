"""The engine's LoRA graphs on the CPU: the engine's runner over padded row buckets (no CUDA graphs
here, the same function on the same buffers), its LoRA sites reading the slot tables, each row
gathering its own adapters. The UNet's outputs equal those of the eager per-row LoRA path (float32)
for one LoRA, four distinct adapter sets and rows with and without LoRAs, on fused QKV projections
in both memory formats and with 3x3 convolutions (an LCM-LoRA's), whether the sites run the layers'
matmuls themselves or add to their outputs; a call gathers the rows' entries once and runs each
layer's matmul once, and the cross-attention key/value projections share one down matmul; mixes the
tables cannot hold run eagerly with the same outputs; requests joining a step batch get their own
images through them."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from sdserve_backend.engine.runners import UNetRunner
from sdserve_backend.engine.static_call import BucketedCall
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, StepBatcher, TextToImagePipeline, load_components
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.lora_layers import ChosenLora, RowBlock
from sdserve_backend.pipelines.lora_library import LoraLibrary
from sdserve_backend.tiny_lora import make_tiny_loras, make_tiny_lcm_lora
from unet_inputs import unet_inputs

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
BUCKETS = (2, 4, 8)
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slot_loras")
    for variant, folder in tiny_model_dirs.items():
        make_tiny_loras(folder, root / variant)
        make_tiny_lcm_lora(folder, root / variant / "tiny_lcm.safetensors")
    return {variant: root / variant for variant in tiny_model_dirs}


def engine_like(tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path], variant: str, channels_last: bool,
                **slot_options: int) -> tuple[DiffusionComponents, UNetRunner, LoraLibrary]:
    """What `engine.prepare` makes on a GPU, on the CPU: fused QKV, the chosen memory format, a
    runner over row buckets (without CUDA graphs), and a LoRA library on it."""
    components = load_components(tiny_model_dirs[variant], torch.device("cpu"), torch.float32)
    unet = components.unet
    unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    runner = UNetRunner(unet, "default")
    example = unet_inputs(components, 1, seed=99)
    with torch.inference_mode():
        runner.calls[tuple(example["sample"].shape[-2:])] = BucketedCall(
            runner.run_captured, example, BUCKETS, use_graphs=False, channels_last=("sample",) if channels_last else ())
    library = LoraLibrary(dataclasses.replace(components, unet=runner), lora_dirs[variant], **slot_options)
    return components, runner, library


def run(runner: UNetRunner, library: LoraLibrary, blocks: list[RowBlock], inputs: dict[str, torch.Tensor],
        graphs: bool = True) -> torch.Tensor:
    """The runner's output for `inputs` with each block's adapters on its rows: through the LoRA
    graphs when `graphs` and the mix fits the slot tables, else eagerly."""
    added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if "text_embeds" in inputs else None
    with torch.inference_mode(), library.unet_call(runner, blocks, graphs=graphs):
        return runner(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                      added_cond_kwargs=added, return_dict=False)[0]


def slot_rows_of_last_call(runner: UNetRunner, rows: int) -> list[int]:
    """The entries the last call through the LoRA graphs copied into its buffer, per row."""
    ((_, call),) = runner.lora_calls.values()
    return call.buffers["lora_slot"][:rows].tolist()


def chosen(library: LoraLibrary, *loras: tuple[str, float]) -> tuple[ChosenLora, ...]:
    return library.choose(tuple(loras))


@pytest.mark.parametrize(("variant", "channels_last", "fold_base", "kept_ones"),
                         [("sd", False, True, True), ("sd", True, True, True), ("sdxl", True, True, True),
                          ("sd", True, False, True), ("sdxl", True, False, True), ("sdxl", True, True, False)])
def test_slot_tables_give_each_row_the_eager_lora_output(variant: str, channels_last: bool, fold_base: bool, kept_ones: bool,
                                                         tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path]) -> None:
    parts, runner, library = engine_like(tiny_model_dirs, lora_dirs, variant, channels_last)
    slots = library.unet_slots()
    assert slots is not None
    slots.fold_base, slots.kept_ones = fold_base, kept_ones
    kohya, peft = chosen(library, ("tiny_kohya", 0.8)), chosen(library, ("tiny_peft", 1.0))
    both = chosen(library, ("tiny_unet_peft", 1.0), ("tiny_peft", -0.5))
    lcm = chosen(library, ("tiny_lcm", 1.0))
    mixes: dict[str, list[RowBlock]] = {
        "one LoRA": [(8, kohya)],
        "four distinct": [(2, kohya), (2, peft), (2, both), (2, chosen(library, ("tiny_kohya", 1.5)))],
        "with and without": [(2, ()), (2, both), (1, ()), (1, lcm)],  # 6 rows: padded to the 8-row bucket
        "3x3 convolutions": [(2, lcm), (2, ())],
    }
    plain_inputs = unet_inputs(parts, 8)
    plain = run(runner, library, [(8, ())], plain_inputs)
    for name, blocks in mixes.items():
        rows = sum(count for count, _ in blocks)
        inputs = {key: tensor[:rows] for key, tensor in plain_inputs.items()}
        expected = run(runner, library, blocks, inputs, graphs=False)
        slotted = run(runner, library, blocks, inputs)

        entries = slot_rows_of_last_call(runner, rows)
        with_lora = [row for row, entry in enumerate(entries) if entry != 0]
        assert with_lora == [row for row, (count, loras) in enumerate(b for b in blocks for _ in range(b[0])) if loras], name
        assert len({entries[row] for row in with_lora}) == len({tuple(loras) for _, loras in blocks if loras}), name
        torch.testing.assert_close(slotted, expected, **TOLERANCE, msg=name)
        for row in range(rows):
            changed = not torch.allclose(expected[row], plain[row], **TOLERANCE)
            assert changed == (row in with_lora), f"{name}: row {row}"


def aten_calls(call: Callable[[], object]) -> Counter[str]:
    """How many times `call` runs each ATen operator."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return Counter({event.key: event.count for event in profile.key_averages() if event.key.startswith("aten::")})


def test_a_call_gathers_once_runs_each_layer_once_and_shares_the_cross_attention_down(
        tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path]) -> None:
    # SDXL's tiny UNet: every site a Linear (linear projections), so every one runs its layer itself.
    parts, runner, library = engine_like(tiny_model_dirs, lora_dirs, "sdxl", True)
    blocks: list[RowBlock] = [(2, chosen(library, ("tiny_kohya", 0.8))), (2, chosen(library, ("tiny_peft", 1.0)))]
    inputs = unet_inputs(parts, 4)
    run(runner, library, blocks, inputs)  # fills the table
    slots = library.unet_slots()
    assert slots is not None
    sites = len(slots.shapes)
    shared = [path for path, shape in slots.shapes.items() if shape.group is not None]
    assert shared and all(path.endswith("attn2.to_kv") for path in shared)
    assert len(shared) == sum(1 for path, _ in parts.unet.named_modules() if path.endswith("attn2.to_kv"))

    plain = aten_calls(lambda: run(runner, library, [(4, ())], inputs))
    slotted = aten_calls(lambda: run(runner, library, blocks, inputs))
    assert slotted["aten::index_select"] - plain["aten::index_select"] == 1, "one gather per call"
    # Per site a down and an up matmul, but one down for all the key/value projections.
    assert slotted["aten::bmm"] - plain["aten::bmm"] == 2 * sites - (len(shared) - 1)
    # Each adapted layer's matmul runs once, accumulating into its update.
    assert slotted["aten::addmm_"] - plain["aten::addmm_"] == sites
    assert plain["aten::linear"] - slotted["aten::linear"] == sites
    # The hiddens' ones against the biases: written once per buffer shape, not per site.
    biased = sum(1 for shape in slots.shapes.values() if shape.carries_bias)
    assert 0 < slotted["aten::fill_"] - plain["aten::fill_"] == len(slots._ones_hidden) < biased


def test_mixes_the_tables_cannot_hold_run_eagerly_with_the_same_outputs(tiny_model_dirs: dict[str, Path],
                                                                         lora_dirs: dict[str, Path]) -> None:
    # Three entries: two adapter sets at most; rank capacity 4 per layer (the tiny LoRAs' own rank).
    parts, runner, library = engine_like(tiny_model_dirs, lora_dirs, "sd", False, slots=3, max_rank=4)
    one, other, third = (chosen(library, (name, 1.0)) for name in ("tiny_kohya", "tiny_peft", "tiny_unet_peft"))
    stacked = chosen(library, ("tiny_kohya", 1.0), ("tiny_peft", 1.0))  # rank 8 side by side
    inputs = unet_inputs(parts, 6)
    slots = library.unet_slots()
    assert slots is not None

    fits = [(2, one), (2, other), (2, ())]
    assert slots.rows(fits) is not None
    torch.testing.assert_close(run(runner, library, fits, inputs), run(runner, library, fits, inputs, graphs=False), **TOLERANCE)
    for blocks in ([(2, one), (2, other), (2, third)], [(3, stacked), (3, ())]):
        assert slots.rows(blocks) is None
        runner.lora_calls.clear()
        torch.testing.assert_close(run(runner, library, blocks, inputs), run(runner, library, blocks, inputs, graphs=False),
                                   **TOLERANCE)
        assert not runner.lora_calls, "the LoRA graphs were not used"


def test_entries_are_reused_and_the_least_recently_used_one_is_refilled(tiny_model_dirs: dict[str, Path],
                                                                        lora_dirs: dict[str, Path]) -> None:
    parts, runner, library = engine_like(tiny_model_dirs, lora_dirs, "sd", False, slots=3)
    slots = library.unet_slots()
    assert slots is not None
    one, other, third = (chosen(library, (name, 1.0)) for name in ("tiny_kohya", "tiny_peft", "tiny_unet_peft"))
    first = slots.rows([(1, one), (1, other)]).tolist()
    assert sorted(first) == [1, 2]
    assert slots.rows([(2, other)]).tolist() == [first[1]] * 2, "a resident adapter keeps its entry"
    # `one` is now the least recently used: `third` takes its entry, and gives the eager outputs.
    blocks: list[RowBlock] = [(1, third), (1, other)]
    assert slots.rows(blocks).tolist() == [first[0], first[1]]
    inputs = unet_inputs(parts, 2)
    torch.testing.assert_close(run(runner, library, blocks, inputs), run(runner, library, blocks, inputs, graphs=False),
                               **TOLERANCE)


def test_the_tables_grow_for_a_higher_rank_and_the_graphs_are_captured_again(tiny_model_dirs: dict[str, Path],
                                                                             lora_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    shutil.copytree(lora_dirs["sd"], folder)
    parts, runner, library = engine_like(tiny_model_dirs, {"sd": folder}, "sd", False)
    inputs = unet_inputs(parts, 2)
    single = [(2, chosen(library, ("tiny_kohya", 1.0)))]
    run(runner, library, single, inputs)
    slots = library.unet_slots()
    assert slots is not None
    first_rank, first_version = slots.rank, slots.version
    ((first_key, _),) = runner.lora_calls.values()

    # Four adapters side by side in one request: rank 16 per layer, past the first capacity of 8.
    wide = [(2, chosen(library, *((name, 0.3) for name in ("tiny_kohya", "tiny_peft", "tiny_unet_peft", "tiny_lcm"))))]
    torch.testing.assert_close(run(runner, library, wide, inputs), run(runner, library, wide, inputs, graphs=False), **TOLERANCE)
    assert (first_rank, slots.rank) == (8, 16)
    assert slots.version > first_version
    # The bias-column buffers of the old capacity are gone with its graphs
    kept_ranks = {key[3] for key in slots._ones_hidden}
    assert kept_ranks and all(rank % slots.rank == 0 and rank >= slots.rank for rank in kept_ranks), kept_ranks
    ((key, _),) = runner.lora_calls.values()
    assert key != first_key, "the graphs on the old tables were replaced"
    torch.testing.assert_close(run(runner, library, single, inputs), run(runner, library, single, inputs, graphs=False),
                               **TOLERANCE)


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_requests_with_different_loras_joining_a_step_batch_run_in_the_lora_graphs(
        variant: str, tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path]) -> None:
    """Through the pipeline and its step batcher on the engine-like runner: requests with different
    LoRAs (or none) join one batch, its UNet calls run in the LoRA graphs, and each gets the image
    the plain pipeline (no engine, the eager LoRA path) gives it alone."""
    settings = GenerationSettings(64, 64, 3, 7.5)
    plain = TextToImagePipeline(load_components(tiny_model_dirs[variant], torch.device("cpu"), torch.float32),
                                lora_dir=lora_dirs[variant])
    parts, runner, _ = engine_like(tiny_model_dirs, lora_dirs, variant, channels_last=variant == "sdxl")
    latent = settings.height // parts.vae_scale_factor
    example = {name: tensor[:, :, :latent, :latent] if name == "sample" else tensor
               for name, tensor in unet_inputs(parts, 1, seed=99).items()}
    with torch.inference_mode():
        runner.calls[(latent, latent)] = BucketedCall(runner.run_captured, example, BUCKETS, use_graphs=False)
    engine = TextToImagePipeline(dataclasses.replace(parts, unet=runner), lora_dir=lora_dirs[variant])
    mixes = [(), (("tiny_kohya", 0.8),), (("tiny_unet_peft", 1.0), ("tiny_lcm", 0.5)), (("tiny_peft", 1.2),)]

    def requests(pipeline: TextToImagePipeline) -> list[GenerationRequest]:
        return [GenerationRequest(prompts=["a photo of the cat"], seed=seed, loras=pipeline.loras.choose(loras))
                for seed, loras in enumerate(mixes)]

    alone = [plain([one], settings)[0] for one in requests(plain)]
    batcher = StepBatcher(engine, max_images=4)
    try:
        outcomes: list[Future[np.ndarray]] = []
        for one in requests(engine):
            outcome: Future[np.ndarray] = Future()
            outcomes.append(outcome)
            batcher.submit(one, settings, outcome.set_result)
        stepped = [outcome.result(timeout=TIMEOUT_S) for outcome in outcomes]
        trace = batcher.trace()
    finally:
        batcher.close()

    assert max(len(record.members) for record in trace) == len(mixes), "one UNet call held all four requests"
    assert (latent, latent) in runner.lora_calls, "the LoRA rows ran in the LoRA graphs"
    for expected, image in zip(alone, stepped, strict=True):
        assert not isinstance(image, Exception)
        assert int(np.abs(image.astype(np.int16) - expected.astype(np.int16)).max()) <= 1


def test_lora_rows_run_eagerly_when_the_lora_graphs_find_no_memory(tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU out of memory while capturing, which the CPU cannot run out of.
    def out_of_memory(self: BucketedCall) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    parts, runner, library = engine_like(tiny_model_dirs, lora_dirs, "sd", False)
    blocks: list[RowBlock] = [(2, chosen(library, ("tiny_kohya", 1.0))), (2, ())]
    inputs = unet_inputs(parts, 4)
    with monkeypatch.context() as patch:
        patch.setattr(BucketedCall, "capture", out_of_memory)
        slotted = run(runner, library, blocks, inputs)
    assert [call for _, call in runner.lora_calls.values()] == [None]
    torch.testing.assert_close(slotted, run(runner, library, blocks, inputs, graphs=False), **TOLERANCE)
    run(runner, library, blocks, inputs)
    assert [call for _, call in runner.lora_calls.values()] == [None], "no second try on the same tables"

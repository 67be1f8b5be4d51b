"""training/: the scene generator, the learned tokenizer and the checker, without any model."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPTokenizer

from sdserve_server import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT))  # the training package
from training.checker import Score, analyse, score  # noqa: E402
from training.evaluate import held_out_scenes, to_uint8  # noqa: E402
from training.render import render_scenes  # noqa: E402
from training.scenes import SceneOptions, SceneSampler, is_held_out, scene_for_caption  # noqa: E402
from training.tokenizer import MAX_LENGTH, learn_merges, write_tokenizer  # noqa: E402
from training.train import (  # noqa: E402
    LAYOUT_SLOTS,
    UNKNOWN,
    LayoutHead,
    TokenizedBatches,
    edge_weights,
    layout_targets,
)
from training.vocabulary import CAPTION_WORDS, COLOUR_NAMES, SHAPES, SIZES  # noqa: E402

SHIPPED_TOKENIZER = PROJECT_ROOT / "model_repository" / "shapes_sd" / "1" / "tokenizer"


def test_the_same_seed_draws_the_same_scenes_and_images() -> None:
    first, again, other = (SceneSampler(seed).sample_many(32) for seed in (5, 5, 6))
    assert [scene.caption for scene in first] == [scene.caption for scene in again]
    assert [scene.caption for scene in first] != [scene.caption for scene in other]
    np.testing.assert_array_equal(render_scenes(first[:4], 64).numpy(), render_scenes(again[:4], 64).numpy())


def test_training_never_sees_a_held_out_caption_and_evaluation_sees_only_those() -> None:
    training = SceneSampler(0).sample_many(2000)
    assert not any(is_held_out(scene.caption) for scene in training if scene.is_full_description)
    assert {scene.caption for scene in training} >= {""}  # unconditional captions for guidance
    evaluation = held_out_scenes(50)
    assert all(is_held_out(scene.caption) and scene.background_named for scene in evaluation)


def test_captions_read_as_english() -> None:
    scene = scene_for_caption("circle", "red", "yellow", "small", ("square", "blue", "large"), "above")
    assert scene.caption == "a small red circle above a large blue square on a yellow background"
    assert scene_for_caption("ring", "orange", "orange").caption == "an orange ring on an orange background"
    assert scene_for_caption("star", "green").caption == "a green star"


def test_the_learned_tokenizer_is_the_same_every_time_and_keeps_caption_words_whole(tmp_path: Path) -> None:
    assert learn_merges() == learn_merges()
    for tokenizer in (write_tokenizer(tmp_path), CLIPTokenizer.from_pretrained(SHIPPED_TOKENIZER)):
        for word in CAPTION_WORDS:
            assert tokenizer.tokenize(word) == [word + "</w>"]
        assert len(tokenizer("butterfly in new york, 4k").input_ids) > 2  # other text still encodes


def test_prefetched_training_batches_carry_their_own_captions_token_ids_in_the_samplers_order(
    tmp_path: Path,
) -> None:
    tokenizer = write_tokenizer(tmp_path)
    batches = TokenizedBatches(SceneSampler(3), tokenizer, 16)
    drawn = [next(batches) for _ in range(3)]
    expected = SceneSampler(3).sample_many(48)
    assert [scene.caption for scenes, _ in drawn for scene in scenes] == [scene.caption for scene in expected]
    for scenes, ids in drawn:
        direct = tokenizer([scene.caption for scene in scenes], padding="max_length", max_length=MAX_LENGTH,
                           truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ids, direct)


def test_layout_targets_put_the_object_on_top_or_on_the_left_first() -> None:
    ids = {"red circle small": [COLOUR_NAMES.index("red"), SHAPES.index("circle"), tuple(SIZES).index("small")],
           "blue square large": [COLOUR_NAMES.index("blue"), SHAPES.index("square"), tuple(SIZES).index("large")]}
    for relation, first_slot in (("above", 0), ("below", 1), ("to the left of", 0), ("to the right of", 1)):
        scene = scene_for_caption("circle", "red", "white", "small", ("square", "blue", "large"), relation)
        targets = layout_targets(scene)
        assert targets[first_slot] == ids["red circle small"] and targets[1 - first_slot] == ids["blue square large"]
    alone = layout_targets(scene_for_caption("star", "green"))
    assert alone[0] == [COLOUR_NAMES.index("green"), SHAPES.index("star"), tuple(SIZES).index("medium")]
    assert alone[1] == [UNKNOWN] * 3
    # What the caption does not say is not a target: an omitted colour, a colour-word or empty caption.
    unnamed = SceneSampler(1, SceneOptions(omit_colour=1.0, colour_word_caption=0, empty_caption=0)).sample()
    assert all(row[0] == UNKNOWN for row in layout_targets(unnamed))
    empty = SceneSampler(1, SceneOptions(empty_caption=1.0)).sample()
    assert empty.caption == "" and layout_targets(empty) == [[UNKNOWN] * 3] * 2


def test_the_layout_slots_are_padding_in_the_longest_caption(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path)
    longest = "a small purple diamond to the right of a large orange triangle on an orange background"
    ids = tokenizer(longest, padding="max_length", max_length=MAX_LENGTH).input_ids
    assert all(ids[slot] == tokenizer.eos_token_id for slot in LAYOUT_SLOTS)
    assert ids.index(tokenizer.eos_token_id) < min(LAYOUT_SLOTS)


def test_the_layout_loss_counts_only_known_attributes() -> None:
    head = LayoutHead()
    hidden = torch.randn(3, MAX_LENGTH, head.linear.in_features)
    unknown = torch.full((3, len(LAYOUT_SLOTS), 3), UNKNOWN)
    loss, accuracy = head.loss(hidden, unknown)
    assert loss.item() == 0 and accuracy.item() == 0
    known = unknown.clone()
    known[0, 0] = torch.tensor([1, 2, 0])
    loss, _ = head.loss(hidden, known)
    logits = head.linear(hidden[0, LAYOUT_SLOTS[0]])
    expected = sum(torch.nn.functional.cross_entropy(part[None], torch.tensor([target]))
                   for part, target in zip(logits.split((11, 6, 3)), (1, 2, 0), strict=True))
    assert torch.isclose(loss, expected)


def test_the_reconstruction_loss_weighs_the_outlines_of_shapes() -> None:
    image = render_scenes([scene_for_caption("square", "red", "white")], 64) * 2 - 1
    weights = edge_weights(image)[0, 0]
    assert weights[0, 0] == 1 and weights[32, 32] == 1  # flat background, inside the square
    outline = (weights[32] > 1).nonzero().flatten().tolist()  # a row through the square: its two sides
    assert outline and weights[32, outline[0]] == 5 and outline[-1] - outline[0] > 10


def test_the_checker_reads_exact_renders_of_held_out_scenes() -> None:
    scenes = held_out_scenes(40)
    total = Score()
    for image, scene in zip(to_uint8(render_scenes(scenes, 128)), scenes, strict=True):
        total.add(score(image, scene))
    rates = total.rates()
    assert rates["colour"] == 1.0 and rates["position"] == 1.0 and rates["shape"] >= 0.97, rates


def test_the_checker_finds_each_shape_drawn_alone() -> None:
    for shape in ("circle", "square", "triangle", "star", "ring", "diamond"):
        image = to_uint8(render_scenes([scene_for_caption(shape, "blue", "white", "large")], 128))[0]
        analysis = analyse(image)
        assert analysis.background == "white"
        assert [(obj.colour, obj.shape) for obj in analysis.objects] == [("blue", shape)]

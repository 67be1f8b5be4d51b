"""Procedural scenes of shapes with their captions, seeded and reproducible.

A scene holds one or two objects (shape, colour, size, centre) on a plain background, and a caption
that says what is drawn: "a small red circle above a large blue square on a yellow background".
Attributes the caption leaves out are still drawn (a random colour, the medium size, a white
background), so a short prompt such as "a circle" is a valid request. Some captions are a single
colour word of the scene ("red"), which gives negative prompts such as "red" a meaning, and some
are empty, for classifier-free guidance.

A tenth of the full captions are held out: training never shows them, evaluation uses only them.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from .vocabulary import (
    COLOUR_NAMES,
    DEFAULT_BACKGROUND,
    NAMED_SIZES,
    RELATIONS,
    SHAPES,
    SIZES,
)

HELD_OUT_MODULUS = 10


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    centre_x: float  # fractions of the image side, y downwards
    centre_y: float
    radius: float
    colour_named: bool = True
    size_named: bool = True

    def phrase(self) -> str:
        words: list[str] = []
        if self.size_named and self.size in NAMED_SIZES:
            words.append(self.size)
        if self.colour_named:
            words.append(self.colour)
        words.append(self.shape)
        return " ".join([article(words[0]), *words])


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    relation: str | None = None  # relation of objects[0] to objects[1]
    background_named: bool = True
    # A caption that is not the scene's description: a single colour word, or "" (unconditional).
    override_caption: str | None = None

    @property
    def caption(self) -> str:
        if self.override_caption is not None:
            return self.override_caption
        text = self.objects[0].phrase()
        if self.relation is not None:
            text += f" {self.relation} {self.objects[1].phrase()}"
        if self.background_named:
            text += f" on {article(self.background)} {self.background} background"
        return text

    @property
    def is_full_description(self) -> bool:
        return self.override_caption is None


def article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def is_held_out(caption: str) -> bool:
    """True for the captions evaluation keeps to itself (a fixed tenth, by checksum)."""
    return caption != "" and zlib.crc32(caption.encode()) % HELD_OUT_MODULUS == 0


@dataclass(frozen=True)
class SceneOptions:
    """How often the sampler leaves things out."""

    two_objects: float = 0.5
    omit_colour: float = 0.1
    omit_size: float = 0.4
    omit_background: float = 0.3
    colour_word_caption: float = 0.05
    empty_caption: float = 0.1


TRAINING_OPTIONS = SceneOptions()
# Evaluation names every colour and the background, so each caption fully says what to draw.
EVALUATION_OPTIONS = SceneOptions(
    omit_colour=0.0, omit_background=0.0, colour_word_caption=0.0, empty_caption=0.0
)


class SceneSampler:
    """Draws scenes from a seeded generator: the same seed gives the same sequence."""

    def __init__(self, seed: int, options: SceneOptions = TRAINING_OPTIONS, held_out: bool = False) -> None:
        self.random = random.Random(seed)
        self.options = options
        # False: never a held-out caption (training); True: only held-out captions (evaluation).
        self.held_out = held_out

    def sample(self) -> Scene:
        while True:
            scene = self._draw()
            if scene.is_full_description and is_held_out(scene.caption) != self.held_out:
                continue
            if self.held_out and not scene.is_full_description:
                continue
            return scene

    def sample_many(self, count: int) -> list[Scene]:
        return [self.sample() for _ in range(count)]

    def _draw(self) -> Scene:
        rng, options = self.random, self.options
        background_named = rng.random() >= options.omit_background
        background = rng.choice(COLOUR_NAMES) if background_named else DEFAULT_BACKGROUND
        colours = [name for name in COLOUR_NAMES if name != background]
        rng.shuffle(colours)

        if rng.random() < options.two_objects:
            relation = rng.choice(tuple(RELATIONS))
            axis, order = RELATIONS[relation]
            # The first object sits in one half along the axis, the second in the other half.
            near, far = 0.25 + rng.uniform(-0.02, 0.02), 0.75 + rng.uniform(-0.02, 0.02)
            first_along, second_along = (near, far) if order < 0 else (far, near)
            objects = []
            for along, colour in ((first_along, colours[0]), (second_along, colours[1])):
                across = 0.5 + rng.uniform(-0.12, 0.12)
                x, y = (across, along) if axis == "y" else (along, across)
                objects.append(self._object(colour, x, y))
            scene = Scene(tuple(objects), background, relation, background_named)
        else:
            x, y = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)
            scene = Scene((self._object(colours[0], x, y),), background, None, background_named)

        roll = rng.random()
        if roll < options.empty_caption:
            return Scene(scene.objects, scene.background, scene.relation, scene.background_named, "")
        if roll < options.empty_caption + options.colour_word_caption:
            named = [obj.colour for obj in scene.objects] + ([background] if background_named else [])
            return Scene(scene.objects, scene.background, scene.relation, scene.background_named, rng.choice(named))
        return scene

    def _object(self, colour: str, x: float, y: float) -> SceneObject:
        rng, options = self.random, self.options
        size_named = rng.random() >= options.omit_size
        size = rng.choice(NAMED_SIZES) if size_named else "medium"
        low, high = SIZES[size]
        return SceneObject(
            shape=rng.choice(SHAPES),
            colour=colour,
            size=size,
            centre_x=x,
            centre_y=y,
            radius=rng.uniform(low, high),
            colour_named=rng.random() >= options.omit_colour,
            size_named=size_named,
        )


def scene_for_caption(
    shape: str,
    colour: str,
    background: str = DEFAULT_BACKGROUND,
    size: str = "medium",
    second: tuple[str, str, str] | None = None,
    relation: str | None = None,
) -> Scene:
    """A scene built from caption words alone, centred as the sampler would on average.

    `second` is (shape, colour, size) of the other object when `relation` is given.
    """
    radius = sum(SIZES[size]) / 2
    if second is None or relation is None:
        return Scene((SceneObject(shape, colour, size, 0.5, 0.5, radius, size_named=size != "medium"),), background,
                     background_named=background != DEFAULT_BACKGROUND)
    axis, order = RELATIONS[relation]
    first_along, second_along = (0.25, 0.75) if order < 0 else (0.75, 0.25)
    objects = []
    for along, (obj_shape, obj_colour, obj_size) in ((first_along, (shape, colour, size)), (second_along, second)):
        x, y = (0.5, along) if axis == "y" else (along, 0.5)
        objects.append(SceneObject(obj_shape, obj_colour, obj_size, x, y, sum(SIZES[obj_size]) / 2,
                                   size_named=obj_size != "medium"))
    return Scene(tuple(objects), background, relation, background_named=background != DEFAULT_BACKGROUND)

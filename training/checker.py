"""Scores an image against the scene its caption describes, by rules on the rendered palette.

1. Every pixel takes the name of the nearest palette colour; the background is the most common
   name along the border.
2. Each other colour is an object candidate if it has a solid body: anti-aliased fringes between
   two colours (an orange rim between red and yellow) are thin and vanish when the mask is
   eroded; the object is then its colour's pixels near that body.
3. A candidate's shape comes from its mask: a hollow centre is a ring; otherwise the fill of its
   bounding box (square 1, circle pi/4, diamond and triangle 1/2, star ~0.4), the height at which
   it is widest (a triangle at its base) and whether its bottom splits into two legs (a star).
4. Relations compare the centroids of the two named colours along the relation's axis.

Scores count what the caption says: each named colour (objects and background), each named
shape, and the relation of a two-object caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scenes import Scene
from .vocabulary import COLOUR_NAMES, COLOURS, RELATIONS

_PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)
# An object's body must survive this much erosion (pixels) over at least this share of the image.
BODY_EROSION = 1
MIN_BODY_SHARE = 0.002
# How far past the eroded body the object's own pixels still count (star tips are thin).
SHAPE_REACH = 5


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    area: int
    centre_x: float  # fractions of the image side, y downwards
    centre_y: float
    shape: str


@dataclass(frozen=True)
class Analysis:
    background: str
    objects: tuple[DetectedObject, ...]

    def find(self, colour: str) -> DetectedObject | None:
        return next((obj for obj in self.objects if obj.colour == colour), None)


@dataclass
class Score:
    colour_correct: int = 0
    colour_total: int = 0
    shape_correct: int = 0
    shape_total: int = 0
    position_correct: int = 0
    position_total: int = 0

    def add(self, other: Score) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def rates(self) -> dict[str, float]:
        def rate(correct: int, total: int) -> float:
            return correct / total if total else float("nan")

        return {
            "colour": rate(self.colour_correct, self.colour_total),
            "shape": rate(self.shape_correct, self.shape_total),
            "position": rate(self.position_correct, self.position_total),
        }


def colour_names(image: np.ndarray) -> np.ndarray:
    """[H, W] indices into COLOUR_NAMES: each pixel's nearest palette colour."""
    pixels = image.astype(np.float32)
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    padded = np.pad(mask, radius, constant_values=False)
    height, width = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out &= padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~_erode(~mask, radius)


def classify_shape(mask: np.ndarray) -> str:
    """The shape name of a boolean mask holding one object."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = mask[top:bottom, left:right]
    height, width = box.shape
    fill = box.mean()
    centre = box[int(height * 0.4) : max(int(height * 0.6), int(height * 0.4) + 1),
                 int(width * 0.4) : max(int(width * 0.6), int(width * 0.4) + 1)]
    if centre.mean() < 0.3:
        return "ring"
    if fill > 0.88:
        return "square"
    if fill > 0.66:
        return "circle"
    widths = box.sum(axis=1)
    widest_rows = np.nonzero(widths >= 0.95 * widths.max())[0]
    widest_at = (widest_rows.mean() + 0.5) / height
    if widest_at > 0.7:
        return "triangle"
    # A star stands on two legs: its row near the bottom crosses the mask twice.
    leg_row = box[min(height - 1, int(height * 0.88))]
    runs = int(leg_row[0]) + int(np.count_nonzero(leg_row[1:] & ~leg_row[:-1]))
    if runs >= 2 or fill < 0.44:
        return "star"
    return "diamond"


def analyse(image: np.ndarray) -> Analysis:
    """What the checker sees in an [H, W, 3] uint8 image."""
    names = colour_names(image)
    height, width = names.shape
    border = np.concatenate([names[0], names[-1], names[:, 0], names[:, -1]])
    background_index = int(np.bincount(border, minlength=len(COLOUR_NAMES)).argmax())
    objects = []
    for index, colour in enumerate(COLOUR_NAMES):
        if index == background_index:
            continue
        mask = names == index
        if mask.sum() < MIN_BODY_SHARE * height * width:
            continue
        body = _erode(mask, BODY_EROSION)
        if body.sum() < MIN_BODY_SHARE * height * width:
            continue
        # The shape of what stands out once the thin fringes are gone.
        solid = _dilate(body, SHAPE_REACH) & mask
        rows, cols = np.nonzero(solid)
        objects.append(
            DetectedObject(
                colour=colour,
                area=int(solid.sum()),
                centre_x=float((cols.mean() + 0.5) / width),
                centre_y=float((rows.mean() + 0.5) / height),
                shape=classify_shape(solid),
            )
        )
    objects.sort(key=lambda obj: -obj.area)
    return Analysis(COLOUR_NAMES[background_index], tuple(objects))


def score(image: np.ndarray, scene: Scene) -> Score:
    """How much of what `scene`'s caption says is true of `image`."""
    analysis = analyse(image)
    result = Score()
    if scene.background_named:
        result.colour_total += 1
        result.colour_correct += analysis.background == scene.background
    found = []
    for obj in scene.objects:
        detected = analysis.find(obj.colour) if obj.colour_named else None
        found.append(detected)
        if obj.colour_named:
            result.colour_total += 1
            result.colour_correct += detected is not None
        result.shape_total += 1
        if detected is None and not obj.colour_named:
            # Unnamed colour: any object of the right shape will do.
            result.shape_correct += any(candidate.shape == obj.shape for candidate in analysis.objects)
        else:
            result.shape_correct += detected is not None and detected.shape == obj.shape
    if scene.relation is not None:
        result.position_total += 1
        first, second = found
        if first is not None and second is not None:
            axis, order = RELATIONS[scene.relation]
            delta = (first.centre_y - second.centre_y) if axis == "y" else (first.centre_x - second.centre_x)
            result.position_correct += delta * order > 0
    return result


@dataclass
class ScoreTable:
    """Scores added up over many images."""

    total: Score = field(default_factory=Score)
    images: int = 0

    def add(self, image: np.ndarray, scene: Scene) -> None:
        self.total.add(score(image, scene))
        self.images += 1

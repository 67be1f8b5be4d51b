"""The words the scene captions use, and what each one means when drawn."""

from __future__ import annotations

# Named colours, far enough apart in RGB that a pixel's nearest name is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 20),
    "green": (30, 170, 60),
    "blue": (30, 80, 230),
    "purple": (140, 50, 190),
    "pink": (255, 120, 200),
    "brown": (130, 80, 30),
    "white": (255, 255, 255),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "diamond")

# Radius of the shape's circumscribed circle, as a fraction of the image side: (low, high).
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.12),
    "medium": (0.15, 0.17),
    "large": (0.19, 0.21),
}
# "medium" is what an object without a size word gets; captions never say it.
NAMED_SIZES: tuple[str, ...] = ("small", "large")

# Relation words -> which object comes first along which axis ("y" grows downwards).
RELATIONS: dict[str, tuple[str, int]] = {
    "above": ("y", -1),
    "below": ("y", 1),
    "to the left of": ("x", -1),
    "to the right of": ("x", 1),
}

DEFAULT_BACKGROUND = "white"

# Every word a caption can contain, for the tokenizer.
CAPTION_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(COLOUR_NAMES)
        | set(SHAPES)
        | set(NAMED_SIZES)
        | {word for relation in RELATIONS for word in relation.split()}
        | {"a", "an", "on", "background"}
    )
)

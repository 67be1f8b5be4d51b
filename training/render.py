"""Draws batches of scenes as images with torch, on any device.

Each shape is a signed distance function of the point (in units of the object's radius, y
downwards); coverage is the signed distance turned into a one-pixel anti-aliased edge. Every
object's shape is evaluated for all shape kinds and the right one picked, so a whole batch draws
in a handful of tensor operations, fast enough to make training data on the fly on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .scenes import Scene
from .vocabulary import COLOURS, SHAPES

MAX_OBJECTS = 2
STAR_INNER_RADIUS = 0.45
RING_INNER_RADIUS = 0.55
SQUARE_HALF_SIDE = 0.8


def _circle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y) - 1.0


def _square(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x.abs(), y.abs()) - SQUARE_HALF_SIDE


def _triangle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Equilateral, apex up, circumradius 1, moved down by a quarter so its box is centred.
    y = y - 0.25
    edges = torch.stack([y, 0.5 * math.sqrt(3) * x - 0.5 * y, -0.5 * math.sqrt(3) * x - 0.5 * y])
    return edges.amax(dim=0) - 0.5


def _star(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Five points, one up: fold the angle into the half-sector between a tip and an inner corner,
    # where the outline is the straight edge from the tip (1, 0) to the inner corner.
    sector = 2 * math.pi / 5
    angle = torch.remainder(torch.atan2(x, -y), sector)
    angle = torch.minimum(angle, sector - angle)
    distance = torch.sqrt(x * x + y * y)
    px, py = distance * torch.cos(angle), distance * torch.sin(angle)
    inner_x, inner_y = STAR_INNER_RADIUS * math.cos(sector / 2), STAR_INNER_RADIUS * math.sin(sector / 2)
    edge_x, edge_y = inner_x - 1.0, inner_y
    length = math.hypot(edge_x, edge_y)
    normal_x, normal_y = edge_y / length, -edge_x / length  # points away from the centre
    return (px - 1.0) * normal_x + py * normal_y


def _ring(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    middle, half_width = (1.0 + RING_INNER_RADIUS) / 2, (1.0 - RING_INNER_RADIUS) / 2
    return (torch.sqrt(x * x + y * y) - middle).abs() - half_width


def _diamond(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.abs() + y.abs() - 1.0) / math.sqrt(2)


_DISTANCES = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "ring": _ring,
    "diamond": _diamond,
}
assert tuple(_DISTANCES) == SHAPES


def render_scenes(scenes: Sequence[Scene], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The scenes as a float tensor [N, 3, size, size] with values in [0, 1]."""
    shapes: list[list[int]] = []
    geometries: list[list[tuple[float, float, float]]] = []
    colours: list[list[tuple[int, int, int]]] = []
    presence: list[list[float]] = []
    backgrounds: list[tuple[int, int, int]] = []
    for scene in scenes:
        backgrounds.append(COLOURS[scene.background])
        rows = [(SHAPES.index(obj.shape), (obj.centre_x, obj.centre_y, obj.radius), COLOURS[obj.colour], 1.0)
                for obj in scene.objects]
        # Absent objects keep a harmless radius and zero presence.
        rows += [(0, (0.5, 0.5, 1.0), (0, 0, 0), 0.0)] * (MAX_OBJECTS - len(rows))
        shapes.append([row[0] for row in rows])
        geometries.append([row[1] for row in rows])
        colours.append([row[2] for row in rows])
        presence.append([row[3] for row in rows])
    return render_tensors(
        torch.tensor(shapes, dtype=torch.long, device=device),
        torch.tensor(geometries, dtype=torch.float32, device=device),
        torch.tensor(colours, dtype=torch.float32, device=device) / 255.0,
        torch.tensor(presence, dtype=torch.float32, device=device),
        torch.tensor(backgrounds, dtype=torch.float32, device=device) / 255.0,
        size,
    )


def render_tensors(
    shape_index: torch.Tensor,
    geometry: torch.Tensor,
    colour: torch.Tensor,
    present: torch.Tensor,
    background: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Draws [N, MAX_OBJECTS] objects over [N, 3] backgrounds; see `render_scenes`."""
    device = geometry.device
    # Pixel centres in fractions of the side.
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    image = background[:, :, None, None].expand(-1, -1, size, size).clone()
    for slot in range(shape_index.shape[1]):
        centre_x = geometry[:, slot, 0, None, None]
        centre_y = geometry[:, slot, 1, None, None]
        radius = geometry[:, slot, 2, None, None]
        x = (grid_x - centre_x) / radius
        y = (grid_y - centre_y) / radius
        distances = torch.stack([distance(x, y) for distance in _DISTANCES.values()], dim=1)  # [N, S, H, W]
        chosen = distances.gather(1, shape_index[:, slot, None, None, None].expand(-1, 1, size, size))[:, 0]
        # Signed distance in pixels -> coverage with a one-pixel ramp.
        coverage = (0.5 - chosen * radius * size).clamp(0.0, 1.0) * present[:, slot, None, None]
        image = image * (1 - coverage[:, None]) + colour[:, slot, :, None, None] * coverage[:, None]
    return image

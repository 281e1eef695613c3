"""A procedural image-classification dataset: rendered shapes, deterministic by seed.

It needs no download, so the main command works offline on a fresh machine,
and it is hard enough (colour, size, position, rotation, background, noise and
clutter all vary) that accuracy numbers mean something.
"""

import math

import cv2
import numpy as np
from torch.utils.data import Dataset

CLASSES = ("circle", "ring", "triangle", "square", "hexagon", "star", "cross", "crescent")


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> np.ndarray:
    n = len(radii)
    theta = angle + np.arange(n) * 2 * math.pi / n
    return np.stack([cx + np.array(radii) * np.cos(theta), cy + np.array(radii) * np.sin(theta)], 1)


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[np.ndarray]:
    if shape == "triangle":
        return [_polygon(cx, cy, [r] * 3, angle)]
    if shape == "square":
        return [_polygon(cx, cy, [r] * 4, angle)]
    if shape == "hexagon":
        return [_polygon(cx, cy, [r] * 6, angle)]
    if shape == "star":
        return [_polygon(cx, cy, [r, 0.45 * r] * 5, angle)]
    if shape == "cross":
        arm = 0.35 * r
        pts = np.array(
            [
                (-arm, -r),
                (arm, -r),
                (arm, -arm),
                (r, -arm),
                (r, arm),
                (arm, arm),
                (arm, r),
                (-arm, r),
                (-arm, arm),
                (-r, arm),
                (-r, -arm),
                (-arm, -arm),
            ]
        )
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        return [pts @ rot.T + (cx, cy)]
    circle = _polygon(cx, cy, [r] * 48, 0)
    if shape == "circle":
        return [circle]
    if shape == "ring":
        return [circle, _polygon(cx, cy, [0.55 * r] * 48, 0)]
    if shape == "crescent":
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        return [circle, _polygon(cx + dx, cy + dy, [0.85 * r] * 48, 0)]
    raise ValueError(f"unknown shape {shape!r}")


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).sum() > 200:
            return colour
    return 255 - background


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One uint8 RGB image of ``CLASSES[label]`` with random appearance drawn from ``rng``."""
    base, tint = rng.integers(0, 256, 3), rng.integers(-60, 61, 3)
    ramp = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, size)[None, :, None]
    image = np.clip(base + ramp * tint, 0, 255).astype(np.uint8) * np.ones((size, size, 1), np.uint8)
    for _ in range(rng.integers(0, 4)):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        cv2.line(
            image,
            tuple(map(int, p1)),
            tuple(map(int, p2)),
            tuple(map(int, rng.integers(0, 256, 3))),
            int(rng.integers(1, 3)),
            cv2.LINE_AA,
        )
    r = size * rng.uniform(0.18, 0.42)
    cx, cy = rng.uniform(r, size - r, 2)
    contours = _outline(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi))
    colour = tuple(map(int, _contrasting_colour(rng, base)))
    background = image.copy()
    cv2.fillPoly(image, [np.round(contours[0] * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
    if len(contours) > 1:  # cut the hole back to the background
        hole = np.zeros((size, size), np.uint8)
        cv2.fillPoly(hole, [np.round(contours[1] * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        alpha = hole[..., None] / 255.0
        image = (alpha * background + (1 - alpha) * image).astype(np.uint8)
    noise = rng.normal(0, rng.uniform(0, 12), image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


class ProceduralShapes(Dataset):
    """``length`` images rendered on the fly; item ``i`` of a split is the same for a given seed."""

    classes = CLASSES

    def __init__(self, length: int, seed: int = 0, split: str = "train", image_size: int = 96, transform=None):
        self.length, self.image_size, self.transform = length, image_size, transform
        self._seed = [seed, {"train": 0, "val": 1, "test": 2}[split]]

    def __len__(self) -> int:
        return self.length

    def image(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng(self._seed + [index])
        label = int(rng.integers(len(CLASSES)))
        return render(label, rng, self.image_size), label

    def __getitem__(self, index: int):
        image, label = self.image(index)
        return (self.transform(image) if self.transform else image), label

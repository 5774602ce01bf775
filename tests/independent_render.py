"""A second drawing routine for shapes-world scenes, independent of ``shapes.render`` and of the
autoencoders' training generators: the autoencoder round-trip test draws its scenes with it.

It differs where a renderer may differ: every colour (background included) jittered by up to +-18 levels
per channel, objects drawn at 0.22 / 0.36 of the side (the world draws 0.26 / 0.40), a 4x canvas brought
down with a Lanczos filter (sharper edges with slight ringing, where the world box-filters).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from t2istudy.world.shapes import BACKGROUNDS, PALETTE, Scene

JITTER = 18  # levels per channel, either way
SIDES = {"small": 0.22, "large": 0.36}  # full side of an object's box, as a fraction of the image side
CANVAS = 4  # supersampling factor


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    moved = np.asarray(rgb) + rng.integers(-JITTER, JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(moved, 0, 255))


def draw_independent(scene: Scene, rng: np.random.Generator, resolution: int = 32) -> np.ndarray:
    """uint8 [resolution, resolution, 3]: ``scene`` with jittered colours, other sizes, Lanczos edges."""
    big = resolution * CANVAS
    canvas = Image.new("RGB", (big, big), _jitter(BACKGROUNDS[scene.background], rng))
    pen = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        half = SIDES[obj.size_word] * big / 2
        cx, cy = obj.x * big, obj.y * big
        left, top, right, bottom = cx - half, cy - half, cx + half, cy + half
        colour = _jitter(PALETTE[obj.color], rng)
        if obj.shape == "square":
            pen.polygon([(left, top), (right, top), (right, bottom), (left, bottom)], fill=colour)
        elif obj.shape == "circle":
            pen.ellipse([left, top, right, bottom], fill=colour)
        else:  # apex up, base on the box's bottom edge
            pen.polygon([(cx, top), (right, bottom), (left, bottom)], fill=colour)
    return np.asarray(canvas.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.uint8)

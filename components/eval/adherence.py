"""Prompt adherence on the synthetic shapes: does a generated video show what its caption names?

A shapes caption ("a red circle moves slowly left on a dark blue background", `components.data.synth`)
names a background colour, an object colour, a shape, a speed and a direction. Three of them can be read
back from pixels by a program, robustly enough for blurry 64-px generations:

- background: the per-pixel median over time (a moving object leaves it), then the median of the frame,
  nearest palette colour in CIELAB;
- object colour: the pixels farthest from that background (the top `object_fraction` of each frame, so
  a blurred object still contributes its core), their median colour, nearest palette colour in CIELAB;
- direction: the shift of the "objectness" map (distance from the background) between consecutive frames
  by phase correlation, summed over the clip; the larger axis and its sign. Phase correlation assumes a
  circular shift, which is exactly how synth moves a shape (the frame is a torus), so a shape wrapping
  round an edge does not flip the estimate.

Accuracy per attribute is reported against chance (one over the number of choices), and against a control:
the same videos scored against a derangement of the prompts, which must land near chance. If it does not,
the reader, not the model, is what scores (a reader that always answers "black" would look good on
prompts that are mostly black).

Frames are RGB uint8 (T, H, W, 3), as the sampler returns them; synth's palettes are BGR (OpenCV's order),
reversed here once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache

import cv2
import numpy as np

from components.data.synth import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEEDS

ATTRIBUTES = ("background", "colour", "direction")  # what the reader reads back
CHANCE = {"background": 1 / len(BACKGROUNDS), "colour": 1 / len(COLOURS), "direction": 1 / len(DIRECTIONS)}

_CAPTION = re.compile(
    rf"a (?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) moves (?P<speed>{'|'.join(SPEEDS)}) "
    rf"(?P<direction>{'|'.join(DIRECTIONS)}) on an? (?P<background>{'|'.join(BACKGROUNDS)}) background")


@dataclass(frozen=True)
class ShapesCaption:
    colour: str
    shape: str
    speed: str
    direction: str
    background: str

    def text(self) -> str:
        """The caption exactly as synth writes it."""
        return (f"a {self.colour} {self.shape} moves {self.speed} {self.direction} "
                f"on a {self.background} background")


def parse_caption(caption: str) -> ShapesCaption:
    """The attributes a shapes caption names; ValueError for any other caption."""
    found = _CAPTION.fullmatch(caption.strip().lower().rstrip("."))
    if found is None:
        raise ValueError(f"not a synthetic shapes caption: {caption!r}")
    return ShapesCaption(**found.groupdict())


@dataclass(frozen=True)
class Reading:
    """What the reader saw in one video, with the evidence behind each answer."""

    background: str
    colour: str
    direction: str
    background_rgb: tuple[int, int, int]
    object_rgb: tuple[int, int, int]
    object_contrast: float  # mean CIELAB distance of the object pixels from the background
    shift: tuple[float, float]  # summed (dx, dy) in pixels; +x right, +y down


@cache
def _palette_lab(name: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Names and CIELAB values (float, L in 0..100) of a synth palette."""
    palette = BACKGROUNDS if name == "background" else COLOURS
    names = tuple(palette)
    rgb = np.array([palette[n][::-1] for n in names], dtype=np.float32)[None] / 255  # BGR -> RGB, (1, K, 3)
    return names, cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[0]  # (K, 3)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB uint8 -> (..., 3) float32 CIELAB."""
    flat = rgb.reshape(1, -1, 3).astype(np.float32) / 255
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(rgb.shape)


def _nearest(palette: str, lab: np.ndarray) -> str:
    names, values = _palette_lab(palette)
    return names[int(np.argmin(np.linalg.norm(values - lab[None], axis=1)))]


def read_video(frames: np.ndarray, object_fraction: float = 0.01) -> Reading:
    """Read background colour, object colour and direction of motion from RGB uint8 frames (T, H, W, 3)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    num_frames, height, width, _ = frames.shape
    lab = _lab(frames)  # (T, H, W, 3)
    background_lab = np.median(np.median(lab, axis=0).reshape(-1, 3), axis=0)  # (3,)
    distance = np.linalg.norm(lab - background_lab, axis=-1)  # (T, H, W): how unlike the background
    count = max(1, int(round(object_fraction * height * width)))
    flat = distance.reshape(num_frames, -1)
    top = np.argpartition(flat, -count, axis=1)[:, -count:]  # (T, count) the most object-like pixels
    object_pixels = lab.reshape(num_frames, -1, 3)[np.arange(num_frames)[:, None], top].reshape(-1, 3)
    object_lab = np.median(object_pixels, axis=0)
    dx, dy = _summed_shift(distance)
    direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    return Reading(
        background=_nearest("background", background_lab), colour=_nearest("colour", object_lab),
        direction=direction, background_rgb=_rgb(background_lab), object_rgb=_rgb(object_lab),
        object_contrast=float(np.take_along_axis(flat, top, axis=1).mean()), shift=(dx, dy))


def _summed_shift(objectness: np.ndarray) -> tuple[float, float]:
    """Sum over consecutive frames of the phase-correlation shift of `objectness` (T, H, W)."""
    maps = objectness.astype(np.float64)
    maps -= maps.mean(axis=(1, 2), keepdims=True)  # no DC term: only the object's position matters
    total = np.zeros(2)
    for before, after in zip(maps[:-1], maps[1:], strict=True):
        (dx, dy), _ = cv2.phaseCorrelate(before, after)
        total += (dx, dy)
    return float(total[0]), float(total[1])


def _rgb(lab: np.ndarray) -> tuple[int, int, int]:
    rgb = cv2.cvtColor(lab.reshape(1, 1, 3).astype(np.float32), cv2.COLOR_LAB2RGB).reshape(3)
    return tuple(int(v) for v in np.clip(np.round(rgb * 255), 0, 255))


def derangement(count: int, seed: int) -> list[int]:
    """A seeded permutation of range(count) with no fixed point (count >= 2): prompt i is scored as j != i."""
    if count < 2:
        raise ValueError(f"a shuffled control needs at least 2 videos, got {count}")
    rng = np.random.default_rng(seed)
    while True:  # about e tries on average
        order = rng.permutation(count)
        if not np.any(order == np.arange(count)):
            return [int(i) for i in order]


def accuracy(readings: Sequence[Reading], captions: Sequence[ShapesCaption]) -> dict[str, float]:
    """Share of videos whose reading matches the caption, per attribute."""
    if len(readings) != len(captions) or not readings:
        raise ValueError(f"{len(readings)} readings for {len(captions)} captions")
    pairs = list(zip(readings, captions, strict=True))
    return {name: float(np.mean([getattr(r, name) == getattr(c, name) for r, c in pairs])) for name in ATTRIBUTES}


def score_videos(videos: Sequence[np.ndarray], prompts: Sequence[str], control_seed: int = 0,
                 object_fraction: float = 0.01) -> dict:
    """Read every video and score it against its prompt and, as the control, against a deranged prompt.

    Returns {"accuracy", "chance", "shuffled", "ratio_to_chance", "videos": [per-video readings]}."""
    captions = [parse_caption(p) for p in prompts]
    readings = [read_video(v, object_fraction) for v in videos]
    order = derangement(len(captions), control_seed)
    scored = accuracy(readings, captions)
    return {
        "accuracy": scored,
        "chance": dict(CHANCE),
        "shuffled": accuracy(readings, [captions[j] for j in order]),
        "ratio_to_chance": {name: scored[name] / CHANCE[name] for name in ATTRIBUTES},
        "videos": [{"prompt": p, "shuffled_prompt": prompts[j], **asdict(r),
                    "correct": {name: getattr(r, name) == getattr(c, name) for name in ATTRIBUTES}}
                   for p, r, c, j in zip(prompts, readings, captions, order, strict=True)],
    }

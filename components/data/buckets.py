"""Buckets: (frames, height, width) targets, and which bucket a clip fits best.

Open-Sora Plan v1.2 resizes every sample to one (max_h, max_w) and groups only by frame count
(reference notes §5.3, §9.21). Here a clip keeps its shape as far as it can: it goes to the bucket of
the nearest aspect ratio, with the most frames and then the largest size it fills without upscaling
past `max_upscale`. A clip that fits nothing gets a reason, which the shard report lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @property
    def aspect(self) -> float:
        return self.height / self.width

    @classmethod
    def from_name(cls, name: str) -> Bucket:
        frames, height, width = (int(part) for part in name.split("x"))
        return cls(frames, height, width)


@dataclass(frozen=True)
class ClipShape:
    """What the annotations say about a clip (images have num_frames 1 and no fps)."""

    height: int
    width: int
    num_frames: int
    fps: float | None

    @property
    def is_image(self) -> bool:
        return self.fps is None


def make_buckets(frames: list[int], resolutions: list[tuple[int, int]]) -> list[Bucket]:
    return sorted(Bucket(f, h, w) for f in frames for (h, w) in resolutions)


def resample_indices(num_frames: int, fps: float, train_fps: float) -> np.ndarray:
    """Source frame indices at `train_fps`: one every fps/train_fps source frames (reference notes §5.2)."""
    step = fps / train_fps
    return np.floor(np.arange(0, num_frames, step) + 1e-9).astype(np.int64)[: max(0, math.ceil(num_frames / step))]


def centre_window(indices: np.ndarray, frames: int) -> np.ndarray:
    """The `frames` indices in the middle: deterministic, unlike the reference's off-by-one random crop (§9.12)."""
    assert len(indices) >= frames, (len(indices), frames)
    start = (len(indices) - frames) // 2
    return indices[start : start + frames]


def centre_crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w): the largest centred box of aspect h/w = `aspect`."""
    if height / width > aspect:  # taller than the bucket: crop rows
        crop_h, crop_w = max(1, round(width * aspect)), width
    else:
        crop_h, crop_w = height, max(1, round(height / aspect))
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _aspect_error(a: float, b: float) -> float:
    return max(a / b, b / a)


def assign_bucket(
    clip: ClipShape, buckets: list[Bucket], train_fps: float, max_upscale: float, max_aspect_error: float
) -> tuple[Bucket | None, str | None]:
    """(bucket, None) for the best fit, or (None, reason)."""
    aspect = clip.height / clip.width
    bucket_aspects = sorted({b.aspect for b in buckets})
    nearest = min(bucket_aspects, key=lambda a: _aspect_error(aspect, a))
    if _aspect_error(aspect, nearest) > max_aspect_error:
        return None, (f"aspect h/w {aspect:.3f} is more than {max_aspect_error}x away from every bucket aspect "
                      f"({', '.join(f'{a:.3f}' for a in bucket_aspects)})")
    same_aspect = [b for b in buckets if math.isclose(b.aspect, nearest)]
    if clip.is_image:
        length, by_length = 1, [b for b in same_aspect if b.frames == 1]
        if not by_length:
            return None, "image, but no 1-frame bucket"
    else:
        length = len(resample_indices(clip.num_frames, clip.fps, train_fps))
        by_length = [b for b in same_aspect if 1 < b.frames <= length]
        if not by_length:
            shortest = min((b.frames for b in same_aspect if b.frames > 1), default=None)
            if shortest is None:
                return None, "video, but no video bucket"
            return None, f"too short: {length} frames at {train_fps:g} fps, the shortest bucket needs {shortest}"
    _, _, crop_h, _ = centre_crop_box(clip.height, clip.width, nearest)
    by_size = [b for b in by_length if b.height <= crop_h * max_upscale + 1e-6]
    if not by_size:
        smallest = min(by_length, key=lambda b: b.height)
        return None, (f"too small: {clip.height}x{clip.width} would need upscaling by "
                      f"{smallest.height / crop_h:.2f} > {max_upscale} for {smallest.name}")
    return max(by_size, key=lambda b: (b.frames, b.height * b.width)), None

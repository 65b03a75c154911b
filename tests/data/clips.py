"""A tiny test-clip writer (OpenCV): smooth coloured backgrounds with moving shapes, so PSNR means something.

Writes videos (mp4v) and images (png) of mixed sizes, aspects, frame rates and lengths, plus an
annotations JSON list in Open-Sora Plan's schema (reference notes §5.1) with `path` relative to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class ClipSpec:
    name: str
    height: int
    width: int
    num_frames: int = 1  # 1 with fps None: an image
    fps: float | None = None


# Mixed on purpose: square, landscape and portrait; 8 to 30 fps; images; and three that fit no bucket of the
# tiny preset (too short, too small, too wide).
DEFAULT_SPECS = [
    ClipSpec("sq_long", 72, 72, 60, 24.0),
    ClipSpec("sq_mid", 64, 64, 30, 12.0),
    ClipSpec("sq_short", 80, 80, 12, 8.0),
    ClipSpec("land_a", 54, 96, 48, 24.0),
    ClipSpec("land_b", 60, 100, 20, 10.0),
    ClipSpec("land_c", 48, 80, 40, 25.0),
    ClipSpec("port_a", 96, 56, 36, 12.0),
    ClipSpec("port_b", 80, 48, 70, 30.0),
    ClipSpec("img_sq", 64, 64),
    ClipSpec("img_land", 50, 82),
    ClipSpec("img_port", 90, 54),
    ClipSpec("bad_short", 64, 64, 4, 24.0),
    ClipSpec("bad_small", 32, 32, 40, 24.0),
    ClipSpec("bad_wide", 40, 160, 40, 24.0),
]


def render(spec: ClipSpec, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: a smooth gradient with a disc and a square that move with time."""
    rng = np.random.default_rng(seed)
    phase, hue = rng.uniform(0, 2 * np.pi, 3), rng.uniform(40, 215, 3)
    yy, xx = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
    frames = []
    for t in range(spec.num_frames):
        image = np.empty((spec.height, spec.width, 3), np.float32)
        for c in range(3):
            image[..., c] = hue[c] + 35 * np.sin(xx / 17 + phase[c] + t / 5) * np.cos(yy / 13 - t / 7)
        cx = spec.width * (0.3 + 0.4 * np.sin(t / 6 + phase[0]) ** 2)
        cy = spec.height * (0.3 + 0.4 * np.cos(t / 8 + phase[1]) ** 2)
        radius = max(3, min(spec.height, spec.width) // 6)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        image[disc] = 0.6 * image[disc] + 0.4 * np.array([250, 60, 40])
        sx, sy = int(cx / 2 + t) % spec.width, int(spec.height - cy / 2) % spec.height
        image[sy : sy + radius, sx : sx + radius] = 0.5 * image[sy : sy + radius, sx : sx + radius] + 0.5 * np.array([30, 200, 240])
        frames.append(cv2.GaussianBlur(image, (3, 3), 0.8))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: np.ndarray, fps: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fps is None:
        assert cv2.imwrite(str(path), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR)), path
        return
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened(), path
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def write_dataset(root: Path, specs: list[ClipSpec] = DEFAULT_SPECS, seed: int = 0, name: str = "annotations.json") -> Path:
    """Write every clip under `root/videos/` and an annotations list `root/<name>`; returns its path."""
    records = []
    for number, spec in enumerate(specs):
        relative = f"videos/{spec.name}.{'png' if spec.fps is None else 'mp4'}"
        write_clip(root / relative, render(spec, seed * 1000 + number), spec.fps)
        record = {"path": relative, "cap": [f"a clip called {spec.name}", f"moving shapes {number}"],
                  "resolution": {"height": spec.height, "width": spec.width},
                  "aesthetic": 5.0 + number / 10, "motion": 0.5}
        if spec.fps is not None:
            record |= {"fps": spec.fps, "duration": spec.num_frames / spec.fps, "num_frames": spec.num_frames}
        records.append(record)
    path = root / name
    path.write_text(json.dumps(records, indent=1))
    return path


def many_specs(count: int, seed: int = 0) -> list[ClipSpec]:
    """`count` fitting clips of random shapes (for loader and benchmark data)."""
    rng = np.random.default_rng(seed)
    shapes = [(72, 72), (64, 64), (54, 96), (50, 84), (96, 56), (82, 50)]
    specs = []
    for number in range(count):
        height, width = shapes[rng.integers(len(shapes))]
        if rng.random() < 0.25:
            specs.append(ClipSpec(f"img{number:04d}", height, width))
        else:
            fps = float(rng.choice([8.0, 12.0, 24.0]))
            specs.append(ClipSpec(f"vid{number:04d}", height, width, int(rng.integers(10, 40) * fps / 8), fps))
    return specs

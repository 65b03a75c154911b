"""Synthetic captioned videos whose content a program can check (`t2v data synth`).

`shapes`: a coloured shape moves in one direction at one of two speeds over a tinted background, and the
caption names all of it ("a red circle moves slowly left on a dark blue background"), so a text-to-video
model has something learnable and an evaluator has something checkable. `photos`: camera pans and zooms
over photographs bundled with scikit-image, natural content for VAE evaluation.

Clips vary in size, aspect ratio, frame rate and length (from the preset) so buckets and frame sampling
matter downstream. A share of clips is deliberately bad (see DEFECTS); which ones is recorded in
`ground_truth.json`, never in the annotations, so the filter can be scored against it.

Output folder: `videos/*.mp4` (H.264 yuv420p by default, like real raw datasets; mp4v on request),
`annotations.json` (Open-Sora Plan v1.2 schema, see `components.data.annotations`), `ground_truth.json`,
then `manifest.json` last. Everything is drawn from `numpy.random.default_rng((seed, clip_index))`, so one
seed gives byte-identical annotations and videos (H.264; mp4v: identical decoded frames).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from components.core import lease, manifest, storage, tracking
from components.core.config import config_hash
from components.data.annotations import validate_entry
from components.data.config import SynthConfig, load_data_config
from components.data.video_io import write_h264

log = logging.getLogger(__name__)

KINDS = ("shapes", "photos")
# Deliberate defects, one per bad clip in turn. Each is a different way a scraped clip goes wrong.
DEFECTS = ("static", "blurred", "noisy", "flicker", "too_short", "scene_cut")

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS = {  # BGR, bright: they stand out on every background below
    "red": (40, 40, 230), "green": (60, 210, 60), "blue": (230, 120, 40), "yellow": (40, 220, 240),
    "white": (245, 245, 245), "orange": (20, 140, 255), "magenta": (220, 60, 220), "cyan": (230, 220, 40),
}
BACKGROUNDS = {  # BGR, dark
    "black": (15, 15, 15), "dark blue": (90, 30, 20), "dark green": (25, 70, 20),
    "dark gray": (60, 60, 60), "dark purple": (80, 20, 60), "brown": (20, 45, 90),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = ("slowly", "quickly")

PHOTOS = {  # skimage.data loader name -> what the caption calls it
    "astronaut": "an astronaut", "coffee": "a cup of coffee", "chelsea": "a cat", "rocket": "a rocket launch",
    "immunohistochemistry": "stained tissue under a microscope", "hubble_deep_field": "a field of galaxies",
    "cat": "a cat",
}
CAMERA_MOVES = ("pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out")

_SUBPIXEL_BITS = 4  # cv2 drawing with fractional coordinates: smooth motion at slow speeds


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip, drawn from its own RNG."""

    index: int
    height: int
    width: int
    fps: int
    num_frames: int
    caption: str
    defect: str | None
    scene: dict[str, Any]


# --------------------------------------------------------------------------- planning


def _draw_size(rng: np.random.Generator, config: SynthConfig) -> tuple[int, int]:
    """(height, width): the long side a multiple of 8 in [min_side, max_side], the short one from the ratio."""
    long_sides = np.arange(-(-config.min_side // 8) * 8, config.max_side + 1, 8)
    assert len(long_sides), f"no multiple of 8 in [{config.min_side}, {config.max_side}]"
    long_side = int(rng.choice(long_sides))
    ratio = float(rng.choice(config.aspect_ratios))  # width / height
    short_side = max(8, int(round(long_side / max(ratio, 1 / ratio) / 8)) * 8)
    return (short_side, long_side) if ratio >= 1 else (long_side, short_side)


def _shape_scene(rng: np.random.Generator, height: int, width: int, fps: int, config: SynthConfig) -> dict[str, Any]:
    speed = str(rng.choice(SPEEDS))
    direction = str(rng.choice(list(DIRECTIONS)))
    size = float(rng.uniform(*config.shape_size)) * min(height, width)
    extent = width if DIRECTIONS[direction][0] else height
    pixels_per_second = (config.slow_speed if speed == "slowly" else config.fast_speed) * extent
    return {
        "shape": str(rng.choice(SHAPES)), "colour": str(rng.choice(list(COLOURS))),
        "background": str(rng.choice(list(BACKGROUNDS))), "direction": direction, "speed": speed,
        "size": size, "velocity": pixels_per_second / fps,
        "start": (float(rng.uniform(size, width - size)), float(rng.uniform(size, height - size))),
        "angle": float(rng.uniform(0, 2 * np.pi)),
    }


def _photo_scene(rng: np.random.Generator) -> dict[str, Any]:
    return {"photo": str(rng.choice(list(PHOTOS))), "move": str(rng.choice(CAMERA_MOVES)),
            "speed": str(rng.choice(("slow", "quick"))), "window": float(rng.uniform(0.55, 0.7))}


def _caption(kind: str, scene: dict[str, Any]) -> str:
    if kind == "shapes":
        return (f"a {scene['colour']} {scene['shape']} moves {scene['speed']} {scene['direction']} "
                f"on a {scene['background']} background")
    move = scene["move"]
    preposition = "over" if move.startswith("pan") else "on"
    return f"a {scene['speed']} {move} {preposition} a photograph of {PHOTOS[scene['photo']]}"


def plan_clip(index: int, seed: int, kind: str, config: SynthConfig, defect: str | None) -> ClipPlan:
    rng = np.random.default_rng((seed, index))
    height, width = _draw_size(rng, config)
    fps = int(rng.choice(config.fps_choices))
    num_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
    if defect == "too_short":
        num_frames = config.short_frames
    scene = _shape_scene(rng, height, width, fps, config) if kind == "shapes" else _photo_scene(rng)
    if defect == "scene_cut":  # the second half shows another scene; the caption describes the first
        second = _shape_scene(rng, height, width, fps, config) if kind == "shapes" else _photo_scene(rng)
        if kind == "shapes":  # make the cut unmistakable: another background as well
            second["background"] = next(b for b in BACKGROUNDS if b != scene["background"])
        else:
            second["photo"] = next(p for p in PHOTOS if p != scene["photo"])
        scene = {**scene, "second": second}
    scene["noise_seed"] = int(rng.integers(2**31))
    return ClipPlan(index, height, width, fps, num_frames, _caption(kind, scene), defect, scene)


def assign_defects(num: int, seed: int, bad_fraction: float) -> list[str | None]:
    """Which clips are bad and how: a seeded choice of round(num * bad_fraction) clips, defects in turn."""
    num_bad = int(round(num * bad_fraction))
    bad = np.random.default_rng((seed, 2**20)).permutation(num)[:num_bad]
    defects: list[str | None] = [None] * num
    for turn, index in enumerate(sorted(int(i) for i in bad)):
        defects[index] = DEFECTS[turn % len(DEFECTS)]
    return defects


# --------------------------------------------------------------------------- rendering


def _background(height: int, width: int, name: str) -> np.ndarray:
    """The named colour with a soft vertical gradient (flat frames look nothing like video)."""
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    ramp = np.linspace(1.25, 0.75, height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
    return np.clip(base[None, None, :] * ramp + 10 * (ramp - 1), 0, 255).repeat(width, axis=1)  # (H, W, 3)


def _polygon(shape: str, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    corners = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6, "star": 10}[shape]
    turns = angle + np.arange(corners) * 2 * np.pi / corners
    if shape == "diamond":
        turns = np.pi / 4 + np.arange(corners) * 2 * np.pi / corners
    radii = np.full(corners, radius)
    if shape == "star":
        radii[1::2] *= 0.45
    points = centre[None, :] + radii[:, None] * np.stack([np.cos(turns), np.sin(turns)], axis=1)
    return np.round(points * (1 << _SUBPIXEL_BITS)).astype(np.int32)  # (corners, 2) in 1/16 px


def _draw_shape(frame: np.ndarray, scene: dict[str, Any], t: int) -> None:
    height, width = frame.shape[:2]
    size, colour = scene["size"], COLOURS[scene["colour"]]
    dx, dy = DIRECTIONS[scene["direction"]]
    # The frame is a torus: what leaves one edge comes back in at the other at once (drawn twice while
    # crossing), so motion never stalls and the whole shape is always on screen.
    x = (scene["start"][0] + dx * scene["velocity"] * t) % width
    y = (scene["start"][1] + dy * scene["velocity"] * t) % height
    radius = size / 2
    for shift_x in (-width, 0, width) if dx else (0,):
        for shift_y in (-height, 0, height) if dy else (0,):
            cx, cy = x + shift_x, y + shift_y
            if -radius > cx or cx > width + radius or -radius > cy or cy > height + radius:
                continue
            if scene["shape"] == "circle":
                centre = (int(round(cx * (1 << _SUBPIXEL_BITS))), int(round(cy * (1 << _SUBPIXEL_BITS))))
                cv2.circle(frame, centre, int(round(radius * (1 << _SUBPIXEL_BITS))), colour, -1, cv2.LINE_AA,
                           _SUBPIXEL_BITS)
            else:
                points = _polygon(scene["shape"], np.array([cx, cy]), radius, scene["angle"])
                cv2.fillPoly(frame, [points], colour, cv2.LINE_AA, _SUBPIXEL_BITS)


@dataclass
class _PhotoSource:
    image: np.ndarray  # (H, W, 3) BGR uint8

    @classmethod
    def load(cls, name: str) -> _PhotoSource:
        import skimage.data

        rgb = getattr(skimage.data, name)()
        return cls(np.ascontiguousarray(rgb[..., :3][..., ::-1]))


def _photo_frame(scene: dict[str, Any], t: int, num_frames: int, height: int, width: int,
                 cache: dict[str, _PhotoSource]) -> np.ndarray:
    source = cache.setdefault(scene["photo"], _PhotoSource.load(scene["photo"])).image
    img_h, img_w = source.shape[:2]
    progress = t / max(num_frames - 1, 1)
    amount = 1.0 if scene["speed"] == "quick" else 0.5  # share of the possible travel / zoom
    # Largest window of the output's aspect ratio that fits, scaled by `window`.
    scale = min(img_w / width, img_h / height) * scene["window"]
    move = scene["move"]
    if move.startswith("zoom"):
        zoom = progress if move == "zoom in" else 1 - progress
        scale *= 1 - 0.4 * amount * zoom
    win_w, win_h = width * scale, height * scale
    cx, cy = img_w / 2, img_h / 2
    if move.startswith("pan"):
        travel_x, travel_y = (img_w - win_w) / 2 * amount, (img_h - win_h) / 2 * amount
        offset = 2 * progress - 1  # -1 .. 1
        sign = {"pan left": (-1, 0), "pan right": (1, 0), "pan up": (0, -1), "pan down": (0, 1)}[move]
        cx, cy = cx + sign[0] * travel_x * offset, cy + sign[1] * travel_y * offset
    # Affine crop-and-resize with sub-pixel window positions (a smooth camera, not 1-px jumps).
    matrix = np.array([[1 / scale, 0, width / 2 - cx / scale], [0, 1 / scale, height / 2 - cy / scale]])
    return cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def render_frames(plan: ClipPlan, kind: str, photo_cache: dict[str, _PhotoSource] | None = None):
    """Yield the clip's frames (H, W, 3) BGR uint8, defects applied."""
    photo_cache = {} if photo_cache is None else photo_cache
    noise_rng = np.random.default_rng(plan.scene["noise_seed"])
    for t in range(plan.num_frames):
        scene = plan.scene
        if plan.defect == "scene_cut" and t >= plan.num_frames // 2:
            scene = plan.scene["second"]
        step = 0 if plan.defect == "static" else t
        if kind == "shapes":
            frame = _background(plan.height, plan.width, scene["background"]).astype(np.uint8)
            _draw_shape(frame, scene, step)
        else:
            frame = _photo_frame(scene, step, plan.num_frames, plan.height, plan.width, photo_cache)
        yield _apply_defect(frame, plan.defect, t, noise_rng)


def _apply_defect(frame: np.ndarray, defect: str | None, t: int, rng: np.random.Generator) -> np.ndarray:
    if defect == "blurred":
        sigma = max(3.0, 0.06 * min(frame.shape[:2]))
        return cv2.GaussianBlur(frame, (0, 0), sigma)
    if defect == "noisy":
        noise = rng.normal(0, 50, frame.shape)
        return np.clip(frame + noise, 0, 255).astype(np.uint8)
    if defect == "flicker":  # a light that strobes: every other frame much darker
        gain = 1.0 if t % 2 == 0 else 0.35
        return np.clip(frame * gain, 0, 255).astype(np.uint8)
    return frame


def write_video(path: Path, frames, fps: int, height: int, width: int, config: SynthConfig) -> int:
    """Write BGR frames to `path` in the configured codec; return how many were written. H.264 is
    bit-exact from run to run (`video_io.write_h264` pins libx264), so one seed gives the same bytes."""
    if config.codec == "h264":
        return write_h264(str(path), frames, fps, height, width, crf=config.crf, pix_fmt="yuv420p",
                          preset=config.x264_preset, frame_format="bgr24")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot open an mp4v writer for {path}")
    count = 0
    try:
        for frame in frames:
            assert frame.shape == (height, width, 3) and frame.dtype == np.uint8, frame.shape
            writer.write(frame)
            count += 1
    finally:
        writer.release()
    return count


# --------------------------------------------------------------------------- stage


def _build(folder: Path, num: int, seed: int, kind: str, config: SynthConfig) -> tuple[list[dict], dict]:
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    annotations, ground_truth, photo_cache = [], {}, {}
    for index, defect in enumerate(assign_defects(num, seed, config.bad_fraction)):
        plan = plan_clip(index, seed, kind, config, defect)
        rel_path = f"videos/{kind}_{index:06d}.mp4"
        written = write_video(folder / rel_path, render_frames(plan, kind, photo_cache), plan.fps, plan.height, plan.width,
                              config)
        assert written == plan.num_frames
        entry = {
            "path": rel_path, "cap": plan.caption,
            "resolution": {"height": plan.height, "width": plan.width},
            "fps": plan.fps, "duration": round(plan.num_frames / plan.fps, 6), "num_frames": plan.num_frames,
        }
        validate_entry(entry, index, "synth")
        annotations.append(entry)
        ground_truth[rel_path] = {"good": defect is None, "defect": defect}
    return annotations, ground_truth


def synthesize(
    out: str,
    num: int,
    seed: int,
    kind: str = "shapes",
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Write `num` synthetic captioned clips under `out` (folder or s3:// URI); return a summary."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind '{kind}': use one of {', '.join(KINDS)}")
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    config = load_data_config(preset, overrides).synth
    with lease.hold(out, owner=f"t2v data synth --kind {kind} --num {num} --seed {seed}") as held:
        return _synthesize(out, num, seed, kind, preset, config, parent_run_id, held)


def _synthesize(out: str, num: int, seed: int, kind: str, preset: str, config: SynthConfig,
                parent_run_id: str | None, held: lease.Lease) -> dict[str, Any]:
    request = {"kind": kind, "num": str(num), "seed": str(seed)}
    chash = config_hash(config)
    done = manifest.is_complete(out, chash, {"request": request})
    if done:
        log.info("synth: %s already holds this output (manifest matches); nothing to do", out)
        return done["summary"]

    storage.delete(storage.join(out, manifest.MANIFEST_FILE))  # rewriting: never look finished meanwhile
    params = {"kind": kind, "num": num, "seed": seed, "preset": str(preset), "out": str(out),
              "config": config.model_dump(mode="json")}
    with tracking.stage_run("synth", parent_run_id=parent_run_id, params=params) as run, \
            storage.staging_dir("t2v-synth-") as staging:
        folder = Path(staging)
        annotations, ground_truth = _build(folder, num, seed, kind, config)
        storage.write_json(folder / "annotations.json", annotations)
        storage.write_json(folder / "ground_truth.json", ground_truth)

        files = {}
        for local in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = local.relative_to(folder).as_posix()
            uri = storage.join(out, rel)
            files[rel] = manifest.file_entry(uri, storage.put_file(local, uri), local.stat().st_size)

        defects = Counter(v["defect"] for v in ground_truth.values() if v["defect"])
        metrics = {"num_clips": num, "num_good": num - sum(defects.values()), "num_bad": sum(defects.values()),
                   "total_frames": sum(e["num_frames"] for e in annotations),
                   **{f"defect.{name}": defects.get(name, 0) for name in DEFECTS}}
        run.log_metrics(metrics)
        run.log_artifact(folder / "annotations.json")
        run.log_artifact(folder / "ground_truth.json")
        summary = {
            "annotations": storage.join(out, "annotations.json"),
            "ground_truth": storage.join(out, "ground_truth.json"),
            "manifest": storage.join(out, manifest.MANIFEST_FILE),
            "mlflow_run_id": run.run_id, **metrics,
        }
        held.check()
        manifest.write_manifest(out, manifest.build_manifest(
            stage="synth", preset=str(preset), config=config.model_dump(mode="json"), config_hash=chash,
            inputs={"request": request}, files=files, mlflow_run_id=run.run_id, summary=summary))
    log.info("synth: wrote %d clips (%d bad) to %s", num, metrics["num_bad"], out)
    return summary

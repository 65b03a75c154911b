"""What the DiT evaluation leaves behind for a reader: a sample grid (PNG), the same grid animated (GIF, so
the MLflow UI plays the videos inline), one mp4 per prompt, the MLflow metric names, and a markdown summary
of the headline numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BAND_LINE = 12  # px per text line of a caption band
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_band(width: int, lines: Sequence[str]) -> np.ndarray:
    """(lines · BAND_LINE + 4, width, 3) uint8 RGB: each line in white on dark grey."""
    band = np.full((len(lines) * BAND_LINE + 4, width, 3), 40, dtype=np.uint8)
    for row, text in enumerate(lines):
        cv2.putText(band, text, (3, (row + 1) * BAND_LINE), _FONT, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def _row_lines(index: int, prompt: str, reading: dict[str, Any] | None, width: int) -> list[str]:
    """The prompt wrapped to the row's width, and what the reader saw (+ right, - wrong)."""
    per_line = max(20, width // 6)  # ~6 px per character at this font size
    words, lines = f"{index + 1}. {prompt}".split(), [""]
    for word in words:
        if len(lines[-1]) + len(word) + 1 > per_line:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    if reading is not None:
        marks = {name: "+" if ok else "-" for name, ok in reading["correct"].items()}
        lines.append(f"read: {reading['background']} {marks['background']}, {reading['colour']} "
                     f"{marks['colour']}, {reading['direction']} {marks['direction']}")
    return lines


def save_grid(videos: Sequence[np.ndarray], prompts: Sequence[str], readings: Sequence[dict[str, Any]] | None,
              path: Path, max_frames: int) -> Path:
    """PNG: per video a caption band (prompt, and the reading when there is one) over `max_frames` evenly
    spaced frames side by side. Videos are (T, H, W, 3) RGB uint8."""
    blocks = []
    for index, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        frame_ids = np.unique(np.linspace(0, len(video) - 1, min(max_frames, len(video))).round().astype(int))
        strip = np.concatenate(list(video[frame_ids]), axis=1)  # (H, k·W, 3)
        reading = readings[index] if readings else None
        blocks.append(np.concatenate([_text_band(strip.shape[1], _row_lines(index, prompt, reading, strip.shape[1])),
                                      strip], axis=0))
    width = max(block.shape[1] for block in blocks)
    grid = np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0))) for b in blocks], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def save_animated_grid(videos: Sequence[np.ndarray], path: Path, fps: int, columns: int = 4, scale: int = 2) -> Path:
    """GIF of the videos playing side by side, `columns` per row, each numbered as in the PNG grid and
    upscaled `scale` times (nearest) so 64-px clips are visible."""
    from PIL import Image

    num_frames = max(len(v) for v in videos)
    height, width = videos[0].shape[1] * scale, videos[0].shape[2] * scale
    rows = -(-len(videos) // columns)
    frames = []
    for t in range(num_frames):
        canvas = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
        for index, video in enumerate(videos):
            tile = cv2.resize(video[min(t, len(video) - 1)], (width, height), interpolation=cv2.INTER_NEAREST)
            cv2.putText(tile, str(index + 1), (2, 11), _FONT, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
            top, left = (index // columns) * height, (index % columns) * width
            canvas[top:top + height, left:left + width] = tile
        frames.append(Image.fromarray(canvas))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def mlflow_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat metric names, the same for every stage's evaluation, so MLflow compares stages side by side."""
    metrics: dict[str, float] = {}
    adherence = report.get("adherence")
    if adherence:
        for name, value in adherence["accuracy"].items():
            metrics[f"eval/adherence/{name}"] = value
            metrics[f"eval/adherence_shuffled/{name}"] = adherence["shuffled"][name]
            metrics[f"eval/adherence_vs_chance/{name}"] = adherence["ratio_to_chance"][name]
    val_loss = report.get("val_loss")
    if val_loss:
        metrics["eval/val_loss/mean"] = val_loss["mean"]
        for step, value in zip(val_loss["timesteps"], val_loss["loss"], strict=True):
            metrics[f"eval/val_loss/t{step:04d}"] = value
    if report.get("clip_score"):
        metrics["eval/clip_score"] = report["clip_score"]["mean"]
    metrics["eval/seconds_per_clip"] = report["timing"]["sampling_seconds_per_clip"]
    return metrics


def summary_markdown(report: dict[str, Any], title: str) -> str:
    """The headline numbers as markdown (the pipeline attaches it to its Prefect flow run)."""
    protocol = report["protocol"]
    sampling = protocol["sampling"]
    lines = [f"# {title}", "",
             f"- DiT: `{protocol['models']['dit']['uri']}` (sha256 `{(protocol['models']['dit']['sha256'] or '')[:12]}`)",
             f"- {len(protocol['prompts'])} prompts ({protocol['prompt_source']}), seeds {protocol['prompts'][0]['seed']}"
             f"..{protocol['prompts'][-1]['seed']}; {sampling['scheduler']}, {sampling['steps']} steps, guidance "
             f"{sampling['guidance']}, {sampling['frames']}x{sampling['height']}x{sampling['width']}",
             f"- sampling: {report['timing']['sampling_seconds_per_clip']:.2f} s per clip on {protocol['device']}"]
    if protocol.get("heldout"):
        held = protocol["heldout"]
        lines.append(f"- held out: {held['unseen_triples']}/{held['prompts']} prompts with a (background, colour, "
                     f"direction) unseen in training, {held['unseen_captions']} unseen captions")
    adherence = report.get("adherence")
    if adherence:
        lines += ["", "## Prompt adherence", "", "| attribute | accuracy | chance | x chance | shuffled control |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {value:.3f} | {adherence['chance'][name]:.3f} | {adherence['ratio_to_chance'][name]:.2f} "
                  f"| {adherence['shuffled'][name]:.3f} |" for name, value in adherence["accuracy"].items()]
    val_loss = report.get("val_loss")
    if val_loss:
        lines += ["", f"## Validation loss (EMA weights, {val_loss['samples']} held-out samples, fixed noise)", "",
                  "| timestep | " + " | ".join(str(t) for t in val_loss["timesteps"]) + " | mean |",
                  "|---" * (len(val_loss["timesteps"]) + 2) + "|",
                  "| loss | " + " | ".join(f"{v:.4f}" for v in val_loss["loss"]) + f" | {val_loss['mean']:.4f} |"]
    elif report.get("val_loss_skipped"):  # a missing number says why, in the summary a reader sees first
        lines += ["", f"## Validation loss: skipped ({report['val_loss_skipped']})"]
    clip = report.get("clip_score")
    if clip:
        lines += ["", f"## CLIP score: {clip['mean']:.2f}", "", f"{clip['model']}; {clip['convention']}"]
    return "\n".join(lines) + "\n"

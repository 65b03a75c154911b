"""Videos in and out: reading a video file, and pictures and videos for reviewing reconstructions (a
frame grid PNG and a side-by-side mp4)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from components.core import storage


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8."""
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


def side_by_side(original: torch.Tensor, reconstruction: torch.Tensor) -> np.ndarray:
    """(B, T, H, 2·W, 3) uint8: each original frame with its reconstruction to the right."""
    if original.shape != reconstruction.shape:
        raise ValueError(f"original {tuple(original.shape)} and reconstruction {tuple(reconstruction.shape)} differ")
    return np.concatenate([_to_uint8(original), _to_uint8(reconstruction)], axis=3)


def save_reconstruction_grid(original: torch.Tensor, reconstruction: torch.Tensor, path: str | Path,
                             max_frames: int = 8) -> Path:
    """PNG with one row per clip, `max_frames` evenly spaced frames per row, each original|reconstruction."""
    import cv2

    pairs = side_by_side(original, reconstruction)  # (B, T, H, 2W, 3)
    frame_ids = np.unique(np.linspace(0, pairs.shape[1] - 1, min(max_frames, pairs.shape[1])).round().astype(int))
    rows = [np.concatenate(list(clip[frame_ids]), axis=1) for clip in pairs]  # each (H, k·2W, 3)
    grid = np.concatenate(rows, axis=0)  # (B·H, k·2W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def save_side_by_side_video(original: torch.Tensor, reconstruction: torch.Tensor, path: str | Path,
                            fps: float = 8.0) -> Path:
    """H.264 mp4 (PyAV; OpenCV's wheel cannot write H.264) of the clips one after another, original|reconstruction."""
    import av

    pairs = side_by_side(original, reconstruction)  # (B, T, H, 2W, 3)
    frames = pairs.reshape(-1, *pairs.shape[2:])  # (B·T, H, 2W, 3)
    height, width = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2  # yuv420p
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            container.mux(stream.encode(packet_frame))
        container.mux(stream.encode())
    return path


def read_video(uri: str) -> torch.Tensor:
    """All frames of a video file as (3, T, H, W) in [-1, 1] (OpenCV; S3 files are fetched first)."""
    import cv2

    with contextlib.ExitStack() as stack:
        path = storage.local_dir(uri)
        if path is None:
            tmp = stack.enter_context(storage.staging_dir("t2v-video-"))
            path = storage.get_file(uri, Path(tmp) / Path(uri).name)
        capture = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        capture.release()
    if not frames:
        raise ValueError(f"{uri}: no frames could be decoded")
    video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)  # (3, T, H, W) uint8
    return video.float().div(127.5).sub(1.0)

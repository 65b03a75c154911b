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


LABEL_HEIGHT = 14  # px of a caption band
LABEL_WIDTH = 52  # px of the "input" / "output" column of a grid


def clip_psnr(original: torch.Tensor, reconstruction: torch.Tensor) -> list[float]:
    """PSNR in dB of each clip of (B, 3, T, H, W) videos in [-1, 1]: the mean of its frames' PSNR."""
    from components.core.metrics import psnr

    def unit(video: torch.Tensor) -> torch.Tensor:
        return ((video.detach().float().clamp(-1, 1) + 1) / 2).transpose(1, 2)  # (B, T, 3, H, W) in [0, 1]

    return psnr(unit(reconstruction), unit(original)).mean(dim=1).tolist()  # (B, T) -> B values


def _band(height: int, width: int, text: str) -> np.ndarray:
    """(height, width, 3) uint8: `text` in white on dark grey, vertically centred."""
    import cv2

    band = np.full((height, width, 3), 40, dtype=np.uint8)
    baseline = (height + 8) // 2  # FONT_HERSHEY_SIMPLEX at 0.35 is about 8 px tall
    cv2.putText(band, text, (3, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return band


def save_reconstruction_grid(original: torch.Tensor, reconstruction: torch.Tensor, path: str | Path,
                             max_frames: int = 8) -> Path:
    """PNG, per clip: a caption band "clip i: PSNR x dB", then an `input` row and an `output` row of
    `max_frames` evenly spaced frames, each row named in a column on its left."""
    import cv2

    side_by_side(original, reconstruction)  # checks the shapes
    inputs, outputs = _to_uint8(original), _to_uint8(reconstruction)  # (B, T, H, W, 3) each
    num_frames, height = inputs.shape[1], inputs.shape[2]
    frame_ids = np.unique(np.linspace(0, num_frames - 1, min(max_frames, num_frames)).round().astype(int))
    blocks = []
    for index, clip_db in enumerate(clip_psnr(original, reconstruction)):
        rows = [np.concatenate([_band(height, LABEL_WIDTH, name), *clip[frame_ids]], axis=1)  # (H, L + k·W, 3)
                for name, clip in (("input", inputs[index]), ("output", outputs[index]))]
        caption = _band(LABEL_HEIGHT, rows[0].shape[1],
                        f"clip {index + 1}: PSNR {clip_db:.2f} dB, frames {', '.join(str(i) for i in frame_ids)}")
        blocks.append(np.concatenate([caption, *rows], axis=0))
    grid = np.concatenate(blocks, axis=0)  # (B·(caption + 2H), L + k·W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def save_side_by_side_video(original: torch.Tensor, reconstruction: torch.Tensor, path: str | Path,
                            fps: float = 8.0) -> Path:
    """H.264 mp4 (`write_mp4`) of the clips one after another, input | output side by side under a caption
    with the clip's PSNR."""
    pairs = side_by_side(original, reconstruction)  # (B, T, H, 2W, 3)
    half = pairs.shape[3] // 2
    labelled = []
    for clip, clip_db in zip(pairs, clip_psnr(original, reconstruction), strict=True):
        # Above each frame: which half is which, and the clip's PSNR.
        header = np.concatenate([_band(LABEL_HEIGHT, half, "input"), _band(LABEL_HEIGHT, half, "output")], axis=1)
        caption = _band(LABEL_HEIGHT, 2 * half, f"PSNR {clip_db:.2f} dB")
        labelled += [np.concatenate([caption, header, frame], axis=0) for frame in clip]
    return write_mp4(np.stack(labelled), path, fps)  # (B·T, 2·LABEL_HEIGHT + H, 2W, 3)


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 24.0, crf: int = 18) -> Path:
    """Frames (T, H, W, 3) uint8 RGB as an H.264 mp4 (PyAV; OpenCV's wheel cannot write H.264). yuv420p
    needs even sizes: an odd last row or column is dropped. The same frames give the same file."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # x264's assembly gave one of two different files for the same frames, by chance (measured: 1 in 5
        # encodes of a 9x32x48 sample); its C code gives one, at about twice the encoding time.
        stream.options = {"crf": str(crf), "threads": "1", "x264-params": "asm=0"}
        for index, frame in enumerate(frames):
            packet_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            packet_frame.pts = index
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

"""Decode, crop-resize and encode clips (PyAV for video, OpenCV for images and resizing).

OpenCV's wheel cannot write H.264 here; PyAV carries libx264, and both read its output back
(environment notes). Frames are RGB uint8 arrays of shape (T, H, W, 3) throughout.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import cv2
import numpy as np

from components.data.buckets import centre_crop_box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None]  # (1, H, W, 3)


def decode_video(data: bytes, indices: np.ndarray | None = None) -> np.ndarray:
    """Decode the frames at `indices` (sorted, repeats allowed), or all frames. Stops after the last one needed."""
    wanted = None if indices is None else np.asarray(indices)
    last = None if wanted is None else int(wanted.max())
    frames: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        for number, frame in enumerate(container.decode(stream)):
            if last is not None and number > last:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError("no video frames")
    if wanted is None:
        return np.stack(frames)
    if last >= len(frames):
        raise ValueError(f"decoded {len(frames)} frames, need frame {last}")
    return np.stack([frames[i] for i in wanted])


def crop_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the aspect height/width, then resize to exactly (height, width) (reference notes §5.3)."""
    _, src_h, src_w, _ = frames.shape
    top, left, crop_h, crop_w = centre_crop_box(src_h, src_w, height / width)
    cropped = frames[:, top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (height, width):
        return np.ascontiguousarray(cropped)
    # INTER_AREA anti-aliases when shrinking; linear when (within max_upscale) enlarging.
    interpolation = cv2.INTER_AREA if crop_h >= height else cv2.INTER_LINEAR
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in cropped])


def encode_h264(frames: np.ndarray, fps: float, crf: int, pix_fmt: str = "yuv444p", preset: str = "medium") -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames to an mp4 with libx264, deterministically."""
    buffer = io.BytesIO()
    write_h264(buffer, frames, fps, frames.shape[1], frames.shape[2], crf, pix_fmt, preset)
    return buffer.getvalue()


def write_h264(target: str | Path | BinaryIO, frames: Iterable[np.ndarray], fps: float, height: int, width: int,
               crf: int, pix_fmt: str = "yuv444p", preset: str = "medium", frame_format: str = "rgb24") -> int:
    """Stream (H, W, 3) uint8 frames (`frame_format` rgb24 or bgr24) into an mp4 with libx264,
    deterministically (same frames, same bytes); return the number of frames written."""
    count = 0
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = height, width
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": _x264_params()}
        for array in frames:
            assert array.shape == (height, width, 3) and array.dtype == np.uint8, array.shape
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format=frame_format)):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


@functools.cache
def _x264_params() -> str:
    """Options that make libx264 bit-exact from run to run: one thread, no threaded lookahead, no AVX-512.

    Measured here (PyAV's libx264 on an AVX-512 machine): the same frames gave 2-5 different bitstreams in
    30 encodes (PSNR between them ~48 dB); capping the assembly at AVX2 gave one. A shard should be a
    function of its inputs, so on CPUs with AVX-512 we cap it (only there: naming flags a CPU lacks would
    make x264 run instructions it cannot execute).
    """
    params = "sync-lookahead=0"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return params
    return params + (":asm=AVX2" if {"avx512f", "avx2"} <= flags else "")


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB over all frames, peak 255 (inf when identical)."""
    assert reference.shape == test.shape, (reference.shape, test.shape)
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)

"""One streaming pass over a video file: what it really is (technical probe) and how it moves.

The file is trusted, not its annotation: frame count, fps, size and duration are measured while decoding
with `cv2.VideoCapture`, one frame at a time, so memory stays bounded whatever the clip's length. On the
way, the pass keeps the few frames the aesthetic scorer needs (evenly spaced, always first, middle and
last) and computes the motion signals on small grey copies:

- motion: dense optical flow (OpenCV Farnebäck) between frames a fixed time stride apart; the mean flow
  magnitude as a share of the frame diagonal per second, so the number means the same at every size and
  frame rate (Open-Sora's "flow < 0.3" is in pixels at its own working size; ours is scale-free).
- flicker: the median relative jump of mean brightness between consecutive frames (a strobing light jumps
  at every frame; a single cut or a moving object barely moves the median).
- scene cut: the largest Bhattacharyya distance between grey histograms of consecutive frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own messages about broken files: quiet
import cv2  # noqa: E402  (after the log level)

# First bytes of the containers we can decode (ISO BMFF/mp4/mov, Matroska/WebM, AVI, MPEG-PS, FLV, Ogg).
_SIGNATURES = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"), (0, b"FLV"),
               (0, b"OggS"))


class ProbeRejection(Exception):
    """The file cannot serve as a video sample; `reason` is machine-readable, the message human."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ScanSettings:
    sample_frames: int = 3        # frames kept for the aesthetic score (first, ..., middle, ..., last)
    flow_stride_seconds: float = 0.25
    work_size: int = 64           # long side of the grey copies for flicker and cuts (flow: half of it)


@dataclass
class VideoScan:
    num_frames: int
    fps: float
    height: int
    width: int
    samples: list[np.ndarray] = field(repr=False)  # (H, W, 3) BGR uint8 each
    motion: float        # frame diagonals per second (mean flow magnitude)
    flicker: float       # median relative brightness jump between consecutive frames
    cut: float           # max histogram distance between consecutive frames (0 same .. 1 disjoint)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def looks_like_video(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(16)
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _SIGNATURES)


def _sample_positions(claimed_frames: int, count: int) -> set[int]:
    if claimed_frames <= 0:
        return {0}
    count = max(count, 3)
    return {int(round(i * (claimed_frames - 1) / (count - 1))) for i in range(count)}


def _work_copy(frame: np.ndarray, work_size: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = work_size / max(height, width)
    if scale < 1:
        # Bilinear straight to the work size: its cost follows the small output, not the decoded frame
        # (area resizing and colour conversion of full frames cost more than decoding them). The aliasing
        # it allows barely moves mean brightness, histograms or coarse flow.
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # (h, w) uint8, long side <= work_size


def _flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    # Farnebäck, not DIS: DIS invents flow of several pixels in flat regions from mere compression noise
    # (measured on static synthetic clips), which would make a static clip look like a moving one.
    # Computed at half the work size (32 px by default): flow is the costliest step per frame, and the
    # motion score only needs coarse displacement. Two pyramid levels suffice at that size.
    return cv2.calcOpticalFlowFarneback(first, second, None, pyr_scale=0.5, levels=2, winsize=7, iterations=2,
                                        poly_n=5, poly_sigma=1.1, flags=0)


def _histogram(grey: np.ndarray) -> np.ndarray:
    hist = cv2.calcHist([grey], [0], None, [32], [0, 256])
    return hist / max(float(hist.sum()), 1.0)


def scan_video(path: str, settings: ScanSettings) -> VideoScan:
    """Decode `path` once; raise ProbeRejection when it is not a usable video."""
    if not os.path.isfile(path):
        raise ProbeRejection("missing_file", f"no file at {path}")
    if os.path.getsize(path) == 0:
        raise ProbeRejection("empty_file", f"{path} has zero bytes")
    is_container = looks_like_video(path)
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            if is_container:
                raise ProbeRejection("corrupt", f"{path} starts like a video container but cannot be opened "
                                                "(truncated or damaged)")
            raise ProbeRejection("not_a_video", f"{path} is not a video file OpenCV can read")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        claimed_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        keep = _sample_positions(claimed_frames, settings.sample_frames)
        samples: dict[int, np.ndarray] = {}
        stride = max(1, round(fps * settings.flow_stride_seconds)) if fps > 0 else 1
        flow_magnitudes, brightness_jumps, hist_distances = [], [], []
        previous_grey = previous_hist = previous_mean = flow_anchor = None
        last_frame, index, shape = None, 0, None
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:
                raise ProbeRejection("corrupt", f"{path}: frame {index} is {frame.shape[:2]}, earlier ones {shape[:2]}")
            if index in keep:
                samples[index] = frame
            last_frame = frame
            grey = _work_copy(frame, settings.work_size)
            mean = cv2.mean(grey)[0]
            hist = _histogram(grey)
            if previous_grey is not None:
                brightness_jumps.append(abs(mean - previous_mean) / max(mean, previous_mean, 1.0))
                hist_distances.append(float(cv2.compareHist(previous_hist, hist, cv2.HISTCMP_BHATTACHARYYA)))
            if index % stride == 0:
                flow_grey = cv2.pyrDown(grey)  # (h/2, w/2)
                if flow_anchor is not None:
                    flow = _flow(flow_anchor, flow_grey)  # (h/2, w/2, 2) pixels
                    flow_magnitudes.append(cv2.mean(cv2.magnitude(flow[..., 0], flow[..., 1]))[0])
                flow_anchor = flow_grey
            previous_grey, previous_hist, previous_mean = grey, hist, mean
            index += 1
    finally:
        capture.release()

    if index == 0:
        reason = "corrupt" if is_container else "not_a_video"
        raise ProbeRejection(reason, f"{path}: no frame could be decoded")
    if claimed_frames > 0 and index < claimed_frames * 0.9:
        raise ProbeRejection("corrupt", f"{path}: decoded {index} of the {claimed_frames} frames its container "
                                        "declares (truncated or damaged stream)")
    if not fps > 0:
        raise ProbeRejection("corrupt", f"{path}: the container declares no frame rate")
    samples[index - 1] = last_frame
    height, width = shape[:2]
    flow_h, flow_w = flow_anchor.shape
    diagonal = float(np.hypot(flow_h, flow_w))
    seconds_per_pair = stride / fps
    motion = float(np.mean(flow_magnitudes)) / diagonal / seconds_per_pair if flow_magnitudes else 0.0
    return VideoScan(
        num_frames=index, fps=fps, height=height, width=width,
        samples=[samples[i] for i in sorted(samples)],
        motion=motion,
        flicker=float(np.median(brightness_jumps)) if brightness_jumps else 0.0,
        cut=max(hist_distances, default=0.0),
    )

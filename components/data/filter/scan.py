"""One streaming pass over a video file: what it really is (technical probe) and how it moves.

The file is trusted, not its annotation: frame count, fps, size and duration are measured while decoding
with PyAV, one frame at a time, so memory stays bounded whatever the clip's length. Each frame is used in
the decoder's own format: its luma (Y) plane is read in place, never converted to colour; brightness and
histograms come from a grid sample of it, flow from a small copy of every stride-th frame. Only the few
frames the aesthetic scorer needs (evenly spaced, always first, middle and last) are converted to colour,
at the size the scorer looks at, as soon as they are decoded. On the way:

- motion: dense optical flow (OpenCV Farnebäck) between frames a fixed time stride apart; the mean flow
  magnitude as a share of the frame diagonal per second, so the number means the same at every size and
  frame rate (Open-Sora's "flow < 0.3" is in pixels at its own working size; ours is scale-free).
- flicker: the median relative jump of mean brightness between consecutive frames (a strobing light jumps
  at every frame; a single cut or a moving object barely moves the median).
- scene cut: the largest Bhattacharyya distance between grey histograms of consecutive frames.

Grey levels are full range (0-255), as an RGB-to-grey conversion would give: limited-range ("TV") luma,
16-235, is stretched, so thresholds mean the same for every source.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import BinaryIO

import av
import cv2
import numpy as np

from components.data.filter.aesthetic import NOISE_CROP, FrameSample

av.logging.set_level(av.logging.PANIC)  # FFmpeg's own messages about broken files: quiet, we report them

# First bytes of the containers we can decode (ISO BMFF/mp4/mov, Matroska/WebM, AVI, MPEG-PS, FLV, Ogg).
_SIGNATURES = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"), (0, b"FLV"),
               (0, b"OggS"))
SIGNATURE_BYTES = 16  # how much of the file's head `looks_like_video` needs

# 8-bit formats whose first plane is the luma at full size; others are converted (slower, but rare).
_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p",
               "yuv411p", "yuvj411p", "yuv410p", "yuva420p", "nv12", "nv21", "gray"}
_FULL_RANGE = np.arange(256, dtype=np.uint8)
_TV_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_BLOCK = 32  # frames per block of brightness and histogram statistics


class ProbeRejection(Exception):
    """The file cannot serve as a video sample; `reason` is machine-readable, the message human."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ScanSettings:
    sample_frames: int = 3        # frames kept for the aesthetic score (first, ..., middle, ..., last)
    flow_stride_seconds: float = 0.25
    work_size: int = 64           # long side of the grey samples for flicker and cuts (flow: half of it)


@dataclass
class VideoScan:
    num_frames: int
    fps: float
    height: int
    width: int
    samples: list[FrameSample] = field(repr=False)
    motion: float        # frame diagonals per second (mean flow magnitude)
    flicker: float       # median relative brightness jump between consecutive frames
    cut: float           # max histogram distance between consecutive frames (0 same .. 1 disjoint)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def looks_like_video(head: bytes) -> bool:
    """Whether the file's first bytes are those of a video container we know."""
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _SIGNATURES)


def _sample_positions(claimed_frames: int, count: int) -> set[int]:
    if claimed_frames <= 0:
        return {0}
    count = max(count, 3)
    return {int(round(i * (claimed_frames - 1) / (count - 1))) for i in range(count)}


class _LumaReader:
    """A frame's (H, W) uint8 luma: a view of the decoder's own plane where the format allows (no copy, no
    conversion), else converted. Decided once per video, from its first frame."""

    def __init__(self, frame: av.VideoFrame):
        name = frame.format.name
        self.height, self.width = frame.height, frame.width  # the caller checks that every frame has them
        self.native = name in _LUMA_FIRST
        full = not self.native or name.startswith("yuvj") or name == "gray" or frame.color_range == 2
        self.table = _FULL_RANGE if full else _TV_TO_FULL  # luma level -> full-range grey

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if not self.native:
            return cv2.cvtColor(frame.to_ndarray(format="bgr24"), cv2.COLOR_BGR2GRAY)
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:self.height, :self.width]


def _flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    # Farnebäck, not DIS: DIS invents flow of several pixels in flat regions from mere compression noise
    # (measured on static synthetic clips), which would make a static clip look like a moving one; and at
    # this size its fastest preset saves little (72 vs 81 us a pair, measured).
    # Computed at half the work size (32 px by default): flow is the costliest step per frame, and the
    # motion score only needs coarse displacement. Two pyramid levels suffice at that size. It runs on
    # the luma as decoded: the flow of an image does not change when its grey levels are stretched.
    return cv2.calcOpticalFlowFarneback(first, second, None, pyr_scale=0.5, levels=2, winsize=7, iterations=2,
                                        poly_n=5, poly_sigma=1.1, flags=0)


@functools.lru_cache(maxsize=16)
def _block_rows(height: int, width: int) -> np.ndarray:
    """(_BLOCK * height, width) uint8: each row of a block of grid samples labelled with its frame's slot."""
    return np.repeat(np.arange(_BLOCK, dtype=np.uint8), height * width).reshape(_BLOCK * height, width)


class _ConsecutiveStats:
    """Brightness jumps and histogram distances between consecutive frames.

    Each frame gives a grid sample of its luma (every `step`-th pixel of every `step`-th row, at most
    `work_size` a side: an unbiased sample of its grey levels, taken without resizing), copied into a block.
    Per block, one two-dimensional histogram (frame slot x luma level) gives every frame's 256-bin
    histogram; mean brightness and the 32-bin full-range histograms follow from those."""

    def __init__(self, table: np.ndarray, grid_shape: tuple[int, int]):
        self.level = table.astype(np.float64)  # (256,) full-range grey of each luma level
        # The table is non-decreasing, so each 32-bin full-range bin gathers a run of luma levels.
        self.bin_starts = np.flatnonzero(np.diff(table >> 3, prepend=-1))  # (32,)
        self.block = np.empty((_BLOCK, *grid_shape), np.uint8)  # (N, h, w)
        self.count = 0
        self.previous: tuple[np.ndarray, np.ndarray] | None = None  # last flushed frame's mean and histogram
        self.jumps: list[np.ndarray] = []
        self.distances: list[np.ndarray] = []

    def add(self, grid: np.ndarray) -> None:
        self.block[self.count] = grid
        self.count += 1
        if self.count == _BLOCK:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        rows = self.count * self.block.shape[1]
        slots = _block_rows(*self.block.shape[1:])[:rows]
        levels = self.block.reshape(_BLOCK * self.block.shape[1], -1)[:rows]
        counts = cv2.calcHist([slots, levels], [0, 1], None, [_BLOCK, 256], [0, _BLOCK, 0, 256])[:self.count]
        counts = counts.astype(np.float64) / (self.block.shape[1] * self.block.shape[2])  # (N, 256) shares
        means = (counts * self.level).sum(axis=1)  # (N,)
        hists = np.add.reduceat(counts, self.bin_starts, axis=1)  # (N, 32)
        if self.previous is not None:
            means, hists = np.concatenate([self.previous[0], means]), np.concatenate([self.previous[1], hists])
        self.jumps.append(np.abs(np.diff(means)) / np.maximum(np.maximum(means[1:], means[:-1]), 1.0))
        # Bhattacharyya distance of normalised histograms, as cv2.compareHist(HISTCMP_BHATTACHARYYA).
        overlap = np.sqrt(hists[1:] * hists[:-1]).sum(axis=1)
        self.distances.append(np.sqrt(np.clip(1.0 - overlap, 0.0, None)))
        self.previous, self.count = (means[-1:], hists[-1:]), 0


def _shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-filtered resize to (width, height). Area resizing by a non-integer factor is OpenCV's slow
    path (~100 us for a 312 px luma plane, more than decoding the frame), so such an image is first resized
    bilinearly to exactly twice the size (down, or up by less than 2x), then halved by area averaging (the
    fast integer path); an integer factor goes straight to the area filter."""
    height, width = image.shape[:2]
    if width % size[0] or height % size[1] or width // size[0] != height // size[1]:
        image = cv2.resize(image, (size[0] * 2, size[1] * 2), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _colour_image(frame: av.VideoFrame, long_side: int | None) -> np.ndarray:
    """(h, w, 3) BGR uint8 with its long side at most `long_side`. For limited-range 4:2:0 (nearly every
    video) the planes are shrunk first and converted by OpenCV: FFmpeg's converter costs a set-up of ~0.5 ms
    for every new frame size, more than decoding a small clip."""
    height, width = frame.height, frame.width
    scale = 1.0 if long_side is None else min(1.0, long_side / max(height, width))
    size = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))  # (w, h) even
    if frame.format.name != "yuv420p" or frame.color_range == 2 or width % 2 or height % 2:
        bgr = frame.to_ndarray(format="bgr24")
        return bgr if scale == 1.0 else _shrink(bgr, size)
    planes = [np.frombuffer(p, np.uint8, count=p.line_size * p.height).reshape(p.height, p.line_size)[:, :p.width]
              for p in frame.planes]  # Y (H, W), U and V (H/2, W/2)
    if scale < 1.0:
        planes = [_shrink(planes[0], size)] + [_shrink(p, (size[0] // 2, size[1] // 2)) for p in planes[1:]]
    i420 = np.concatenate([p.ravel() for p in planes]).reshape(-1, planes[0].shape[1])  # (3h/2, w)
    return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)


def _frame_sample(frame: av.VideoFrame, long_side: int | None, luma: _LumaReader) -> FrameSample:
    top, left = max(0, (frame.height - NOISE_CROP) // 2), max(0, (frame.width - NOISE_CROP) // 2)
    return FrameSample(image=_colour_image(frame, long_side),
                       luma_crop=cv2.LUT(luma(frame)[top:top + NOISE_CROP, left:left + NOISE_CROP], luma.table))


def scan_video(source: str | BinaryIO, settings: ScanSettings, name: str, is_container: bool,
               sample_long_side: int | None = None) -> VideoScan:
    """Decode `source` (a path or an open binary file) once; raise ProbeRejection when it is not a usable
    video. `name` is the file as messages call it; `is_container`: its first bytes look like a video
    container (a damaged one is `corrupt`, anything else `not_a_video`)."""
    try:
        container = av.open(source, mode="r")
    except av.error.FFmpegError:
        if is_container:
            raise ProbeRejection("corrupt", f"{name} starts like a video container but cannot be opened "
                                            "(truncated or damaged)") from None
        raise ProbeRejection("not_a_video", f"{name} is not a video file FFmpeg can read") from None
    with container:
        if not container.streams.video:
            raise ProbeRejection("not_a_video", f"{name} holds no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one core per video: the worker pool runs one per core
        rate = stream.guessed_rate or stream.average_rate
        fps = float(rate) if rate else 0.0
        claimed_frames = stream.frames
        keep = _sample_positions(claimed_frames, settings.sample_frames)
        samples: dict[int, FrameSample] = {}
        stride = max(1, round(fps * settings.flow_stride_seconds)) if fps > 0 else 1
        flow_magnitudes: list[float] = []
        stats = flow_anchor = last_frame = work_size = luma = None
        index = step = 0
        try:
            for frame in container.decode(stream):
                if luma is None:
                    luma = _LumaReader(frame)
                    long_side = max(luma.height, luma.width)
                    scale = min(1.0, settings.work_size / long_side)
                    work_size = (max(1, round(luma.width * scale)), max(1, round(luma.height * scale)))  # (w, h)
                    step = -(-long_side // settings.work_size)  # grid spacing: at most work_size a side
                    stats = _ConsecutiveStats(luma.table, (-(-luma.height // step), -(-luma.width // step)))
                elif frame.width != luma.width or frame.height != luma.height:
                    raise ProbeRejection("corrupt", f"{name}: frame {index} is {frame.width}x{frame.height}, "
                                                    f"earlier ones {luma.width}x{luma.height}")
                if index in keep:  # converted now: holding decoded frames makes the decoder allocate new ones
                    samples[index] = _frame_sample(frame, sample_long_side, luma)
                last_frame = frame
                plane = luma(frame)  # (H, W) luma levels
                stats.add(plane[::step, ::step])
                if index % stride == 0:
                    # Bilinear straight to the work size: its cost follows the small output, not the decoded
                    # frame; the aliasing it allows barely moves coarse flow.
                    flow_grey = cv2.pyrDown(cv2.resize(plane, work_size, interpolation=cv2.INTER_LINEAR))  # (h/2, w/2)
                    if flow_anchor is not None:
                        flow = _flow(flow_anchor, flow_grey)  # (h/2, w/2, 2) pixels
                        flow_magnitudes.append(cv2.mean(cv2.magnitude(*cv2.split(flow)))[0])
                    flow_anchor = flow_grey
                index += 1
        except av.error.FFmpegError as exc:
            raise ProbeRejection("corrupt", f"{name}: the stream breaks at frame {index} ({exc.strerror})") from None
        if index == 0:
            raise ProbeRejection("corrupt" if is_container else "not_a_video", f"{name}: no frame could be decoded")
        if claimed_frames > 0 and index < claimed_frames * 0.9:
            raise ProbeRejection("corrupt", f"{name}: decoded {index} of the {claimed_frames} frames its container "
                                            "declares (truncated or damaged stream)")
        if not fps > 0:
            raise ProbeRejection("corrupt", f"{name}: the container declares no frame rate")
        stats.flush()
        if index - 1 not in samples:  # the container's frame count was off: the last frame is still missing
            samples[index - 1] = _frame_sample(last_frame, sample_long_side, luma)

    jumps, distances = np.concatenate(stats.jumps), np.concatenate(stats.distances)
    flow_h, flow_w = flow_anchor.shape
    diagonal = float(np.hypot(flow_h, flow_w))
    seconds_per_pair = stride / fps
    motion = float(np.mean(flow_magnitudes)) / diagonal / seconds_per_pair if flow_magnitudes else 0.0
    return VideoScan(
        num_frames=index, fps=fps, height=luma.height, width=luma.width, samples=[samples[i] for i in sorted(samples)],
        motion=motion,
        flicker=float(np.median(jumps)) if jumps.size else 0.0,
        cut=float(distances.max()) if distances.size else 0.0,
    )

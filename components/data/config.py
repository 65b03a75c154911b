"""Typed configuration of the data stage; presets in `presets/<name>.yaml`, one group per sub-stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import StrictModel, load_config

PRESETS_DIR = Path(__file__).parent / "presets"


class SynthConfig(StrictModel):
    """Synthetic captioned videos (`t2v data synth`): sizes, rates and lengths are drawn per clip."""

    bad_fraction: float = Field(0.2, ge=0.0, le=1.0)  # share of deliberately bad clips (see synth.DEFECTS)
    min_side: int = Field(64, ge=16)  # longest side is drawn from multiples of 8 in [min_side, max_side]
    max_side: int = Field(160, ge=16)
    aspect_ratios: list[float] = [1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16]  # width / height
    fps_choices: list[int] = [12, 24, 30]
    min_frames: int = Field(9, ge=2)
    max_frames: int = Field(60, ge=2)
    short_frames: int = Field(4, ge=1)  # length of "too short" defect clips (below filter.min_frames)
    slow_speed: float = Field(0.25, gt=0)  # frame widths (or heights) per second
    fast_speed: float = Field(0.6, gt=0)
    # Shape diameter as a fraction of the short side, drawn per clip. Larger shapes cover more latent
    # cells, which is what lets a toy DiT learn their colour in a demo's few minutes.
    shape_size: tuple[float, float] = (0.22, 0.36)
    # H.264 (libx264, yuv420p) like real raw datasets; mp4v (MPEG-4 part 2, OpenCV's writer) kept as the
    # cheap-to-decode worst case for the filter's fixed per-video costs (bench/filter_speed.py).
    codec: Literal["h264", "mp4v"] = "h264"
    # libx264 constant rate factor: 18, good quality, as a "good" clip should be (at x264's default 23 the
    # anti-aliased edges of a small dark shape are smoothed enough to score like a blurred clip).
    crf: int = Field(18, ge=0, le=51)
    x264_preset: str = "veryfast"

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} > max_side {self.max_side}")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} > max_frames {self.max_frames}")
        if self.short_frames >= self.min_frames:
            raise ValueError(f"short_frames {self.short_frames} must be below min_frames {self.min_frames}")
        if not 0 < self.shape_size[0] <= self.shape_size[1] < 1:
            raise ValueError(f"shape_size {list(self.shape_size)} must be [low, high] with 0 < low <= high < 1")
        return self


class LaionConfig(StrictModel):
    """Weights of the LAION aesthetic predictor; never fetched unless `allow_download`."""

    clip_model: str | None = None  # local folder or hub id of a CLIP ViT-L/14 (openai/clip-vit-large-patch14)
    head_weights: str | None = None  # the predictor head (.pth state dict or .safetensors)
    allow_download: bool = False
    device: str = "cpu"


class AestheticConfig(StrictModel):
    scorer: Literal["opencv", "laion"] = "opencv"
    # Reference thresholds for `laion`: 4.75 (Open-Sora Plan v1.3), 4.5 (Open-Sora). The `opencv` score
    # has its own scale: calibrated on the synthetic set (see presets/tiny.yaml).
    min_score: float = 2.85
    sample_frames: int = Field(3, ge=3)  # evenly through the clip, always first, middle and last
    laion: LaionConfig = LaionConfig()


class MotionConfig(StrictModel):
    """Motion = mean optical-flow magnitude in frame diagonals per second (scale- and rate-free)."""

    min: float = Field(0.005, ge=0)  # below: static
    max: float = Field(1.0, gt=0)  # above: shaky or too fast
    stride_seconds: float = Field(0.25, gt=0)  # time between the frames of a flow pair
    work_size: int = Field(64, ge=16)  # long side of the grey samples for flicker and cuts (flow at half of it)
    max_flicker: float = Field(0.1, gt=0)  # median relative brightness jump between consecutive frames
    max_cut: float = Field(0.3, gt=0, le=1)  # largest histogram (Bhattacharyya) jump between consecutive frames


class FilterConfig(StrictModel):
    """Aesthetic, motion and technical filtering (`t2v data filter`)."""

    workers: int = Field(0, ge=0)  # worker processes; 0 = one per CPU core
    # Seconds one video may take to read and measure; past it the video is rejected as `timeout` and its
    # worker process is replaced (a stalled read or a hung decoder must not stall the stage).
    video_timeout_s: float = Field(120.0, gt=0)
    # Seconds a worker process may take to start (imports, scorer model load); past it the stage fails.
    worker_start_timeout_s: float = Field(300.0, gt=0)
    min_frames: int = Field(9, ge=1)  # the smallest frame bucket of the preset (4k+1 frames)
    min_side: int = Field(32, ge=1)  # pixels; below: too small
    max_aspect_ratio: float = Field(3.0, ge=1)  # long side / short side; above: extreme
    # Follow symlinks in the dataset folder that lead out of it (a dataset assembled from links into a
    # shared store); off, such an entry is rejected as `path_escapes`, like `..` or an absolute path elsewhere.
    allow_external_symlinks: bool = False
    aesthetic: AestheticConfig = AestheticConfig()
    motion: MotionConfig = MotionConfig()

    @model_validator(mode="after")
    def _laion_weights(self) -> FilterConfig:
        if self.aesthetic.scorer == "laion" and not (self.aesthetic.laion.clip_model and self.aesthetic.laion.head_weights):
            raise ValueError("aesthetic.scorer 'laion' needs aesthetic.laion.clip_model and aesthetic.laion.head_weights")
        if self.motion.min >= self.motion.max:
            raise ValueError(f"motion.min {self.motion.min} must be below motion.max {self.motion.max}")
        return self


class ShardConfig(StrictModel):
    """Bucketing and WebDataset sharding (`t2v data shard`).

    The buckets are every (frames, height, width) with `frames` from `frames` and (height, width) from
    `resolutions`; frames 1 is the image bucket family, the others take videos.
    """

    train_fps: float = Field(24.0, gt=0)  # every video is resampled to this rate (reference notes §5.2)
    frames: list[int] = [1, 9, 17]  # 1 (images) or 4k+1, the causal VAE's frame rule (reference notes §1.5)
    resolutions: list[tuple[int, int]] = [(64, 64), (48, 64), (64, 48), (48, 80), (80, 48)]  # (height, width), multiples of 16
    max_upscale: float = Field(1.0, ge=1.0)  # largest resize factor allowed when the crop is smaller than the bucket
    max_aspect_error: float = Field(1.25, ge=1.0)  # a clip's h/w may differ from its bucket's by this factor at most
    crf: int = Field(12, ge=0, le=51)  # libx264 constant rate factor for the one re-encode
    pix_fmt: Literal["yuv444p", "yuv420p"] = "yuv444p"
    x264_preset: str = "medium"
    shard_max_samples: int = Field(256, ge=1)
    shard_max_bytes: int = Field(512 * 1024 * 1024, ge=1)
    workers: int = Field(2, ge=0)  # clips encoded in parallel threads (0: in the calling thread)
    upload_workers: int = Field(4, ge=1)
    # As filter.allow_external_symlinks: a clip's path must stay inside its video_root (or the annotations'
    # folder), real path included, unless this is set.
    allow_external_symlinks: bool = False

    @field_validator("frames")
    @classmethod
    def _four_k_plus_one(cls, frames: list[int]) -> list[int]:
        bad = [f for f in frames if f < 1 or (f - 1) % 4]
        if bad or not frames or len(set(frames)) != len(frames):
            raise ValueError(f"frame counts must be distinct and 1 or 4k+1, got {frames}")
        return sorted(frames)

    @field_validator("resolutions")
    @classmethod
    def _multiple_of_16(cls, resolutions: list[tuple[int, int]]) -> list[tuple[int, int]]:
        # 16 = VAE stride 8 x patch 2, so every bucket maps to whole latent patches.
        bad = [r for r in resolutions if r[0] <= 0 or r[1] <= 0 or r[0] % 16 or r[1] % 16]
        if bad or not resolutions or len(set(resolutions)) != len(resolutions):
            raise ValueError(f"resolutions must be distinct (height, width) multiples of 16, got {resolutions}")
        return resolutions


class LoaderConfig(StrictModel):
    """Streaming bucketed loader used by training (embedded in the VAE and DiT configurations).

    The batch size of a bucket is `batch_tokens // tokens per sample` (at least 1, at most
    `max_batch_size`), where tokens per sample = t*h*w after VAE compression and patching, so one
    configuration keeps the per-step work level across buckets and machines.
    """

    batch_tokens: int = Field(4096, ge=1)  # latent tokens per rank and step
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # (t, h, w) compression of the causal VAE (reference notes §1.5)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # DiT patching (reference notes §2.2)
    max_batch_size: int = Field(64, ge=1)
    batch_size_overrides: dict[str, int] = {}  # bucket name "FxHxW" -> batch size per rank
    min_frames: int = Field(1, ge=1)  # e.g. 2 keeps only video buckets (VAE training)
    max_frames: int | None = None
    buckets: list[str] | None = None  # only these bucket names ("FxHxW"); None = all
    seed: int = 0
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes per rank
    shuffle_shards: int = Field(8, ge=1)  # samples are shuffled within groups of this many shards
    remainder: Literal["carry", "drop"] = "carry"  # a bucket's last partial global batch: next epoch first, or left out
    shrink_small_buckets: bool = True  # a bucket smaller than one global batch gets a smaller batch, not starved
    # Check each shard's sha256 against the manifest as it streams (its samples are used only after); the
    # cost is measured in bench/loader_checksum.py. Off only to measure that cost.
    verify_shards: bool = True
    # How a global batch is split over ranks. "runs": each rank reads a contiguous run of the bucket's
    # order (fewer shards opened per rank). "global": global batch i is samples [i·G, (i+1)·G) of that
    # order and rank r takes its r-th slice, so which samples a step trains on does not depend on the
    # number of ranks (G = batch size × ranks fixed): a run can resume on another world size.
    rank_layout: Literal["runs", "global"] = "runs"


class DataConfig(StrictModel):
    synth: SynthConfig = SynthConfig()
    filter: FilterConfig = FilterConfig()
    shard: ShardConfig = ShardConfig()
    loader: LoaderConfig = LoaderConfig()


def load_data_config(preset: str = "tiny", overrides: Sequence[str] = ()) -> DataConfig:
    return load_config(DataConfig, PRESETS_DIR, preset, overrides)

"""Typed configuration of the DiT evaluation (`t2v dit eval`); presets in `presets/<name>.yaml`.

The pipeline routes `--set eval.<key>=<value>` here, e.g. `--set eval.sampling.steps=30`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from components.core.config import StrictModel, load_config

PRESETS_DIR = Path(__file__).parent / "presets"


class SamplingConfig(StrictModel):
    """How the evaluation videos are generated (components.dit.sample)."""

    frames: int = Field(17, ge=1)  # 1 + 4k, checked against the VAE when the models are known
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    steps: int = Field(25, ge=1)
    guidance: float = Field(4.5, ge=0)  # classifier-free guidance scale; <= 1 turns it off
    scheduler: Literal["euler_ancestral", "dpm_solver", "ddim"] = "euler_ancestral"
    batch: int = Field(4, ge=1)  # prompts per denoising loop
    fps: int = Field(8, ge=1)  # of the written mp4s (the model has no notion of time per frame)


class PromptsConfig(StrictModel):
    """Which prompts are sampled.

    `shapes`: held-out synthetic shapes prompts (balanced, unseen in training), scored for adherence.
    `validation`: the captions of the held-out latent set (real data); no adherence, CLIP score if any."""

    source: Literal["shapes", "validation"] = "shapes"
    count: int = Field(24, ge=2)  # at least 2: the shuffled control needs a derangement
    seed: int = 0  # the prompt choice, and the sampling seed of prompt i is seed + i
    control_seed: int = 0  # the derangement of the shuffled control
    object_fraction: float = Field(0.01, gt=0, lt=0.5)  # share of each frame's pixels read as the object


class ValLossConfig(StrictModel):
    """Validation loss of the EMA weights on the held-out latents (components/eval/val_loss.py)."""

    enabled: bool = True
    num_timesteps: int = Field(10, ge=1)
    seed: int = 0  # the noise of held-out sample i is drawn from seed + i
    max_samples: int | None = Field(64, ge=1)  # None: the whole held-out set
    forward_batch: int = Field(16, ge=1)  # (sample, timestep) pairs per forward pass: memory, not results


class ClipConfig(StrictModel):
    """CLIP score (components/eval/clip_score.py); off when `model` is null."""

    model: str | None = None  # local folder or hub id, e.g. openai/clip-vit-large-patch14
    allow_download: bool = False  # off: a hub id must be in the local Hugging Face cache


class ReportConfig(StrictModel):
    grid_prompts: int = Field(8, ge=1)  # rows of the sample grid
    grid_frames: int = Field(5, ge=1)  # evenly spaced frames per row


class EvalConfig(StrictModel):
    """Root configuration of the evaluation component."""

    device: str = "auto"  # auto: cuda, then npu, then cpu
    sampling: SamplingConfig = SamplingConfig()
    prompts: PromptsConfig = PromptsConfig()
    val_loss: ValLossConfig = ValLossConfig()
    clip: ClipConfig = ClipConfig()
    report: ReportConfig = ReportConfig()


def load_eval_config(preset: str | Path = "tiny", overrides: Sequence[str] = ()) -> EvalConfig:
    return load_config(EvalConfig, PRESETS_DIR, preset, overrides)

"""Shared fixtures: a small DiT config (two blocks, 2 heads x 12) and inputs for it."""

from __future__ import annotations

import pytest
import torch

from components.dit.config import DiTModelConfig
from tests.data.shard_fixtures import tracking_home  # noqa: F401
from tests.dit.latent_fixtures import cached_latents, online_latents, source_shards, tiny_vae_folder  # noqa: F401


@pytest.fixture(autouse=True)
def _few_threads(one_torch_thread):
    yield


@pytest.fixture()
def small_config() -> DiTModelConfig:
    return DiTModelConfig(num_layers=2, num_attention_heads=2, attention_head_dim=12, caption_channels=16,
                          sample_size_t=3, sample_size=(8, 12))


def make_inputs(frames: int = 3, height: int = 8, width: int = 12, text_tokens: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(2, text_tokens, dtype=torch.long)
    text_mask[0, text_tokens // 2:] = 0
    return {"latents": torch.randn(2, 4, frames, height, width, generator=generator),
            "timestep": torch.tensor([5, 900]),
            "text": torch.randn(2, text_tokens, 16, generator=generator),
            "text_mask": text_mask}


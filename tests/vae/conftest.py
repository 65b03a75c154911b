"""Shared fixtures: the tiny VAE, built once per test with a fixed seed."""

from __future__ import annotations

import pytest
import torch

from components.vae.config import load_vae_config
from components.vae.model import CausalVAE


@pytest.fixture(autouse=True)
def _few_threads(one_torch_thread):
    yield


@pytest.fixture()
def tiny_config():
    return load_vae_config("tiny").model


@pytest.fixture()
def tiny_vae(tiny_config) -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(tiny_config).eval()

"""`t2v vae info`: what a VAE preset or model folder is (size, compression, latent channels, scale)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from components.vae.config import VAEModelConfig, load_vae_config
from components.vae.model import CausalVAE, num_parameters


def vae_info(preset: str | None = None, overrides: Sequence[str] = (), vae: str | None = None) -> dict[str, Any]:
    """Describe a preset (built on the meta device: no memory, no weights) or a VAE folder (loaded)."""
    if (preset is None) == (vae is None):
        raise ValueError("give exactly one of --preset or --vae")
    if vae is not None:
        from components.vae import load_vae

        model = load_vae(vae)
        source = {"vae": vae}
    else:
        config = load_vae_config(preset, overrides).model
        with torch.device("meta"):
            model = CausalVAE(config)
        source = {"preset": preset}
    config: VAEModelConfig = model.config
    return {
        **source,
        "num_parameters": num_parameters(model),
        "encoder_parameters": num_parameters(model.encoder),
        "decoder_parameters": num_parameters(model.decoder),
        "state_dict_keys": len(model.state_dict()),
        "compression": config.compression,
        "latent_channels": config.latent_channels,
        "scale_factor": config.scale_factor,
        "frames_rule": f"T = 1 + {config.temporal_compression}k pixel frames -> k + 1 latent frames",
        "tiling": config.tiling.model_dump(),
    }

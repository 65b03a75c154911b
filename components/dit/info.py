"""`t2v dit info`: what a DiT preset or model folder is (size, widths, tokens and latents for a clip size)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from components.dit.config import LatentConfig, load_dit_config
from components.dit.model import OpenSoraT2V, num_parameters


def dit_info(preset: str | None = None, overrides: Sequence[str] = (), dit: str | None = None,
             frames: int = 29, height: int = 480, width: int = 640) -> dict[str, Any]:
    """Describe a preset or a DiT folder (its config alone; the model is built on the meta device, so
    nothing is allocated) and the latents and tokens of a `frames` x `height` x `width` clip."""
    if (preset is None) == (dit is None):
        raise ValueError("give exactly one of --preset or --dit")
    if dit is not None:
        from components.dit import read_dit_config

        # A folder records no VAE; v1.2's 4x8x8 is what official and our folders are trained on.
        config, latent, source = read_dit_config(dit), LatentConfig(), {"dit": dit}
    else:
        root = load_dit_config(preset, overrides)
        config, latent = root.model, root.latent
        source = {"preset": preset, "text_encoder": {"source": root.text.source, "max_length": root.text.max_length}}
    with torch.device("meta"):
        model = OpenSoraT2V(config)
    latent_frames, latent_height, latent_width = latent.latent_shape(frames, height, width, config.patch_size)
    grid = config.token_grid(latent_frames, latent_height, latent_width)
    return {
        **source,
        "num_parameters": num_parameters(model),
        "state_dict_keys": len(model.state_dict()),
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "caption_channels": config.caption_channels,
        "interpolation_scales": dict(zip("thw", config.interpolation_scales, strict=True)),
        "clip": {"frames": frames, "height": height, "width": width},
        "latent_shape": [config.in_channels, latent_frames, latent_height, latent_width],
        "token_grid": list(grid),
        "tokens": grid[0] * grid[1] * grid[2],
        "compression": {"t": latent.temporal_compression, "h": latent.spatial_compression,
                        "w": latent.spatial_compression},
    }

"""A "trained-looking" DiT stage folder for sampling and evaluation tests: seeded tiny models saved the way
the stages save them, with the `conditioning.json` a trained stage folder carries (notes/common.md).

    folder = make_trained_folder(tmp_path / "run")   # run/dit-stage1/{model_ema,model,conditioning.json}

Layout under `root`: `vae/` (tiny VAE), `text-encoder/` (tiny T5), `dit-stage1/` (model_ema/ and model/
from different seeds, conditioning.json naming the other two). The weights are random, not trained:
the clips are noise, but every path of the pipeline runs on them in about a second.
"""

from __future__ import annotations

from pathlib import Path

import torch

from components.core import storage

TINY_CLIP = {"frames": 9, "height": 32, "width": 32}  # latent 3 x 4 x 4 -> 3 x 2 x 2 tokens
SCALE_FACTOR = 0.5  # not the VAE config's 0.18215, so a test sees which one the sampler used
TEXT_MAX_LENGTH = 96


def save_tiny_vae(folder: Path, seed: int = 0) -> Path:
    from components.vae.config import load_vae_config
    from components.vae.model import CausalVAE
    from components.vae.official import save_vae

    torch.manual_seed(seed)
    save_vae(folder, CausalVAE(load_vae_config("tiny").model).eval())
    return folder


def save_tiny_text_encoder(folder: Path) -> Path:
    from components.dit.text import TextEncoderConfig, load_text_encoder

    load_text_encoder(TextEncoderConfig(source="tiny", max_length=TEXT_MAX_LENGTH)).save(folder)
    return folder


def tiny_dit(seed: int = 0):
    """The tiny preset's DiT with a random, non-zero head (zero_init would make every prediction zero)."""
    from components.dit.config import load_dit_config
    from components.dit.model import OpenSoraT2V

    torch.manual_seed(seed)
    return OpenSoraT2V(load_dit_config("tiny", ["model.zero_init=false"]).model).eval()


def make_trained_folder(root: str | Path, vae: str | Path | None = None,
                        text_encoder: str | Path | None = None) -> Path:
    """Write the tiny models under `root` (local) and return the DiT stage folder; `vae` / `text_encoder`
    reuse existing folders instead."""
    from components.dit import save_dit
    from components.dit.sample_sources import CONDITIONING_FILE, folder_sha256

    root = Path(root)
    vae = Path(vae) if vae else save_tiny_vae(root / "vae")
    text_encoder = Path(text_encoder) if text_encoder else save_tiny_text_encoder(root / "text-encoder")
    stage = root / "dit-stage1"
    save_dit(stage / "model_ema", tiny_dit(seed=0))
    save_dit(stage / "model", tiny_dit(seed=1))
    storage.write_json(stage / CONDITIONING_FILE, {
        "vae": {"uri": str(vae), "sha256": folder_sha256(str(vae))},
        "scale_factor": SCALE_FACTOR,
        "text_encoder": {"uri": str(text_encoder), "max_length": TEXT_MAX_LENGTH},
        "latents": str(root / "latents" / "manifest.json"),
    })
    return stage

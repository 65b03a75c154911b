"""The DiT trainer's data: batches of VAE posteriors and caption embeddings from a latent folder.

    loader = open_latents("s3://bucket/latents", LoaderConfig(batch_tokens=4096, buckets=["17x64x64"]))
    for batch in loader:                        # one epoch from where the loader stands
        batch["latent_mean"], batch["latent_logvar"]   # (B, C, t, h, w) float32, the unscaled posterior
        batch["text"], batch["text_mask"]              # (B, L, C) float32, (B, L) int64; L = longest in batch
        batch["caption"], batch["key"], batch["bucket"]  # list[str], list[str], (frames, height, width) pixels
    z = (mean + (0.5 * logvar).exp() * noise) * loader.scale_factor     # the trainer's own generator
    loader.empty_text, loader.empty_mask        # (L0, C), (L0,): the empty caption (text dropout)
    state = loader.state_dict()                 # exact resume: loader.load_state_dict(state)

`uri` is a latent folder of `t2v dit encode` (or its `val/` sub-folder). The data component's
`BucketLoader` does the bucketing, the schedule and the resume position; this module adds the text
embeddings (looked up in the text store by each sample's caption key, right-padded with zeros) or, for
a folder written with `encode.mode: online`, runs the VAE and the text encoder on every batch. Both
give the same batches up to float rounding and the storage dtype (tests/dit/test_latents.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from components.core import manifest, storage
from components.data.loader import BucketLoader, LoaderConfig
from components.dit import latent_layout
from components.dit.captions import EMPTY_CAPTION
from components.dit.text import load_text_encoder
from components.dit.text_store import TextStore
from components.vae import load_vae

__all__ = ["LatentLoader", "LoaderConfig", "open_latents", "read_latent_manifest"]


def read_latent_manifest(uri: str | Path) -> tuple[dict[str, Any], str, str]:
    """(manifest, its URI, the latent folder's root URI) of a latent folder or its val/ sub-folder."""
    manifest_uri = manifest.manifest_uri(str(uri).rstrip("/"))
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"{manifest_uri}: no latent manifest (run `t2v dit encode`, or it has not finished)")
    data = storage.read_json(manifest_uri)
    if not isinstance(data, dict) or data.get("stage") != "latents":
        raise ValueError(f"{manifest_uri}: field 'stage' must be 'latents' (a folder of `t2v dit encode`)")
    folder = manifest_uri.rsplit("/", 1)[0]
    root = folder.rsplit("/", 1)[0] if data.get("root") == ".." else folder
    if root != folder and not storage.exists(storage.join(root, manifest.MANIFEST_FILE)):
        raise FileNotFoundError(f"{manifest_uri}: its latent folder {root} has no manifest (unfinished)")
    return data, manifest_uri, root


class LatentLoader:
    """Iterable over one epoch of this rank's latent batches at a time; see the module docstring."""

    def __init__(self, uri: str | Path, config: LoaderConfig | None = None, rank: int | None = None,
                 world_size: int | None = None, device: torch.device | str = "cpu"):
        self.manifest, manifest_uri, self.root = read_latent_manifest(uri)
        self.mode = self.manifest["mode"]
        self.scale_factor = float(self.manifest["scale_factor"])
        self.device = torch.device(device)
        if self.mode == "cached":
            self.loader = BucketLoader(manifest_uri, config, rank, world_size)
            self.text_store = TextStore(storage.join(self.root, self.manifest["text_store"]["uri"]))
            [empty] = self.text_store.lookup([self.text_store.empty_key])
            empty_text = empty.float()  # (L0, C)
        else:
            self.loader = BucketLoader(manifest_uri, config, rank, world_size, transform=latent_layout.cut_to_bucket)
            self.vae = load_vae(self.manifest["vae"]["uri"]).to(self.device)
            tiling = self.manifest["config"]["encode"]["tiling"]
            if tiling is not None:
                self.vae.config = self.vae.config.model_copy(
                    update={"tiling": self.vae.config.tiling.model_copy(update={"enabled": tiling})})
            encoder_uri = storage.join(self.root, self.manifest["text_encoder"]["uri"])
            self.text_encoder = load_text_encoder(encoder_uri, self.device)
            empty_text = self._encode_text([EMPTY_CAPTION])[0][0]  # (L0, C)
        self.empty_text = empty_text  # (L0, C) float32: the valid tokens of "", i.e. `</s>` (notes §3.2)
        self.empty_mask = torch.ones(empty_text.shape[0], dtype=torch.int64)  # (L0,)

    # ----------------------------------------------------------------- the BucketLoader's schedule and state

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def batch_sizes(self) -> dict[str, int]:
        return self.loader.batch_sizes

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.loader.load_state_dict(state)

    # ----------------------------------------------------------------- batches

    def __iter__(self):
        for batch in self.loader:
            if self.mode == "cached":
                mean, logvar = batch.pop("latent_mean").float(), batch.pop("latent_logvar").float()
                text, text_mask = self._stored_text(batch)
            else:
                with torch.inference_mode():
                    posterior = self.vae.encode(batch.pop("video").to(self.device))
                    mean, logvar = posterior.mean.float().cpu(), posterior.logvar.float().cpu()
                text, text_mask = self._encode_text(batch["caption"])
            yield {"latent_mean": mean, "latent_logvar": logvar, "text": text, "text_mask": text_mask,
                   "caption": batch["caption"], "key": batch["key"], "bucket": batch["bucket"],
                   "epoch": batch["epoch"], "step": batch["step"]}

    def _stored_text(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen captions' stored embeddings, right-padded to the longest: (B, L, C), (B, L)."""
        keys = []
        for caption, meta in zip(batch["caption"], batch["meta"], strict=True):
            keys.append(bytes.fromhex(meta["text_keys"][meta["captions"].index(caption)]))
        return _pad(self.text_store.lookup(keys))

    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the valid tokens, zero beyond them as in the store: (B, L, C) float32, (B, L)."""
        hidden, mask = self.text_encoder.encode(captions, pad_to_max=False)  # (B, L, C), (B, L)
        hidden, mask = hidden.float().cpu(), mask.cpu()
        return hidden * mask[..., None], mask


def _pad(embeddings: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(e.shape[0] for e in embeddings)
    text = torch.zeros(len(embeddings), longest, embeddings[0].shape[1])  # (B, L, C)
    mask = torch.zeros(len(embeddings), longest, dtype=torch.int64)  # (B, L)
    for row, embedding in enumerate(embeddings):
        text[row, : embedding.shape[0]] = embedding.float()
        mask[row, : embedding.shape[0]] = 1
    return text, mask


def open_latents(uri: str | Path, config: LoaderConfig | None = None, rank: int | None = None,
                 world_size: int | None = None, device: torch.device | str = "cpu") -> LatentLoader:
    """A `LatentLoader` over the latent folder `uri` (or its val/); `device` runs online encoding."""
    return LatentLoader(uri, config, rank, world_size, device)

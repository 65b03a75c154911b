"""A stand-in for `components.dit.latents` while its branch is not merged: a latent folder manifest and a
loader with the same interface (deterministic synthetic posteriors and text, global rank layout, exact
resume). `patch_loader()` makes `components.dit.train` use it."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

BUCKETS = ["1x32x32", "1x48x64", "1x64x64", "9x32x32", "9x48x64", "9x64x64", "17x48x64", "17x64x64"]
TEXT_CHANNELS = 64


def write_latent_folder(folder: Path, buckets: list[str] = BUCKETS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = [dict(zip(("frames", "height", "width"), map(int, b.split("x")), strict=True), name=b) for b in buckets]
    (folder / "manifest.json").write_text(json.dumps({
        "stage": "latents", "buckets": entries, "scale_factor": 0.5,
        "vae": {"uri": "/nowhere/vae/model", "sha256": "0" * 64},
        "text_encoder": {"uri": str(folder / "text_encoder"), "max_length": 16}}))
    return folder


class StandInLatents:
    def __init__(self, manifest_uri: str, config, rank: int = 0, world_size: int = 1):
        self.manifest_uri, self.rank, self.world_size = manifest_uri, rank, world_size
        self.buckets = list(config.buckets)
        self.batch_sizes = {}
        for name in self.buckets:
            frames, height, width = map(int, name.split("x"))
            tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
            self.batch_sizes[name] = max(1, min(config.max_batch_size, config.batch_tokens // tokens))
        self.seed, self.position, self.epoch_steps = config.seed, 0, 4 * len(self.buckets)
        self.scale_factor = 0.5
        self.empty_text = torch.zeros(2, TEXT_CHANNELS)
        self.empty_text[0] = 1.0
        self.empty_mask = torch.tensor([1, 0])

    def sample(self, name: str, index: int) -> dict:
        frames, height, width = map(int, name.split("x"))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()) % 997 * 10_007 + index)
        shape = (4, (frames - 1) // 4 + 1, height // 8, width // 8)
        length = 3 + index % 5
        return {"mean": torch.randn(shape, generator=generator), "logvar": -4 + torch.rand(shape, generator=generator),
                "text": torch.randn(length, TEXT_CHANNELS, generator=generator), "length": length}

    def __iter__(self):
        end = (self.position // self.epoch_steps + 1) * self.epoch_steps  # one epoch, from where it stands
        while self.position < end:
            name = self.buckets[self.position % len(self.buckets)]
            size = self.batch_sizes[name]
            first = (self.position // len(self.buckets) * self.world_size + self.rank) * size
            samples = [self.sample(name, first + i) for i in range(size)]
            longest = max(s["length"] for s in samples)
            text = torch.zeros(size, longest, TEXT_CHANNELS)
            mask = torch.zeros(size, longest, dtype=torch.long)
            for row, s in enumerate(samples):
                text[row, :s["length"]], mask[row, :s["length"]] = s["text"], 1
            self.position += 1
            yield {"latent_mean": torch.stack([s["mean"] for s in samples]),
                   "latent_logvar": torch.stack([s["logvar"] for s in samples]), "text": text, "text_mask": mask,
                   "caption": [f"caption {first + i}" for i in range(size)],
                   "key": [f"{name}-{first + i}" for i in range(size)],
                   "bucket": tuple(map(int, name.split("x")))}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def open_standin(data_manifest, buckets, config, stage_config, ctx):
    from components.data.loader import LoaderConfig

    loader_config = LoaderConfig(buckets=buckets, batch_tokens=stage_config.batch_tokens,
                                 max_batch_size=stage_config.max_batch_size, seed=config.train.seed)
    return StandInLatents(data_manifest, loader_config, ctx.dp_rank, ctx.dp_size)


def patch_loader(monkeypatch=None) -> None:
    import components.dit.train as train

    if monkeypatch is None:
        train.open_loader = open_standin
    else:
        monkeypatch.setattr(train, "open_loader", open_standin)

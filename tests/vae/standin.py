"""A stand-in for `components.data.loader` in VAE tests: deterministic synthetic clips, exact resume.

`patch_loader()` makes `components.vae.train` use it; `write_fake_manifest()` makes a `--data` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class StandInLoader:
    """Global batch i holds clips [i·G, (i+1)·G) with G = batch size × ranks; a rank yields its slice, so
    the clips of a step do not depend on the number of ranks (as the real loader's "global" layout)."""

    def __init__(self, manifest_uri: str, bucket: str, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.frames, self.height, self.width = (int(v) for v in bucket.split("x"))
        self.batch_size, self.seed, self.position = batch_size, seed, 0
        self.rank, self.world_size, self.manifest_uri = rank, world_size, manifest_uri

    def clip(self, index: int) -> torch.Tensor:
        """A smooth moving pattern (3, T, H, W) in [-1, 1], different per index."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        phase, speed = torch.rand(3, 1, 1, 1, generator=generator) * 6.28, torch.rand(3, 1, 1, 1, generator=generator)
        t = torch.arange(self.frames).view(1, -1, 1, 1)
        y = torch.linspace(0, 3.14, self.height).view(1, 1, -1, 1)
        x = torch.linspace(0, 3.14, self.width).view(1, 1, 1, -1)
        return torch.sin(x * 2 + y + phase + speed * t).clamp(-1, 1)

    def __iter__(self):
        while True:
            start = (self.position * self.world_size + self.rank) * self.batch_size
            video = torch.stack([self.clip(start + i) for i in range(self.batch_size)])  # (B, 3, T, H, W)
            self.position += 1
            yield {"video": video, "caption": ["a clip"] * self.batch_size,
                   "key": [f"clip-{start + i}" for i in range(self.batch_size)]}

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def open_standin(data_manifest, config, seed, ctx):
    return StandInLoader(data_manifest, config.data.bucket, config.data.batch_size, seed, ctx.dp_rank, ctx.dp_size)


def patch_loader(monkeypatch=None) -> None:
    """Use the stand-in in `components.vae.train` (undone with `monkeypatch`; for good in a subprocess)."""
    import components.vae.train as train

    if monkeypatch is None:
        train.open_loader = open_standin
    else:
        monkeypatch.setattr(train, "open_loader", open_standin)


def write_fake_manifest(folder: Path, name: str = "shards") -> Path:
    folder = Path(folder) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"stage": "shard", "name": name}))
    return folder

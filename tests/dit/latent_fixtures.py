"""Shared fixtures of the latent tests: source shards with a shared caption, a seeded tiny VAE, and a
latent folder encoded from them in each mode (built once per session)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from tests.data.clips import write_dataset
from tests.data.shard_fixtures import TEST_PRESET

# Sized for speed: two image and three video buckets, fed by the 64x64, 48x80 and 17-frame source buckets.
TARGETS = "encode.targets=[1x32x32,1x64x64,9x32x32,9x48x80,17x64x64]"
SHARED_CAPTION = "two clips share this caption"
SCALE_FACTOR = 0.13025  # not the SD default: proves the factor comes from the VAE folder


@pytest.fixture(scope="session")
def source_shards(tracking_home, tmp_path_factory) -> Path:
    """Shards of the data tests' clips; the first two clips share their first caption."""
    from components.data.shard import shard

    root = tmp_path_factory.mktemp("latent_source")
    annotations = write_dataset(root / "clips")
    records = json.loads(annotations.read_text())
    for record in records[:2]:
        record["cap"][0] = SHARED_CAPTION
    annotations.write_text(json.dumps(records))
    shard(annotations, root / "shards", preset=TEST_PRESET)
    return root / "shards"


@pytest.fixture(scope="session")
def tiny_vae_folder(tmp_path_factory) -> Path:
    """A seeded, narrow tiny VAE saved in our folder format (weights untrained: the encode path is tested)."""
    from components.vae.config import load_vae_config
    from components.vae.model import CausalVAE
    from components.vae.official import save_vae

    torch.manual_seed(0)
    config = load_vae_config("tiny", ["model.hidden_size=8", f"model.scale_factor={SCALE_FACTOR}"]).model
    folder = tmp_path_factory.mktemp("latent_vae") / "vae"
    save_vae(folder, CausalVAE(config).eval())
    return folder


def _encode(tmp_path_factory, source_shards, tiny_vae_folder, name: str, *overrides: str) -> tuple[Path, dict]:
    from components.dit.encode import encode_latents

    out = tmp_path_factory.mktemp(name) / "latents"
    result = encode_latents(source_shards, tiny_vae_folder, out, overrides=[TARGETS, *overrides])
    return out, result


@pytest.fixture(scope="session")
def cached_latents(tracking_home, tmp_path_factory, source_shards, tiny_vae_folder) -> tuple[Path, dict]:
    return _encode(tmp_path_factory, source_shards, tiny_vae_folder, "latents_cached", "encode.val_fraction=0.2")


@pytest.fixture(scope="session")
def online_latents(tracking_home, tmp_path_factory, source_shards, tiny_vae_folder) -> tuple[Path, dict]:
    return _encode(tmp_path_factory, source_shards, tiny_vae_folder, "latents_online", "encode.val_fraction=0.2",
                   "encode.mode=online")


def shard_contents(manifest_path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {member suffix: bytes} over every shard of a (cached) latent manifest."""
    folder = manifest_path.parent
    found: dict[str, dict[str, bytes]] = {}
    for bucket in json.loads(manifest_path.read_text())["buckets"]:
        for shard in bucket["shards"]:
            with tarfile.open(folder / shard["uri"]) as tar:
                for member in tar.getmembers():
                    key, suffix = member.name.split(".", 1)
                    found.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return found


def bucket_of_keys(folder: Path) -> dict[str, str]:
    """latent key -> bucket name, from a latent folder's index.json."""
    rows = json.loads((folder / "index.json").read_text())["shards"]
    return {key: row["bucket"] for row in rows for key in row["keys"]}

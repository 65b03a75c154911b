"""Fixtures for the evaluation tests: real `t2v data synth` shapes clips, decoded once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def synth_clips(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, np.ndarray, str | None]]:
    """36 shapes clips of `t2v data synth` (seed 3) as (caption, RGB frames (T, H, W, 3), defect or None)."""
    from components.data.synth import synthesize
    from components.data.video_io import decode_video

    folder = tmp_path_factory.mktemp("eval_synth")
    saved = {name: os.environ.get(name) for name in ("T2V_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["T2V_HOME"] = str(folder / "t2v-home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        synthesize(str(folder / "synth"), num=36, seed=3)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    annotations = json.loads((folder / "synth" / "annotations.json").read_text())
    truth = json.loads((folder / "synth" / "ground_truth.json").read_text())
    return [(entry["cap"], decode_video(Path(folder / "synth" / entry["path"]).read_bytes()),
             truth[entry["path"]]["defect"]) for entry in annotations]


from tests.data.shard_fixtures import tracking_home  # noqa: E402,F401
from tests.dit.latent_fixtures import cached_latents, source_shards, tiny_vae_folder  # noqa: E402,F401

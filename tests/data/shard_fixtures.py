"""Shared fixtures of the shard and loader tests: a tracking home, the synthetic clips, their shards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.data.clips import many_specs, write_dataset

TEST_PRESET = str(Path(__file__).with_name("shard_preset.yaml"))


@pytest.fixture(scope="session")
def tracking_home(tmp_path_factory):
    """MLflow into a temp sqlite file, never a configured server."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T2V_HOME", str(tmp_path_factory.mktemp("t2v_home")))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("T2V_PARENT_RUN_ID", raising=False)
        yield Path(os.environ["T2V_HOME"])


@pytest.fixture(scope="session")
def mixed_clips(tmp_path_factory):
    """14 clips of mixed shapes, rates and lengths, 3 of which fit no tiny bucket; returns the annotations path."""
    return write_dataset(tmp_path_factory.mktemp("mixed_clips"))


@pytest.fixture(scope="session")
def mixed_shards(tracking_home, mixed_clips, tmp_path_factory):
    from components.data.shard import shard

    out = tmp_path_factory.mktemp("mixed_shards")
    return out, shard(mixed_clips, out, preset=TEST_PRESET)


@pytest.fixture(scope="session")
def many_shards(tracking_home, tmp_path_factory):
    """48 fitting clips in 8 buckets, at most 3 samples per shard (so buckets span several shards)."""
    from components.data.shard import shard

    annotations = write_dataset(tmp_path_factory.mktemp("many_clips"), many_specs(48, seed=1))
    out = tmp_path_factory.mktemp("many_shards")
    result = shard(annotations, out, preset=TEST_PRESET, overrides=["shard.shard_max_samples=3"])
    return out, result, annotations

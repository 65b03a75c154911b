"""`vae.data.crop_larger`: training clips cut from every bucket that holds `data.bucket`'s size."""

import pytest
import torch

from components.core.distributed import Context
from components.data.shard import shard
from components.vae.config import load_vae_config
from components.vae.train_inputs import crop, open_loader
from tests.data.clips import ClipSpec, write_dataset
from tests.vae.test_train_shards import ROOT


def _config(*overrides):
    return load_vae_config("tiny", ["data.crop_larger=true", "data.bucket=9x32x48", *overrides])


def test_crops_have_the_bucket_size_and_depend_only_on_seed_batch_and_key():
    video = torch.arange(2 * 3 * 17 * 64 * 80, dtype=torch.float32).reshape(2, 3, 17, 64, 80)
    config = _config()
    cropped = crop(video, ["a", "b"], config, batch_index=5)
    assert cropped.shape == (2, 3, 9, 32, 48)
    # Each clip is a contiguous block of its source clip.
    for clip, source in zip(cropped, video, strict=True):
        start = (source == clip[0, 0, 0, 0]).nonzero()[0].tolist()
        assert torch.equal(clip, source[:, start[1]:start[1] + 9, start[2]:start[2] + 32, start[3]:start[3] + 48])
    # A clip's crop does not depend on its neighbours in the batch (the number of ranks) ...
    assert torch.equal(crop(video[1:], ["b"], config, batch_index=5)[0], cropped[1])
    # ... and differs between batches and seeds; a clip already of the size is kept as it is.
    assert not torch.equal(crop(video, ["a", "b"], config, batch_index=6), cropped)
    assert not torch.equal(crop(video, ["a", "b"], _config("train.seed=1"), batch_index=5), cropped)
    exact = video[:, :, :9, :32, :48]
    assert crop(exact, ["a", "b"], config, batch_index=5) is exact


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    """Clips in buckets 9x64x64 (2), 9x48x80 (1) and 1x64x64 (an image: not a video bucket)."""
    root = tmp_path_factory.mktemp("mixed")
    specs = [ClipSpec("square0", 64, 64, 12, 8.0), ClipSpec("square1", 64, 64, 12, 8.0),
             ClipSpec("wide", 48, 80, 12, 8.0), ClipSpec("still", 64, 64)]
    annotations = write_dataset(root / "clips", specs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("T2V_HOME", str(root / "home"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        shard(annotations, root / "shards", preset=str(ROOT / "tests" / "data" / "shard_preset.yaml"))
    return root / "shards"


def test_the_loader_serves_every_bucket_that_holds_the_crop(mixed_shards):
    ctx = Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loader = open_loader(str(mixed_shards / "manifest.json"), _config("data.bucket=9x48x48"), 0, ctx)
    assert sorted(b.name for b in loader.bucket_shapes) == ["9x48x80", "9x64x64"]
    assert sorted(loader.batch_sizes.values()) == [1, 1]
    only_square = open_loader(str(mixed_shards / "manifest.json"), _config("data.bucket=9x64x64"), 0, ctx)
    assert [b.name for b in only_square.bucket_shapes] == ["9x64x64"]
    with pytest.raises(ValueError, match="no bucket holds a 9x96x96 crop"):
        open_loader(str(mixed_shards / "manifest.json"), _config("data.bucket=9x96x96"), 0, ctx)


def test_image_crops_several_per_clip_each_a_single_frame_of_it():
    video = torch.arange(2 * 3 * 17 * 64 * 80, dtype=torch.float32).reshape(2, 3, 17, 64, 80)
    config = _config("data.bucket=1x32x32", "data.crops_per_clip=3")
    cropped = crop(video, ["a", "b"], config, batch_index=5)
    assert cropped.shape == (6, 3, 1, 32, 32)  # clip a's three crops, then clip b's
    for index, image in enumerate(cropped):
        source = video[index // 3]
        start = (source == image[0, 0, 0, 0]).nonzero()[0].tolist()
        assert torch.equal(image, source[:, start[1]:start[1] + 1, start[2]:start[2] + 32, start[3]:start[3] + 32])
    assert len({tuple(image[0, 0, 0, :2].tolist()) for image in cropped}) == 6  # independent offsets
    assert torch.equal(crop(video[1:], ["b"], config, batch_index=5), cropped[3:])


def test_a_phase_sets_its_own_bucket_crops_and_lr():
    config = load_vae_config("tiny", ["train.phase1.bucket=1x32x32", "train.phase1.crops_per_clip=4",
                                      "train.phase1.batch_size=2", "train.phase2.lr=1e-4", "train.lr=3e-4"])
    phase1, phase2 = config.for_phase(1), config.for_phase(2)
    assert (phase1.data.bucket, phase1.data.crops_per_clip, phase1.data.batch_size, phase1.train.lr) == (
        "1x32x32", 4, 2, 3e-4)
    assert (phase2.data.bucket, phase2.data.crops_per_clip, phase2.data.batch_size, phase2.train.lr) == (
        config.data.bucket, 1, 1, 1e-4)
    with pytest.raises(ValueError, match="key 'train.phase1.bucket'.*frames must be 4k\\+1"):
        load_vae_config("tiny", ["train.phase1.bucket=2x32x32"])
    with pytest.raises(ValueError, match="crops_per_clip > 1 needs crop_larger"):
        load_vae_config("tiny", ["data.crop_larger=false", "data.crops_per_clip=2"])
    with pytest.raises(ValueError, match="train.phase1 with data: .*crops_per_clip > 1 needs crop_larger"):
        load_vae_config("tiny", ["data.crop_larger=false"])  # the tiny preset's phase 1 cuts 4 crops a clip

"""Sampling (reference notes §4): a DiT folder, a registered model or an official folder in, uint8 videos out;
the same seed gives the same frames, sizes are checked before anything loads, the record names everything."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from components.core import storage, tracking
from components.dit import official
from components.dit.sample import Sampler, sample
from components.dit.sample_sources import FOLDER_TAG, folder_sha256, resolve_sources
from tests.dit.fixtures_models import SCALE_FACTOR, TINY_CLIP, make_trained_folder, save_tiny_vae

PROMPTS = ["a red circle moving left on a blue background", "a green square moving up on a black background"]
FAST = {**TINY_CLIP, "steps": 3, "guidance": 4.5, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return make_trained_folder(tmp_path_factory.mktemp("trained"))


def test_same_seed_same_frames_other_seed_other_frames(trained):
    first = sample(str(trained), PROMPTS, seed=7, **FAST)
    assert first.shape == (2, 9, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, sample(str(trained), PROMPTS, seed=7, **FAST))
    other = sample(str(trained), PROMPTS, seed=8, **FAST)
    assert not np.array_equal(first, other)
    # Prompt i is seeded with seed + i: prompt 1 at seed 7 is prompt 0's slot at seed 8.
    assert np.array_equal(first[1], sample(str(trained), PROMPTS[1:], seed=8, **FAST)[0])


def test_batching_keeps_each_prompts_noise(trained):
    one_by_one = sample(str(trained), PROMPTS, seed=3, batch=1, **FAST)
    batched = sample(str(trained), PROMPTS, seed=3, batch=2, **FAST)
    # Same noise per prompt; only the batched matmuls' rounding differs.
    assert np.abs(one_by_one.astype(int) - batched.astype(int)).max() <= 2


@pytest.mark.parametrize("scheduler", ["dpm_solver", "ddim"])
def test_other_schedulers_are_deterministic(trained, scheduler):
    videos = [sample(str(trained), PROMPTS[:1], scheduler=scheduler, **FAST) for _ in range(2)]
    assert np.array_equal(*videos)
    assert not np.array_equal(videos[0], sample(str(trained), PROMPTS[:1], **FAST))


def test_guidance_and_the_negative_prompt_change_the_video(trained):
    guided = sample(str(trained), PROMPTS[:1], **FAST)
    unguided = sample(str(trained), PROMPTS[:1], **{**FAST, "guidance": 1.0})
    steered = sample(str(trained), PROMPTS[:1], negative_prompt="blurry", **FAST)
    assert not np.array_equal(guided, unguided) and not np.array_equal(guided, steered)


def test_sources_come_from_conditioning_json(trained):
    sources = resolve_sources(str(trained))
    assert sources.vae == str(trained.parent / "vae") and sources.text_encoder == str(trained.parent / "text-encoder")
    assert sources.scale_factor == SCALE_FACTOR and sources.text_max_length == 96
    assert sources.model_folder == storage.join(str(trained), "model_ema")
    assert resolve_sources(str(trained), weights="model").model_folder == storage.join(str(trained), "model")
    # A stage's model subfolder finds the conditioning beside it.
    assert resolve_sources(str(trained / "model_ema")).vae == sources.vae


def test_ema_and_raw_weights_differ(trained):
    assert not np.array_equal(sample(str(trained), PROMPTS[:1], **FAST),
                              sample(str(trained), PROMPTS[:1], weights="model", **FAST))


def test_scale_factor_divides_the_latents_before_decoding(trained):
    sampler = Sampler.load(str(trained), device="cpu")
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = sampler.vae.decode(latents / SCALE_FACTOR)[0].clamp(-1, 1)
    expected = ((expected + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert np.array_equal(sampler.decode(latents, **TINY_CLIP), expected)


@pytest.mark.parametrize("size, message", [
    ({"frames": 10}, "frames 10 must be 1 + k * 4"),
    ({"height": 40}, "height 40 must be a positive multiple of 16 (VAE compression 8 x DiT patch 2)"),
    ({"width": 0}, "width 0 must be a positive multiple of 16"),
])
def test_a_bad_size_fails_before_any_model_loads(trained, tmp_path, size, message):
    broken = tmp_path / "stage"
    shutil.copytree(trained, broken)
    (broken / "model_ema" / official.WEIGHTS_FILE).unlink()  # loading would fail on this
    with pytest.raises(ValueError, match=re.escape(message)):
        sample(str(broken), PROMPTS, **{**FAST, **size})


def test_bad_options_are_clear(trained):
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        sample(str(trained), PROMPTS, scheduler="heun", **FAST)
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        sample(str(trained), PROMPTS, **{**FAST, "steps": 0})
    with pytest.raises(ValueError, match="at least one prompt"):
        sample(str(trained), "one string", **FAST)


def test_official_folder_needs_vae_and_text_encoder(tmp_path):
    from components.dit.text import TextEncoderConfig, TinyTextEncoderConfig, load_text_encoder

    reference = "tests/dit/fixtures/reference"  # written by the reference code; caption width 16
    with pytest.raises(ValueError, match="no conditioning.json beside the model .* --vae and --text-encoder"):
        sample(reference, PROMPTS, **FAST)
    vae = str(save_tiny_vae(tmp_path / "vae"))
    narrow = TextEncoderConfig(source="tiny", tiny=TinyTextEncoderConfig(d_model=16, num_heads=2, d_kv=8))
    text = load_text_encoder(narrow).save(tmp_path / "text-16")
    videos = sample(reference, PROMPTS[:1], vae=vae, text_encoder=text, frames=9, height=64, width=96, steps=2,
                    guidance=4.5, device="cpu")
    assert videos.shape == (1, 9, 64, 96, 3)
    wide = load_text_encoder(TextEncoderConfig(source="tiny")).save(tmp_path / "text-64")
    with pytest.raises(ValueError, match="is 64 wide, the DiT tests/dit/fixtures/reference takes captions 16 wide"):
        sample(reference, PROMPTS[:1], vae=vae, text_encoder=wide, frames=9, height=64, width=96, steps=2, device="cpu")


def _register(run, artifact_path: str, tags: dict, alias: str) -> str:
    version = tracking.register_model("t2v-dit", run, artifact_path, tags=tags)
    tracking.set_model_alias("t2v-dit", alias, version)
    return version


def test_registered_alias_resolves_by_folder_tag_or_artifacts(tracking_server, trained, tmp_path):
    expected = sample(str(trained), PROMPTS[:1], **FAST)
    run = tracking.start_run("dit-stage1")
    # The trainer's convention: a `folder` tag names the stage folder.
    tagged = _register(run, "model_ema", {FOLDER_TAG: str(trained)}, "stage1")
    sources = resolve_sources("models:/t2v-dit@stage1")
    assert sources.dit_folder == str(trained) and sources.registered_model["version"] == tagged
    assert np.array_equal(sample("models:/t2v-dit@stage1", PROMPTS[:1], **FAST), expected)
    # Without the tag, the version's own artifacts are downloaded (weights with their conditioning.json).
    logged = tmp_path / "logged"
    shutil.copytree(trained / "model_ema", logged)
    shutil.copy(trained / "conditioning.json", logged)
    run.log_artifact(logged, "dit")
    untagged = _register(run, "dit", {}, "stage2")
    assert np.array_equal(sample("models:/t2v-dit@stage2", PROMPTS[:1], **FAST), expected)
    assert np.array_equal(sample(f"models:/t2v-dit/{untagged}", PROMPTS[:1], **FAST), expected)
    run.finish()
    # The trainer's layout: model_ema/ registered, conditioning.json logged at the run's root.
    trainer_run = tracking.start_run("dit-stage3")
    trainer_run.log_artifact(trained / "model_ema", "model_ema")
    _register(trainer_run, "model_ema", {}, "stage3")
    with pytest.raises(ValueError, match="no conditioning.json beside the model"):
        resolve_sources("models:/t2v-dit@stage3")  # nothing names the VAE yet
    trainer_run.log_artifact(trained / "conditioning.json")
    _register(trainer_run, "model_ema", {}, "stage4")
    assert np.array_equal(sample("models:/t2v-dit@stage4", PROMPTS[:1], **FAST), expected)
    trainer_run.finish()
    with pytest.raises(ValueError, match="models:/t2v-dit@stage9: no such registered model version"):
        resolve_sources("models:/t2v-dit@stage9")
    with pytest.raises(ValueError, match="expected models:/<name>@<alias>"):
        resolve_sources("models:/t2v-dit")


def test_folder_sha256_covers_names_and_contents(trained, tmp_path):
    copy = tmp_path / "vae"
    shutil.copytree(trained.parent / "vae", copy)
    assert folder_sha256(str(copy)) == folder_sha256(str(trained.parent / "vae"))
    (copy / "extra.txt").write_text("x")
    assert folder_sha256(str(copy)) != folder_sha256(str(trained.parent / "vae"))
    assert folder_sha256("tiny") is None

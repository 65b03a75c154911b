"""The `laion` aesthetic scorer, with a tiny CLIP and head built here (no download, no real weights):
embedding -> L2 normalisation -> head, the public head's state-dict layout, weights only from disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.filter import run_filter
from components.data.filter.aesthetic import FrameSample, LaionAesthetic, aesthetic_head

PUBLIC_HEAD_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def tiny_laion(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    head = aesthetic_head(16)
    with torch.no_grad():  # push the output into a 1-10-like range so the test numbers read naturally
        head.layers[7].bias.fill_(5.0)
    head_path = folder / "head.pth"
    torch.save(head.state_dict(), head_path)
    return str(folder), str(head_path)


def test_head_layout_matches_the_public_predictor() -> None:
    head = aesthetic_head()
    assert set(head.state_dict()) == PUBLIC_HEAD_KEYS
    assert head.state_dict()["layers.0.weight"].shape == (1024, 768)
    assert head.state_dict()["layers.7.weight"].shape == (1, 16)


def test_score_is_head_of_the_normalised_embedding(tiny_laion) -> None:
    folder, head_path = tiny_laion
    scorer = LaionAesthetic(folder, head_path)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    with torch.no_grad():
        pixels = scorer.processor(images=[np.ascontiguousarray(f[..., ::-1]) for f in frames], return_tensors="pt")["pixel_values"]
        raw = scorer.model(pixel_values=pixels).image_embeds  # (3, 16)
        unit = raw / raw.norm(dim=-1, keepdim=True)
        expected = scorer.head(unit).mean().item()
        unnormalised = scorer.head(raw).mean().item()
    samples = [FrameSample(image=f, luma_crop=f[..., 1]) for f in frames]
    assert scorer(samples) == pytest.approx(expected, abs=1e-5)
    assert scorer(samples) != pytest.approx(unnormalised, abs=1e-3)  # normalisation is not skipped
    assert torch.allclose(scorer.embed(frames).norm(dim=-1), torch.ones(3), atol=1e-5)


def test_weights_are_never_fetched_implicitly(tiny_laion, tmp_path: Path) -> None:
    _, head_path = tiny_laion
    with pytest.raises(ValueError, match="allow_download"):
        LaionAesthetic("openai/clip-vit-large-patch14-not-cached-here", head_path)
    with pytest.raises(ValueError, match="head_weights"):
        LaionAesthetic(tiny_laion[0], str(tmp_path / "missing.pth"))


def test_filter_stage_with_the_laion_scorer(tiny_laion, synth_shapes: Path, tmp_path: Path) -> None:
    folder, head_path = tiny_laion
    overrides = ["filter.workers=1", "filter.aesthetic.scorer=laion", f"filter.aesthetic.laion.clip_model={folder}",
                 f"filter.aesthetic.laion.head_weights={head_path}", "filter.aesthetic.min_score=-100"]
    summary = run_filter(str(synth_shapes / "annotations.json"), str(tmp_path / "out"), overrides=overrides)
    kept = json.loads((tmp_path / "out/kept.json").read_text())
    assert summary["num_kept"] == len(kept) >= 20
    scores = [e["aesthetic"] for e in kept]
    assert len(set(scores)) > 1 and all(np.isfinite(scores))


def test_misconfigured_laion_fails_before_any_work(tiny_laion, synth_shapes: Path, tmp_path: Path) -> None:
    from components.core.config import ConfigError

    with pytest.raises(ConfigError, match="laion.clip_model"):
        run_filter(str(synth_shapes / "annotations.json"), str(tmp_path / "a"), overrides=["filter.aesthetic.scorer=laion"])
    overrides = ["filter.aesthetic.scorer=laion", f"filter.aesthetic.laion.clip_model={tiny_laion[0]}",
                 f"filter.aesthetic.laion.head_weights={tmp_path / 'nope.pth'}"]
    with pytest.raises(ValueError, match="head_weights"):
        run_filter(str(synth_shapes / "annotations.json"), str(tmp_path / "b"), overrides=overrides)
    assert not (tmp_path / "b").exists()

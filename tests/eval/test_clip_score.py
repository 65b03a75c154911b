import numpy as np
import pytest
import torch

from components.eval.clip_score import ClipScorer
from tests.eval.tiny_clip import save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return str(save_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))


def _by_hand(scorer: ClipScorer, frames: np.ndarray, prompt: str) -> float:
    """The towers and projections one by one: 100 * max(cos, 0) per frame, mean over frames."""
    model, processor = scorer.model, scorer.processor
    with torch.no_grad():
        tokens = processor.tokenizer([prompt], return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output)[0]
        pixels = processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        images = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    cosine = (images @ text) / (images.norm(dim=-1) * text.norm())
    return float((100 * cosine.clamp(min=0)).mean())


def test_clip_score_matches_the_towers_by_hand(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8) for _ in range(3)]
    prompts = ["a red circle moves slowly left on a black background", "a blue square", "a green star"]
    report = scorer.score(videos, prompts)
    expected = [_by_hand(scorer, v, p) for v, p in zip(videos, prompts, strict=True)]
    assert report["per_video"] == pytest.approx(expected, abs=1e-4)
    assert report["mean"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert all(0 <= v <= 100 for v in report["per_video"]) and "torchmetrics" in report["convention"]
    # Repeating every frame changes nothing: a mean over frames.
    assert scorer.score_video(np.concatenate([videos[0]] * 2), prompts[0]) == pytest.approx(
        report["per_video"][0], abs=1e-4)


def test_missing_models_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="clip.model: no CLIP folder"):
        ClipScorer(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="downloads are off"):
        ClipScorer("t2v-test/not-a-cached-clip")

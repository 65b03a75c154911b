import cv2
import numpy as np
from PIL import Image

from components.eval import report
from components.eval.adherence import score_videos


def _report(videos, prompts):
    return {
        "protocol": {"prompt_source": "shapes", "prompts": [{"text": p, "seed": 7 + i} for i, p in enumerate(prompts)],
                     "heldout": {"prompts": 2, "unseen_triples": 2, "unseen_captions": 2},
                     "sampling": {"scheduler": "euler_ancestral", "steps": 25, "guidance": 4.5, "frames": 9,
                                  "height": 32, "width": 32},
                     "models": {"dit": {"uri": "runs/dit-stage1", "sha256": "ab" * 32}}, "device": "cpu"},
        "adherence": score_videos(videos, prompts),
        "val_loss": {"timesteps": [250, 750], "loss": [0.5, 0.25], "mean": 0.375, "samples": 4},
        "clip_score": None,
        "timing": {"sampling_seconds_per_clip": 1.5},
    }


def _videos():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for _ in range(2)]


PROMPTS = ["a red circle moves slowly left on a black background",
           "a cyan star moves quickly up on a dark purple background"]


def test_metric_names_are_stage_independent():
    metrics = report.mlflow_metrics(_report(_videos(), PROMPTS))
    assert {"eval/adherence/background", "eval/adherence/colour", "eval/adherence/direction",
            "eval/adherence_shuffled/colour", "eval/adherence_vs_chance/background", "eval/val_loss/mean",
            "eval/val_loss/t0250", "eval/val_loss/t0750", "eval/seconds_per_clip"} <= set(metrics)
    assert len(metrics) == 3 * 3 + 3 + 1
    assert metrics["eval/val_loss/t0750"] == 0.25


def test_summary_has_the_headline_numbers():
    text = report.summary_markdown(_report(_videos(), PROMPTS), "DiT eval: stage 1")
    assert text.startswith("# DiT eval: stage 1")
    assert "| background |" in text and "| 0.167 |" in text  # chance of the background
    assert "| loss | 0.5000 | 0.2500 | 0.3750 |" in text
    assert "seeds 7..8" in text and "2/2 prompts" in text


def test_grid_png_and_animated_gif(tmp_path):
    videos, data = _videos(), _report(_videos(), PROMPTS)
    png = report.save_grid(videos, PROMPTS, data["adherence"]["videos"], tmp_path / "grid.png", max_frames=5)
    grid = cv2.imread(str(png))
    assert grid.shape[1] == 5 * 32 and grid.shape[0] > 2 * 32  # two rows of 5 frames under caption bands
    gif = Image.open(report.save_animated_grid(videos, tmp_path / "grid.gif", fps=8, columns=4, scale=2))
    assert gif.n_frames == 9 and gif.size == (4 * 64, 64)


def test_summary_says_why_the_validation_loss_is_missing():
    data = {**_report(_videos(), PROMPTS), "val_loss": None, "val_loss_skipped": "latents: no held-out val/ set"}
    text = report.summary_markdown(data, "DiT eval: stage 1")
    assert "## Validation loss: skipped (latents: no held-out val/ set)" in text
    assert "eval/val_loss/mean" not in report.mlflow_metrics(data)

"""The demo's quality goals at its fixed seeds: the whole tiny chain with the `t2v-full/local` deployment's
own parameters (prefect.yaml), run in process by `bench/demo_quality.py`, reconstructs the shapes clips
and makes videos that follow their prompts.

About 10 minutes on two cores, so `make test` leaves it out (marker `quality`); `make test-quality` runs
it. Everything is seeded (data, training order, sampling), so the numbers repeat on one machine; what CPU
float arithmetic changes elsewhere is why the bounds are goals, not the measured values (bench/RESULTS.md).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.quality


@pytest.fixture(scope="module")
def numbers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demo-quality")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "demo_quality.py"), "--root", str(root / "demo"),
                           "--json", str(root / "numbers.json")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((root / "numbers.json").read_text())


def test_the_demo_vae_reconstructs_the_shapes_clips(numbers):
    assert numbers["vae"]["psnr"] >= 24.0  # the goal for the demo's vae-eval


def test_generated_videos_show_the_background_colour_of_their_prompts(numbers):
    assert numbers["adherence"]["ratio_to_chance"]["background"] >= 3.0


@pytest.mark.xfail(reason="issue #15, open: the demo's DiT draws several blobs of mixed colours (1.3x chance "
                          "on 48 and 96 prompts); the VAE no longer limits it (read-back 0.89)", strict=False)
def test_generated_videos_show_the_object_colour_of_their_prompts(numbers):
    assert numbers["adherence"]["ratio_to_chance"]["colour"] > 2.0


def test_the_shuffled_control_lands_near_chance(numbers):
    """The same videos scored against other prompts: if this is well above chance, the reader scores,
    not the model. 48 prompts: one standard error is 0.05-0.06 at these chance levels."""
    adherence = numbers["adherence"]
    for attribute, chance in adherence["chance"].items():
        assert abs(adherence["shuffled"][attribute] - chance) <= 0.15, attribute

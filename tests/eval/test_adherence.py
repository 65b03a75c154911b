import cv2
import numpy as np
import pytest

from components.eval.adherence import CHANCE, derangement, parse_caption, read_video, score_videos


def _good(synth_clips):
    return [(caption, frames) for caption, frames, defect in synth_clips if defect is None]


def _like_the_demo(frames: np.ndarray, num_frames: int = 9, size: int = 64, blur: float = 0.0) -> np.ndarray:
    """What a tiny generation looks like: `num_frames` of the clip's first 17 at size x size (squashed, not
    cropped: a centre crop would cut the object out of a wide clip), optionally blurred like a weak decoder."""
    picked = frames[np.linspace(0, min(len(frames), 17) - 1, num_frames).round().astype(int)]
    resized = [cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in picked]
    return np.stack([cv2.GaussianBlur(f, (0, 0), blur) if blur else f for f in resized])


def test_captions_parse_back_to_synth_text(synth_clips):
    for caption, _, _ in synth_clips:
        assert parse_caption(caption).text() == caption
    assert parse_caption("A red circle moves slowly left on a dark blue background.").background == "dark blue"
    with pytest.raises(ValueError, match="not a synthetic shapes caption"):
        parse_caption("a slow pan left over a photograph of a cat")


def test_synth_clips_read_back_their_own_captions(synth_clips):
    good = _good(synth_clips)
    assert len(good) >= 25
    report = score_videos([frames for _, frames in good], [caption for caption, _ in good], control_seed=0)
    assert report["accuracy"] == {"background": 1.0, "colour": 1.0, "direction": 1.0}
    # The control: the same videos against deranged prompts land near chance (36 clips: loose bounds).
    for name, value in report["shuffled"].items():
        assert value <= CHANCE[name] + 0.2, (name, value)
    assert all(row["prompt"] != row["shuffled_prompt"] for row in report["videos"])


@pytest.mark.parametrize("num_frames, blur", [(9, 0.0), (17, 0.0), (9, 2.0), (9, 4.0)])
def test_readable_after_a_lossy_round_trip(synth_clips, num_frames, blur):
    good = _good(synth_clips)
    report = score_videos([_like_the_demo(frames, num_frames, 64, blur) for _, frames in good],
                          [caption for caption, _ in good])
    assert report["accuracy"]["background"] == 1.0
    assert report["accuracy"]["colour"] >= 0.95
    assert report["accuracy"]["direction"] >= 0.9


def test_rgb_is_not_bgr(synth_clips):
    """The reader takes RGB; the same frames in OpenCV's BGR order read as other colours (red <-> blue, dark
    blue <-> brown; grey ones stay)."""
    good = _good(synth_clips)
    report = score_videos([frames[..., ::-1].copy() for _, frames in good], [caption for caption, _ in good])
    assert report["accuracy"]["colour"] < 0.6 and report["accuracy"]["background"] < 0.9


def test_noise_scores_near_chance():
    rng = np.random.default_rng(0)
    prompts = [f"a {c} square moves slowly {d} on a {b} background" for c, d, b in zip(
        ["red", "green", "blue", "yellow", "white", "orange", "magenta", "cyan"] * 6,
        ["left", "right", "up", "down"] * 12,
        ["black", "dark blue", "dark green", "dark gray", "dark purple", "brown"] * 8, strict=True)]
    videos = [rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for _ in prompts]
    report = score_videos(videos, prompts)
    for name in CHANCE:
        assert report["accuracy"][name] <= CHANCE[name] + 0.2, name
    reading = read_video(videos[0])
    assert reading.direction in ("left", "right", "up", "down")


def test_derangement_is_seeded_and_has_no_fixed_point():
    for count in (2, 3, 10, 24):
        order = derangement(count, seed=5)
        assert sorted(order) == list(range(count)) and all(i != j for i, j in enumerate(order))
        assert order == derangement(count, seed=5)
    with pytest.raises(ValueError):
        derangement(1, seed=0)


def test_frames_must_be_uint8_thwc():
    with pytest.raises(ValueError, match="uint8"):
        read_video(np.zeros((9, 3, 32, 32), dtype=np.uint8))

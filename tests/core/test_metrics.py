"""PSNR, SSIM and LPIPS per frame against known values and scikit-image; aggregation as in §1.11."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from components.core.metrics import LPIPSMetric, MetricAggregator, psnr, ssim, video_metrics


def test_psnr_identical_frames_is_capped_at_100():
    frames = torch.rand(2, 3, 3, 16, 16)
    assert torch.equal(psnr(frames, frames), torch.full((2, 3), 100.0))


@pytest.mark.parametrize("offset", [0.01, 0.1, 0.25])
def test_psnr_of_constant_offset_is_analytic(offset):
    target = torch.rand(4, 3, 8, 8) * 0.5
    value = psnr(target + offset, target)
    assert value.shape == (4,)
    assert torch.allclose(value, torch.full((4,), -10 * math.log10(offset**2)), atol=1e-4)


def test_psnr_mse_is_over_channels_and_pixels_of_each_frame():
    target = torch.zeros(2, 3, 4, 4)
    prediction = target.clone()
    prediction[1, 0, 0, 0] = 1.0  # one wrong value in 48: MSE = 1/48
    value = psnr(prediction, target)
    assert value[0] == 100.0
    assert value[1].item() == pytest.approx(10 * math.log10(48), abs=1e-4)


def test_ssim_identical_is_one_and_shape_is_per_frame():
    frames = torch.rand(2, 5, 3, 24, 24)
    value = ssim(frames, frames)
    assert value.shape == (2, 5)
    assert torch.allclose(value, torch.ones(2, 5), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_scikit_image(seed):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(3, 40, 48, generator=generator)
    # Correlated but different: smooth target plus noise, and a brightness/contrast change.
    prediction = (0.8 * target + 0.1 + 0.1 * torch.rand(3, 40, 48, generator=generator)).clamp(0, 1)
    ours = ssim(prediction, target).item()
    reference = structural_similarity(
        prediction.permute(1, 2, 0).numpy().astype(np.float64), target.permute(1, 2, 0).numpy().astype(np.float64),
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1,
    )
    assert ours == pytest.approx(reference, abs=1e-5)


def test_shape_mismatch_and_small_frames_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_lpips_random_backbone_is_deterministic_and_zero_on_identity():
    first, second = LPIPSMetric("alex", random_backbone=True), LPIPSMetric("alex", random_backbone=True)
    a = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    b = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    assert torch.allclose(first(a, a), torch.zeros(2, 3), atol=1e-6)
    distance = first(a, b)
    assert distance.shape == (2, 3) and (distance > 0).all()
    assert torch.equal(distance, second(a, b))
    assert first.describe() == {"backbone": "alex", "random_backbone": True, "comparable_to_published": False}


def test_video_metrics_convert_ranges_and_return_per_frame_values():
    target = torch.rand(2, 3, 5, 16, 16) * 2 - 1  # (B, C, T, H, W) in [-1, 1]
    prediction = target + 0.2  # 0.1 on [0, 1] (before clamping)
    prediction[:, :, 0] = target[:, :, 0]  # first frame exact
    values = video_metrics(prediction.clamp(-1, 1), target)
    assert values["psnr"].shape == (2, 5) and values["ssim"].shape == (2, 5)
    assert torch.all(values["psnr"][:, 0] == 100.0)
    assert torch.all(values["psnr"][:, 1:] >= 20.0 - 1e-4)  # clamping only reduces the error


def test_aggregation_is_per_timestep_then_timesteps_then_batches():
    aggregator = MetricAggregator()
    aggregator.update({"psnr": torch.tensor([[10.0, 20.0], [30.0, 40.0]])})  # timestep means 20, 30 -> 25
    aggregator.update({"psnr": torch.tensor([[0.0, 2.0]])})  # -> 1
    assert aggregator.result() == {"psnr": pytest.approx(13.0)}
    assert aggregator.per_timestep() == {"psnr": pytest.approx([10.0, 16.0])}
    assert aggregator.num_batches == 2
    with pytest.raises(ValueError, match="per-timestep"):
        aggregator.update({"psnr": torch.zeros(1, 3)})


def test_real_lpips_backbone_offline_fails_with_a_clear_error(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached backbone weights here

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ValueError, match="random-backbone"):
        LPIPSMetric("alex", random_backbone=False)

"""Inference kernels: each equals the plain convolution it replaces, up to float rounding, on the
shapes that select it (the tiny model's 8-32 channels never reach the wide-channel paths)."""

import pytest
import torch
import torch.nn.functional as F

from components.vae import streaming
from components.vae.streaming import FastConv2d, NearestUpsampleConv, causal_conv_stream, channels_last


def _relative_error(result: torch.Tensor, expected: torch.Tensor) -> float:
    return ((result - expected).abs().max() / expected.abs().max()).item()


def _causal_conv_plain(conv: torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    front = conv.kernel_size[0] - 1
    return conv(torch.cat([x[:, :, :1].expand(-1, -1, front, -1, -1), x], dim=2))


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("rows", [False, True])
def test_causal_conv_stream_equals_padded_conv(monkeypatch, frames, rows):
    """Folded first frames, Winograd pairs, an odd last frame, chunks of 2 frames, row Winograd on/off."""
    torch.manual_seed(0)
    monkeypatch.setattr(streaming, "ROW_WINOGRAD_MIN_CHANNELS", 8 if rows else 10**6)
    conv = torch.nn.Conv3d(8, 6, 3, padding=(0, 1, 1))
    x = torch.randn(2, 8, frames, 32, 34)
    monkeypatch.setattr(streaming, "CHUNK_BYTES", x[:, :, :2].numel() * 4)
    with torch.inference_mode():
        expected = _causal_conv_plain(conv, x)
        result = causal_conv_stream(conv, 2, channels_last(x))
    assert result.shape == expected.shape and result.is_contiguous(memory_format=torch.channels_last_3d)
    assert _relative_error(result, expected) < 1e-5


def test_causal_conv_stream_accumulates_and_small_frames_take_the_plain_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 4, 3, padding=(0, 1, 1))
    x = torch.randn(1, 4, 5, 8, 8)  # 64 pixels per frame: below MIN_FRAME_PIXELS
    residual = torch.randn(1, 4, 5, 8, 8)
    with torch.inference_mode():
        out = causal_conv_stream(conv, 2, channels_last(x), out=channels_last(residual.clone()))
        expected = _causal_conv_plain(conv, x) + residual
    assert _relative_error(out, expected) < 1e-6


@pytest.mark.parametrize("height, width", [(32, 32), (64, 40), (34, 32)])
def test_row_winograd_equals_conv2d(monkeypatch, height, width):
    """Even heights take F(2, 3) along rows (zero padding at both ends), odd half-heights too."""
    torch.manual_seed(0)
    monkeypatch.setattr(streaming, "ROW_WINOGRAD_MIN_CHANNELS", 16)
    weight, bias = torch.randn(12, 16, 3, 3), torch.randn(12)
    x = channels_last(torch.randn(3, 16, height, width))
    fast = FastConv2d(weight, bias, (1, 1), (1, 1))
    assert fast.rows
    with torch.inference_mode():
        assert _relative_error(fast(x), F.conv2d(x, weight, bias, padding=1)) < 1e-5


def test_row_winograd_is_used_only_where_it_pays():
    weight = torch.zeros(4, 256, 3, 3)
    assert FastConv2d(weight, None, (1, 1), (1, 1)).rows
    assert not FastConv2d(torch.zeros(4, 128, 3, 3), None, (1, 1), (1, 1)).rows  # narrow input
    assert not FastConv2d(weight, None, (2, 2), (1, 1)).rows  # strided
    assert not FastConv2d(torch.zeros(4, 256, 1, 1), None, (1, 1), (0, 0)).rows  # 1x1


@pytest.mark.parametrize("height, width", [(5, 7), (16, 16)])
def test_nearest_upsample_conv_equals_upsample_then_conv(height, width):
    torch.manual_seed(0)
    weight, bias = torch.randn(6, 5, 3, 3), torch.randn(6)
    x = channels_last(torch.randn(2, 5, height, width))
    with torch.inference_mode():
        expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)
        result = NearestUpsampleConv(weight, bias)(x)
    assert result.shape == (2, 6, 2 * height, 2 * width)
    assert _relative_error(result, expected) < 1e-5


@pytest.mark.parametrize("shape", [(2, 8, 5, 6, 7), (6, 16, 9, 10)])
def test_group_moments_match_float64_statistics(monkeypatch, shape):
    """Blocked, shifted sums over a channels-last tensor with a large mean (the cancellation case)."""
    monkeypatch.setattr(streaming, "STATS_BLOCK_BYTES", 256)  # many blocks, a partial last one
    torch.manual_seed(0)
    x = channels_last(torch.randn(shape) * 0.01 + torch.linspace(-50, 50, shape[1]).view(1, -1, *[1] * (len(shape) - 2)))
    var, mean = streaming.group_moments(x, 4)
    grouped = x.double().reshape(shape[0], 4, -1)
    torch.testing.assert_close(var.double(), grouped.var(2, correction=0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(mean.double(), grouped.mean(2), rtol=1e-6, atol=1e-6)

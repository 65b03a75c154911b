"""Tiled encode/decode: exact bookkeeping on a local stand-in model, close to untiled on the tiny VAE."""

import pytest
import torch
import torch.nn.functional as F

from components.vae import tiling
from components.vae.config import load_vae_config


def _config(**tiling_overrides):
    overrides = [f"model.tiling.{key}={value}" for key, value in tiling_overrides.items()]
    return load_vae_config("tiny", ["model.tiling.enabled=true", *overrides]).model


def _smooth_video(frames, height, width):
    t = torch.linspace(0, 1, frames)[:, None, None]
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)
    video = torch.stack([torch.sin(6 * x + 3 * y + 4 * t), torch.cos(5 * y - 2 * x + 3 * t),
                         torch.sin(4 * x * y + 5 * t)])[None]  # (1, 3, T, H, W)
    return video + 0.05 * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    peak = reference.max() - reference.min()
    return (10 * torch.log10(peak**2 / (estimate - reference).pow(2).mean())).item()


def _local_encode(video):
    """Stand-in encoder with the VAE's causal frame rule and no context: latent j <- frame 4j, 8x8 means."""
    return F.avg_pool3d(video[:, :, ::4], kernel_size=(1, 8, 8)).repeat(1, 2, 1, 1, 1)  # (B, 6, t, h, w)


def _local_decode(latents):
    """Stand-in decoder: frame 4j = latent j, frames between are linear blends; nearest 8x spatially."""
    first, previous, current = latents[:, :, :1], latents[:, :, :-1], latents[:, :, 1:]
    ramps = [previous + (current - previous) * (r / 4) for r in (1, 2, 3, 4)]  # 4 x (B, C, t-1, h, w)
    rest = torch.stack(ramps, dim=3).flatten(2, 3)  # (B, C, 4(t-1), h, w)
    video = torch.cat([first, rest], dim=2)  # (B, C, 1 + 4(t-1), h, w)
    return F.interpolate(video, scale_factor=(1, 8, 8), mode="nearest")


@pytest.mark.parametrize("length, tile, overlap", [(9, 5, 2), (6, 4, 1), (4, 4, 2), (20, 6, 3), (3, 5, 2)])
def test_blend_weights_partition_unity(length, tile, overlap):
    spans = tiling.tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    total = torch.zeros(length)
    for (start, stop), weight in zip(spans, tiling.blend_weights(spans, torch.float64, torch.device("cpu"))):
        total[start:stop] += weight
    torch.testing.assert_close(total, torch.ones(length))


def test_tiled_bookkeeping_is_exact_for_a_local_model():
    config = _config(overlap=2, overlap_frames=2)
    video = torch.randn(2, 3, 41, 56, 72)  # 11 latent frames (3 temporal tiles), 7 x 9 latent pixels
    torch.testing.assert_close(tiling.tiled_encode(_local_encode, video, config), _local_encode(video))
    latents = torch.randn(2, 4, 11, 7, 9)
    torch.testing.assert_close(tiling.tiled_decode(_local_decode, latents, config), _local_decode(latents))


def test_tiled_close_to_untiled_on_tiny_vae(tiny_vae):
    """A 33x48x48 clip spans 3 temporal and 2x2 spatial tiles. Measured PSNR (random init): see report."""
    config = _config(overlap=2, overlap_frames=2)
    tiny_vae.config = config
    video = _smooth_video(33, 48, 48)
    with torch.no_grad():
        assert tiling.needs_tiling_encode(config, video.shape)
        full_moments = tiny_vae.encode_moments(video)
        tiled_moments = tiny_vae.encode(video).moments  # dispatches to tiling: enabled and larger than a tile
        latents = full_moments[:, :4]
        full_video = tiny_vae.decode_latents(latents)
        tiled_video = tiny_vae.decode(latents)
    assert tiled_moments.shape == full_moments.shape and tiled_video.shape == full_video.shape == video.shape
    encode_psnr, decode_psnr = psnr(tiled_moments, full_moments), psnr(tiled_video, full_video)
    print(f"tiled vs untiled PSNR: encode {encode_psnr:.1f} dB, decode {decode_psnr:.1f} dB")
    assert encode_psnr > 18 and decode_psnr > 18


def test_tiling_rejects_untileable_clip():
    with pytest.raises(ValueError, match="T = 1 \\+ k\\*4"):
        tiling.tiled_encode(_local_encode, torch.zeros(1, 3, 20, 64, 64), _config())

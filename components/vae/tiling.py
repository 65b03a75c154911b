"""Tiled encode/decode with linear cross-fades in time and space (reference notes §1.7, §9.3).

Tiles are laid out on the latent grid; neighbours overlap by `overlap` latent pixels and
`overlap_frames` latent frames. Each tile's output is multiplied by a separable weight that ramps
linearly from 0 to 1 across the overlap with its previous neighbour and from 1 to 0 across the overlap
with its next one; the ramps of two neighbours sum to one, so the weights partition unity and the
tiles are simply added into the output (no per-row loops, no seams).

Time is causal: a temporal tile that starts at latent frame s (> 0) starts at pixel frame tc*s, so its
first latent is that frame encoded as an image. The ramp gives exactly that latent weight 0 and fades
the rest in; decoding works the same way in pixel frames. With `overlap_frames=1` this degenerates to
the reference's hard cut (the boundary frame is dropped); the default 2 cross-fades tc+1 frames.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from components.vae.config import VAEModelConfig


def latent_tile_frames(config: VAEModelConfig) -> int:
    return (config.tiling.tile_frames - 1) // config.temporal_compression + 1


def needs_tiling_encode(config: VAEModelConfig, shape: torch.Size) -> bool:
    tiling = config.tiling
    frames, height, width = shape[2:]
    return tiling.enabled and (frames > tiling.tile_frames or max(height, width) > tiling.tile_size)


def needs_tiling_decode(config: VAEModelConfig, shape: torch.Size) -> bool:
    tiling = config.tiling
    frames, height, width = shape[2:]
    return tiling.enabled and (frames > latent_tile_frames(config)
                               or max(height, width) * config.spatial_compression > tiling.tile_size)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """[start, stop) spans of `tile` covering `length`, consecutive ones sharing `overlap` entries."""
    assert 0 <= overlap < tile, (overlap, tile)
    spans = [(0, min(tile, length))]
    while spans[-1][0] + tile < length:
        start = spans[-1][0] + tile - overlap
        spans.append((start, min(start + tile, length)))
    return spans


def blend_weights(spans: list[tuple[int, int]], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Per-span 1D weights: linear ramps over each overlap with a neighbour; together they sum to one."""
    weights = []
    for index, (start, stop) in enumerate(spans):
        weight = torch.ones(stop - start, dtype=dtype, device=device)
        if index > 0:
            overlap = spans[index - 1][1] - start
            weight[:overlap] = torch.arange(overlap, dtype=dtype, device=device) / overlap
        if index + 1 < len(spans):
            overlap = stop - spans[index + 1][0]
            weight[stop - start - overlap:] *= 1 - torch.arange(overlap, dtype=dtype, device=device) / overlap
        weights.append(weight)
    return weights


def _check_tileable(config: VAEModelConfig, frames: int, height: int, width: int) -> None:
    tc, sc = config.temporal_compression, config.spatial_compression
    if (frames - 1) % tc or height % sc or width % sc:
        raise ValueError(f"tiled encoding needs T = 1 + k*{tc} frames and H, W divisible by {sc}; "
                         f"got T={frames}, H={height}, W={width}")


def tiled_encode(encode_moments: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor,
                 config: VAEModelConfig) -> torch.Tensor:
    """Encode `video` (B, 3, T, H, W) tile by tile; returns blended moments (B, 2C, t, h, w)."""
    tc, sc, tiling = config.temporal_compression, config.spatial_compression, config.tiling
    batch, _, frames, height, width = video.shape
    _check_tileable(config, frames, height, width)
    latent_t, latent_h, latent_w = (frames - 1) // tc + 1, height // sc, width // sc
    t_spans = tile_spans(latent_t, latent_tile_frames(config), tiling.overlap_frames)
    h_spans = tile_spans(latent_h, tiling.tile_size // sc, tiling.overlap)
    w_spans = tile_spans(latent_w, tiling.tile_size // sc, tiling.overlap)
    weight_args = dict(dtype=video.dtype, device=video.device)
    t_weights, h_weights, w_weights = (blend_weights(s, **weight_args) for s in (t_spans, h_spans, w_spans))
    moments = None
    for (t0, t1), t_weight in zip(t_spans, t_weights, strict=True):
        for (h0, h1), h_weight in zip(h_spans, h_weights, strict=True):
            for (w0, w1), w_weight in zip(w_spans, w_weights, strict=True):
                # Latent frames [t0, t1) come from pixel frames [tc*t0, tc*(t1-1)+1) (§1.5 frame rule).
                tile = video[:, :, tc * t0: tc * (t1 - 1) + 1, sc * h0: sc * h1, sc * w0: sc * w1]
                tile_moments = encode_moments(tile)  # (B, 2C, t1-t0, h1-h0, w1-w0)
                if moments is None:
                    moments = tile_moments.new_zeros((batch, tile_moments.shape[1], latent_t, latent_h, latent_w))
                weight = t_weight[:, None, None] * h_weight[:, None] * w_weight  # (t1-t0, h1-h0, w1-w0)
                moments[:, :, t0:t1, h0:h1, w0:w1] += tile_moments * weight
    return moments  # (B, 2C, t, h, w)


def tiled_decode(decode_latents: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                 config: VAEModelConfig) -> torch.Tensor:
    """Decode latents (B, C, t, h, w) tile by tile; returns the blended video (B, 3, T, H, W)."""
    tc, sc, tiling = config.temporal_compression, config.spatial_compression, config.tiling
    batch, _, latent_t, latent_h, latent_w = latents.shape
    t_spans = tile_spans(latent_t, latent_tile_frames(config), tiling.overlap_frames)
    h_spans = tile_spans(latent_h, tiling.tile_size // sc, tiling.overlap)
    w_spans = tile_spans(latent_w, tiling.tile_size // sc, tiling.overlap)
    # A latent tile [t0, t1) decodes to pixel frames [tc*t0, tc*(t1-1)+1): its first latent is an image.
    pixel_t = [(tc * t0, tc * (t1 - 1) + 1) for t0, t1 in t_spans]
    pixel_h = [(sc * h0, sc * h1) for h0, h1 in h_spans]
    pixel_w = [(sc * w0, sc * w1) for w0, w1 in w_spans]
    weight_args = dict(dtype=latents.dtype, device=latents.device)
    t_weights, h_weights, w_weights = (blend_weights(s, **weight_args) for s in (pixel_t, pixel_h, pixel_w))
    video = None
    for (t0, t1), (f0, f1), t_weight in zip(t_spans, pixel_t, t_weights, strict=True):
        for (h0, h1), (y0, y1), h_weight in zip(h_spans, pixel_h, h_weights, strict=True):
            for (w0, w1), (x0, x1), w_weight in zip(w_spans, pixel_w, w_weights, strict=True):
                tile = decode_latents(latents[:, :, t0:t1, h0:h1, w0:w1])  # (B, 3, f1-f0, y1-y0, x1-x0)
                if video is None:
                    video = tile.new_zeros((batch, tile.shape[1], pixel_t[-1][1], pixel_h[-1][1], pixel_w[-1][1]))
                weight = t_weight[:, None, None] * h_weight[:, None] * w_weight  # (f1-f0, y1-y0, x1-x0)
                video[:, :, f0:f1, y0:y1, x0:x1] += tile * weight
    return video  # (B, 3, T, H, W)

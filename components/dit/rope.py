"""3D rotary position embedding of OpenSoraT2V (reference notes §2.6), without the reference's two bugs.

Each attention head of width d is cut into three contiguous chunks of d/3, rotated by the token's frame,
row and column index respectively; within a chunk dims j and j + d/6 form a pair (rotate-half, GPT-NeoX
convention) with frequencies base^(-2k/(d/3)). Positions are divided by the axis' interpolation scale.

What differs from the reference, on purpose:
- the cache key holds the token grid *and* the scales, so two axes of equal extent never share one
  axis' scale (§9.1: the reference keys its per-axis cache by extent alone);
- angles are computed in fp32 whatever the model's dtype (§9.2). `angles="model_dtype"` reproduces the
  reference's rounding of the angles to the model's dtype for bit-faithful reuse of its bf16 weights;
- one table per forward pass, shared by every block, instead of gathers per attention call.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

CACHE_SIZE = 4  # token grids kept (a stage sees a few bucket shapes; a 93x720p table is ~66 MB)


class RoPE3D:
    def __init__(self, head_dim: int, scales: tuple[float, float, float], angles: str = "fp32",
                 base: float = 10000.0):
        assert head_dim % 6 == 0, head_dim
        self.chunk = head_dim // 3
        self.scales = tuple(float(s) for s in scales)
        self.angles = angles
        self.base = base
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def _axis(self, extent: int, scale: float, device: torch.device, dtype: torch.dtype):
        # The reference's formula, in fp32: inv_freq_k = base^(-2k/chunk), angle = (pos / scale) * inv_freq.
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.chunk, 2, device=device).float() / self.chunk))
        positions = torch.arange(extent, device=device, dtype=torch.float32) / scale
        angles = torch.outer(positions, inv_freq)  # (extent, chunk / 2)
        if self.angles == "model_dtype":
            angles = angles.to(dtype)
        angles = torch.cat((angles, angles), dim=-1)  # (extent, chunk): both halves of a pair share a frequency
        return angles.cos(), angles.sin()

    def tables(self, grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype):
        """(cos, signed sin), each (N, head_dim) in `dtype`, for the t-major token order of `grid`.

        The sin table carries rotate-half's sign (-sin on the first half of each chunk), so that
        rope(x) = x * cos + swap_halves(x) * signed_sin."""
        key = (tuple(grid), self.scales, self.angles, device, dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames, rows, cols = grid
        per_axis = [self._axis(extent, scale, device, dtype) for extent, scale in zip(grid, self.scales, strict=True)]
        shape = (frames, rows, cols, self.chunk)
        cos = torch.cat([per_axis[0][0][:, None, None].expand(shape), per_axis[1][0][None, :, None].expand(shape),
                         per_axis[2][0][None, None, :].expand(shape)], dim=-1)  # (T', H', W', head_dim)
        sin = torch.cat([per_axis[0][1][:, None, None].expand(shape), per_axis[1][1][None, :, None].expand(shape),
                         per_axis[2][1][None, None, :].expand(shape)], dim=-1)
        half = self.chunk // 2
        sign = torch.ones(3, 2, half, device=device)
        sign[:, 0] = -1
        cos = cos.reshape(-1, 3 * self.chunk).to(dtype)  # (N, head_dim)
        sin = (sin.reshape(-1, 3, 2, half) * sign).reshape(-1, 3 * self.chunk).to(dtype)
        self._cache[key] = (cos, sin)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return cos, sin


def swap_halves(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[a, b] -> [b, a] within each `chunk`-wide slice of the last dim (rotate-half without the sign)."""
    shape = x.shape
    return x.reshape(*shape[:-1], shape[-1] // chunk, 2, chunk // 2).flip(-2).reshape(shape)


class _Rotate(torch.autograd.Function):
    """RoPE as one autograd node that keeps only the (shared) tables for backward, not x and its swap:
    rope(x) = x * cos + P(x) * sin with P the half swap, so d/dx is g * cos + P(g * sin) (P = P^T)."""

    @staticmethod
    def forward(ctx, x, cos, sin, chunk):
        ctx.save_for_backward(cos, sin)
        ctx.chunk = chunk
        return torch.addcmul(x * cos, swap_halves(x, chunk), sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return grad * cos + swap_halves(grad * sin, ctx.chunk), None, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, chunk: int,
               inplace: bool = False) -> torch.Tensor:
    """x: (B, N, heads, head_dim); cos/sin: (N, head_dim). Returns the rotated x, same shape (x itself,
    rotated in place, when `inplace`: for inference, where x is a projection's own output)."""
    cos, sin = cos[:, None], sin[:, None]  # (N, 1, head_dim): broadcast over heads
    if inplace:
        swapped = swap_halves(x, chunk)
        return x.mul_(cos).addcmul_(swapped, sin)
    return _Rotate.apply(x, cos, sin, chunk)

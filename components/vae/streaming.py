"""Inference kernels of the CausalVAE: chunked, channels-last, fewer multiplications (no autograd).

The network (`model.py`) calls these when autograd is off; training takes the plain formulation. Both
give the same numbers up to float rounding (tests compare them, and bench/vae_reference.py compares with
the reference implementation). Convolutions are ~90 % of the time and oneDNN already runs them near the
CPU's peak, so the gains come from doing fewer multiplies and moving fewer bytes:

- Temporal Winograd F(2, 3) for the kernel-3, stride-1 causal convolutions (~95 % of a decode's
  multiplies): two output frames from four per-frame 2D convolutions instead of six (Lavin & Gray, "Fast
  Algorithms for Convolutional Neural Networks", 2016, in one dimension); the same along rows for 3x3
  convolutions of wide inputs (`FastConv2d`). The transforms only add, subtract and halve, so rounding
  stays at the level of a reordered sum (~3e-6 relative).
- Nearest 2x upsampling + 3x3 conv as four 2x2 sub-pixel convolutions (`NearestUpsampleConv`).
- Channels-last layout (NDHWC / NHWC): a frame range is one contiguous block, so chunks along time are
  cheap views, and per-frame 2D convolutions run ~10-20 % faster in oneDNN than on NCHW.
- Chunks of frames written into one preallocated output, with GroupNorm + swish applied per chunk from
  statistics taken once over the whole tensor (`group_moments`, one blocked pass), and residuals added
  in place: a res-block keeps at most its input, one intermediate and its output alive. Inputs that are
  computed (upsampled frames) are produced per chunk (`Frames`), never stored whole.
- The causal front padding (frame 0 replicated) is folded into the kernel instead of copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Chunks of at most this many input bytes: the normalised input copy, the Winograd transforms and
# oneDNN's scratch then cost a few chunks of memory, not whole activations. Small clips run in one chunk.
CHUNK_BYTES = 64 * 2**20

# Statistics are summed over blocks of positions of at most this many bytes, which stay in a core's L2.
STATS_BLOCK_BYTES = 2**19

Transform = Callable[[torch.Tensor, int, int], torch.Tensor]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)


def empty_channels_last(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    layout = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


def chunk_length(frame_bytes: int, length: int) -> int:
    """Frames per chunk: as few equal chunks as keep each under CHUNK_BYTES (at least one frame)."""
    chunks = -(-length * frame_bytes // CHUNK_BYTES)  # ceil
    return max(-(-length // max(chunks, 1)), 1)


def group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance and mean (N, G) of `x` (N, C, ...) over each group of C/G channels and all positions.

    One pass over cache-sized blocks of positions (channels last: (N, positions, C) is a view), ~13x
    faster than `torch.var_mean` over the same view. Sums are taken of the values minus a per-channel
    shift (the first block's mean) and accumulated in float64, so E[x^2] - E[x]^2 does not cancel; groups
    combine exactly: var_g = mean over its channels of (var_c + (mean_c - mean_g)^2). Matches float64
    statistics as closely as `torch.var_mean` does (~6e-8 relative).
    """
    count, channels = x.shape[:2]
    if not x.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last):
        x = channels_last(x)
    flat = x.movedim(1, -1).reshape(count, -1, channels)  # (N, S, C), a view
    positions, rows = flat.shape[1], max(1, STATS_BLOCK_BYTES // (channels * x.element_size()))
    shift = flat[:, :rows].mean(1, keepdim=True)  # (N, 1, C)
    sums = torch.zeros((count, channels), dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(sums)
    for start in range(0, positions, rows):
        block = flat[:, start:start + rows] - shift  # (N, rows, C), fresh and in cache
        sums += block.sum(1)
        squares += block.square_().sum(1)
    mean_c = sums / positions  # (N, C), of the shifted values
    var_c = (squares / positions - mean_c.square()).clamp_(min=0).view(count, groups, -1)  # (N, G, C/G)
    mean_c = (mean_c + shift[:, 0]).view(count, groups, -1)
    mean = mean_c.mean(2)  # (N, G)
    var = (var_c + (mean_c - mean.unsqueeze(2)).square()).mean(2)  # (N, G)
    return var.to(x.dtype), mean.to(x.dtype)


def norm_silu_transform(norm: nn.GroupNorm, x: torch.Tensor, per_frame: bool) -> Transform:
    """GroupNorm + swish as a chunk transform, with statistics taken once over the whole of `x`.

    `x` is (B, C, T, H, W) for 3D blocks (statistics over C/G x T x H x W, as the reference's 5-D
    GroupNorm) or (B*T, C, H, W) for 2D blocks (statistics per frame; the chunk's frame range picks them).
    """
    count, channels, groups = x.shape[0], x.shape[1], norm.num_groups
    var, mean = group_moments(x, groups)  # (N, G) each
    rstd = torch.rsqrt(var + norm.eps).repeat_interleave(channels // groups, dim=1)  # (N, C)
    scale = rstd * norm.weight  # (N, C)
    shift = norm.bias - mean.repeat_interleave(channels // groups, dim=1) * scale  # (N, C)
    shape = (count, channels) + (1,) * (x.dim() - 2)
    scale, shift = scale.view(shape), shift.view(shape)

    def transform(piece: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        piece_scale, piece_shift = (scale[start:stop], shift[start:stop]) if per_frame else (scale, shift)
        return F.silu(torch.addcmul(piece_shift, piece, piece_scale), inplace=True)  # fresh tensor, layout of piece

    return transform


def map_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int,
               out: torch.Tensor | None = None, transform: Transform | None = None,
               growth: int = 1) -> torch.Tensor:
    """`fn` applied to chunks of slices of `x` along `dim` (a frame-local fn: output frame i
    depends on input frame i only), written into a new tensor or added into `out`. `growth`: output
    bytes per input byte when `fn` enlarges frames (an upsampler), so chunks are sized by the larger."""
    length, accumulate = x.shape[dim], out is not None
    step = chunk_length(x.numel() // max(length, 1) * x.element_size() * growth, length)
    if step >= length and not accumulate:  # one chunk: its result is the output (no copy)
        return channels_last(fn(x if transform is None else transform(x, 0, length)))
    for start in range(0, length, step):
        stop = min(start + step, length)
        piece = x.narrow(dim, start, stop - start)
        result = fn(piece if transform is None else transform(piece, start, stop))
        if out is None:
            out = empty_channels_last(result.shape[:dim] + (length,) + result.shape[dim + 1:], result)
        _write(out.narrow(dim, start, stop - start), result, accumulate)
    return out


def _write(target: torch.Tensor, value: torch.Tensor, accumulate: bool) -> None:
    """Add `value` into `target` (a residual connection) or overwrite it."""
    if accumulate:
        target += value
    else:
        target.copy_(value)


# Row Winograd pays off from this many input channels: below it the (1, 3) convolutions it runs are
# slower per multiply in oneDNN and the transforms' memory traffic eats the gain (measured on Zen 4).
ROW_WINOGRAD_MIN_CHANNELS = 256
# Below this many pixels per frame, per-frame kernels cost more in per-call overhead than they save
# (2x slower at 16x16, 0.7x the time from 32x32 on): such layers run the plain 3D convolution.
MIN_FRAME_PIXELS = 32 * 32


class FastConv2d:
    """A per-frame 2D convolution; 3x3 kernels (stride 1, padding 1) with wide inputs run as Winograd
    F(2, 3) along rows: two output rows from four (1, 3) convolutions of half-height images instead of
    two 3x3 ones (1.5x fewer multiplies, ~1.3x faster from 256 channels). Other shapes: `F.conv2d`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int]):
        self.weight, self.bias, self.stride, self.padding = weight, bias, tuple(stride), tuple(padding)
        self.rows = (weight.shape[2:] == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                     and weight.shape[1] >= ROW_WINOGRAD_MIN_CHANNELS)
        self._row_weights: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (N, Cin, H, W) -> (N, Cout, H', W')
        if not self.rows or x.shape[2] % 2 or x.shape[2] * x.shape[3] < MIN_FRAME_PIXELS:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self._row_weights is None:
            g0, g1, g2 = self.weight.split(1, dim=2)  # (Cout, Cin, 1, 3) each
            self._row_weights = torch.stack([g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2])
        return _winograd_rows(x, self._row_weights, self.bias)


class NearestUpsampleConv:
    """Nearest 2x upsampling then a 3x3 conv (padding 1), as four 2x2 convs of the small input, one per
    output phase (sub-pixel): with the input zero-padded by one, output pixel (2m + a, 2n + b) sees input
    rows m - 1 + a .. m + a and columns n - 1 + b .. n + b; the 3x3 taps that land on the same input pixel
    sum. 4 instead of 9 multiplies per output pixel, and the 4x larger upsampled input is never built."""

    # Per phase, which of the three kernel taps fall on each of its two input taps.
    TAPS = (((0,), (1, 2)), ((0, 1), (2,)))

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):  # weight (Cout, Cin, 3, 3)
        phases = []
        for rows in self.TAPS:
            for cols in self.TAPS:
                phases.append(torch.stack([torch.stack([sum(weight[:, :, r, c] for r in row for c in col)
                                                        for col in cols], dim=-1) for row in rows], dim=-2))
        self.weight = torch.cat(phases)  # (4 * Cout, Cin, 2, 2), phase-major
        self.bias = None if bias is None else bias.repeat(4)
        self.out_channels = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (N, Cin, H, W) -> (N, Cout, 2H, 2W)
        count, _, height, width = x.shape
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias)  # (N, 4 * Cout, H + 1, W + 1)
        phases = phases.permute(0, 2, 3, 1).unflatten(3, (4, self.out_channels))  # (N, H + 1, W + 1, 4, Cout)
        out = empty_channels_last((count, self.out_channels, 2 * height, 2 * width), x)
        pixels = out.permute(0, 2, 3, 1).unflatten(1, (height, 2)).unflatten(3, (width, 2))  # (N, H, 2, W, 2, Cout)
        for a in range(2):
            for b in range(2):
                pixels[:, :, a, :, b].copy_(phases[:, a:a + height, b:b + width, 2 * a + b])
        return out


def fold_replicated_taps(weight: torch.Tensor, replicated: int) -> torch.Tensor:
    """A causal conv's weight (Cout, Cin, kt, kh, kw) as a 2D one over frames stacked along channels
    (frame-major), when the first `replicated` + 1 taps all see frame 0 (the causal padding): those taps
    sum. (Cout, (kt - replicated) * Cin, kh, kw); differentiable, so training uses it too."""
    split = replicated + 1
    return torch.cat([weight[:, :, :split].sum(2), *weight[:, :, split:].unbind(2)], dim=1)


class CausalConvKernels:
    """Per-frame 2D kernels derived once per call from a causal `nn.Conv3d` (front padding `front`)."""

    def __init__(self, conv: nn.Conv3d, front: int, frame_pixels: int):
        self.conv, self.front = conv, front
        self.per_frame = frame_pixels >= MIN_FRAME_PIXELS and conv.stride[0] == 1
        self.winograd = self.per_frame and conv.kernel_size[0] == 3  # F(2, 3) in time
        self._stacked: dict[tuple[int, int], FastConv2d] = {}
        self._winograd: list[FastConv2d] | None = None

    def stacked(self, frames: int, replicated: int) -> FastConv2d:
        """One output frame from `frames` input frames stacked along channels (frame-major), of which
        the first stands for `replicated` + 1 frames (the causal padding): those taps all see frame 0,
        so they sum. A single 2D conv, which oneDNN runs faster than a short 3D conv."""
        key = (frames, replicated)
        if key not in self._stacked:
            folded = fold_replicated_taps(self.conv.weight, replicated)  # (Cout, frames * Cin, kh, kw)
            self._stacked[key] = FastConv2d(folded, self.conv.bias, self.conv.stride[1:], self.conv.padding[1:])
        return self._stacked[key]

    def winograd_products(self) -> list[FastConv2d]:
        """The four per-frame convolutions of F(2, 3) in time: g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2; the
        bias rides on the second, which enters both outputs with a plus sign."""
        if self._winograd is None:
            g0, g1, g2 = self.conv.weight.unbind(2)  # (Cout, Cin, kh, kw) each
            weights = [g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2]
            self._winograd = [FastConv2d(w, self.conv.bias if i == 1 else None, self.conv.stride[1:],
                                         self.conv.padding[1:]) for i, w in enumerate(weights)]
        return self._winograd


def _stack_frames(piece: torch.Tensor) -> torch.Tensor:
    """(B, C, n, H, W) -> (B, n * C, H, W) channels last, frame-major along channels."""
    batch, channels, frames, height, width = piece.shape
    return (piece.permute(0, 3, 4, 2, 1)  # (B, H, W, n, C)
            .reshape(batch, height, width, frames * channels).permute(0, 3, 1, 2))


@dataclass(frozen=True)
class Frames:
    """The input of a streamed convolution, produced a range of frames at a time: a stored tensor's
    slices (`tensor_frames`) or frames computed on demand (e.g. upsampled), never all at once."""

    count: int  # frames
    frame_bytes: int  # bytes of one frame (all batch entries)
    frame_pixels: int  # H * W
    read: Callable[[int, int], torch.Tensor]  # (start, stop) -> (B, C, stop - start, H, W)


def tensor_frames(x: torch.Tensor, transform: Transform | None = None) -> Frames:
    """Frames of `x` (B, C, T, H, W), mapped by `transform(piece, start, stop)` if given."""
    def read(start: int, stop: int) -> torch.Tensor:
        piece = x[:, :, start:stop]
        return piece if transform is None else transform(piece, start, stop)

    return Frames(x.shape[2], x[:, :, :1].numel() * x.element_size(), x.shape[3] * x.shape[4], read)


def causal_conv_stream(conv: nn.Conv3d, front: int, x: torch.Tensor | Frames, transform: Transform | None = None,
                       out: torch.Tensor | None = None, accumulate: bool = True) -> torch.Tensor:
    """Causal 3D convolution of `x` (B, Cin, T, H, W) with frame 0 replicated `front` times in front,
    computed over chunks of output frames into channels-last `out` (B, Cout, T_out, H', W').

    `transform(piece, start, stop)` maps each input slice before padding (e.g. GroupNorm + swish);
    with `out`, results are added into it (residual connections), or written when not `accumulate`.
    """
    source = x if isinstance(x, Frames) else tensor_frames(x, transform)
    kernels = CausalConvKernels(conv, front, source.frame_pixels)
    kt, stride = conv.kernel_size[0], conv.stride[0]
    out_frames = (source.count - 1) // stride + 1
    output = _Output(out, out_frames, out is not None and accumulate)
    step = max(chunk_length(source.frame_bytes, out_frames * stride) // stride, 1)
    if kernels.winograd:
        step = max(step - step % 2, 2)  # whole output pairs (the first chunk's folded frames are a pair too)
    for start in range(0, out_frames, step):
        stop = min(start + step, out_frames)
        # Output frame o reads padded frames [o*s, o*s + kt); padded frame p is input frame p - front.
        first, last = start * stride - front, (stop - 1) * stride - front + kt
        piece = source.read(max(first, 0), last)  # (B, Cin, <= span, H, W)
        _conv_piece(kernels, piece, first, output, start)
    return output.out  # (B, Cout, T_out, H', W')


class _Output:
    """A streamed convolution's output (B, Cout, T_out, H', W'), channels last: allocated at the first
    result unless given; results are written into it, or added (residual connections), frame range by
    frame range, so no chunk result is copied twice."""

    def __init__(self, out: torch.Tensor | None, frames: int, accumulate: bool):
        self.out, self.frames, self.accumulate = out, frames, accumulate

    def region(self, start: int, count: int, frame_shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Output frames [start, start + count); `frame_shape` (B, Cout, H', W') allocates on first use."""
        if self.out is None:
            batch, channels, height, width = frame_shape
            self.out = empty_channels_last((batch, channels, self.frames, height, width), like)
        return self.out[:, :, start:start + count]

    def put(self, start: int, result: torch.Tensor) -> None:
        """Write or add `result` (B, Cout, n, H', W') at output frame `start`."""
        frame_shape = (*result.shape[:2], *result.shape[3:])
        _write(self.region(start, result.shape[2], frame_shape, result), result, self.accumulate)


def _conv_piece(kernels: CausalConvKernels, piece: torch.Tensor, first: int, output: _Output, start: int) -> None:
    """Convolve a chunk whose padded input starts at frame `first` into `output` from frame `start`.

    In the first chunk (first < 0) the replicated copies of frame 0 are folded into the kernel instead
    of being materialised: output frame o < front sees frame 0 through the summed taps 0..front-o, so it
    needs o + 1 taps, 3 fewer frame-taps per 3x3x3 conv than convolving the padded input.
    """
    conv, front = kernels.conv, kernels.front
    if first >= 0:
        _valid_conv(kernels, piece, output, start)
    elif not kernels.per_frame:
        replicated = piece[:, :, :1].expand(-1, -1, -first, -1, -1)
        output.put(start, _direct(conv, torch.cat([replicated, piece], dim=2)))
    else:
        for frame in range(min(front, piece.shape[2])):
            result = kernels.stacked(frame + 1, front - frame)(_stack_frames(piece[:, :, :frame + 1]))
            output.put(start + frame, result.unsqueeze(2))  # (B, Cout, 1, H', W')
        if piece.shape[2] > front:
            _valid_conv(kernels, piece, output, start + front)  # valid frames front.. need no padding


def _valid_conv(kernels: CausalConvKernels, piece: torch.Tensor, output: _Output, start: int) -> None:
    """The unpadded convolution of `piece` (B, Cin, L, H, W): Winograd pairs, then a last odd frame."""
    conv = kernels.conv
    kt = conv.kernel_size[0]
    out_frames = piece.shape[2] - kt + 1
    if not kernels.winograd:
        output.put(start, _direct(conv, piece))
        return
    if out_frames >= 2:
        _winograd_pairs(piece[:, :, :out_frames - out_frames % 2 + 2], kernels.winograd_products(), output, start)
    if out_frames % 2:
        last = kernels.stacked(kt, 0)(_stack_frames(piece[:, :, -kt:]))  # (B, Cout, H', W')
        output.put(start + out_frames - 1, last.unsqueeze(2))


def _direct(conv: nn.Conv3d, piece: torch.Tensor) -> torch.Tensor:
    """The plain 3D convolution. oneDNN's 3D kernels run 512 input channels ~15-20 % faster on NCDHW
    than channels last, 256 and fewer ~15 % slower (measured on Zen 4)."""
    return conv(piece.contiguous() if conv.in_channels >= 512 else piece)


def _winograd_pairs(piece: torch.Tensor, products: list[FastConv2d], output: _Output, start: int) -> None:
    """Valid kernel-3 temporal conv of `piece` (B, Cin, 2P + 2, H, W) into output frames [start, start + 2P).

    With d the input frames and g the temporal taps, output frames 2p and 2p+1 are
      y[2p] = m0 + m1 + m2,  y[2p+1] = m1 - m2 - m3,  where
      m0 = (d[2p] - d[2p+2]) * g0,        m1 = (d[2p+1] + d[2p+2]) * (g0 + g1 + g2) / 2,
      m2 = (d[2p+2] - d[2p+1]) * (g0 - g1 + g2) / 2,   m3 = (d[2p+1] - d[2p+3]) * g2,
    each `*` a per-frame 2D convolution (`products`; 4 per pair instead of 6). One transformed input
    and one product exist at a time; products go straight into the output.
    """
    batch, channels, length, height, width = piece.shape
    pairs = (length - 2) // 2
    frames = piece.permute(0, 2, 3, 4, 1)  # (B, L, H, W, Cin); a view when channels last
    even, odd = frames[:, 0:2 * pairs:2], frames[:, 1:2 * pairs:2]  # d[2p], d[2p+1]
    even_next, odd_next = frames[:, 2::2], frames[:, 3::2]  # d[2p+2], d[2p+3]
    inputs = ((torch.sub, even, even_next), (torch.add, odd, even_next), (torch.sub, even_next, odd),
              (torch.sub, odd, odd_next))
    transformed = piece.new_empty((batch, pairs, height, width, channels))
    for index, ((op, left, right), product) in enumerate(zip(inputs, products, strict=True)):
        op(left, right, out=transformed)
        m = _rows_last(product(_frames_first(transformed)), batch)  # (B, P, H', W', Cout)
        if index == 0:
            region = output.region(start, 2 * pairs, (batch, m.shape[-1], *m.shape[2:4]), piece)
            view = region.permute(0, 2, 3, 4, 1)  # (B, 2P, H', W', Cout)
        _combine(index, m, view[:, 0::2], view[:, 1::2], output.accumulate)


def _combine(index: int, m: torch.Tensor, first: torch.Tensor, second: torch.Tensor, accumulate: bool = False) -> None:
    """Add product `index` of F(2, 3) into its two outputs: first = m0 + m1 + m2, second = m1 - m2 - m3
    (plus what they held, when `accumulate`)."""
    if index == 0:
        _write(first, m, accumulate)
    elif index == 1:
        first += m
        _write(second, m, accumulate)
    elif index == 2:
        first += m
        second -= m
    else:
        second -= m


def _winograd_rows(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 conv (stride 1, zero padding 1) of `x` (N, Cin, H, W), H even, by F(2, 3) along rows.

    `weights` (4, Cout, Cin, 1, 3) are the row-transformed kernels. With zero-padded rows d'[j] = d[j - 1],
    output rows 2q, 2q+1 come from d'[2q..2q+3] exactly as the temporal pairs above; the transforms read
    the unpadded rows, and the zero rows drop out of the first and last terms.
    """
    count, channels, height, width = x.shape
    rows = x.permute(0, 2, 3, 1)  # (N, H, W, Cin); a view when channels last
    even, odd = rows[:, 0::2], rows[:, 1::2]  # d[2q], d[2q+1]
    transformed = x.new_empty((count, height // 2, width, channels))
    out = None
    for index in range(4):
        if index == 0:  # d'[2q] - d'[2q+2] = d[2q-1] - d[2q+1], with d'[0] = 0
            torch.sub(odd[:, :-1], odd[:, 1:], out=transformed[:, 1:])
            torch.neg(odd[:, 0], out=transformed[:, 0])
        elif index == 1:  # d'[2q+1] + d'[2q+2]
            torch.add(even, odd, out=transformed)
        elif index == 2:  # d'[2q+2] - d'[2q+1]
            torch.sub(odd, even, out=transformed)
        else:  # d'[2q+1] - d'[2q+3], with d'[H + 1] = 0
            torch.sub(even[:, :-1], even[:, 1:], out=transformed[:, :-1])
            transformed[:, -1].copy_(even[:, -1])
        m = F.conv2d(transformed.permute(0, 3, 1, 2), weights[index], bias if index == 1 else None, 1,
                     (0, 1)).permute(0, 2, 3, 1)  # (N, H/2, W, Cout)
        if out is None:
            out = empty_channels_last((count, m.shape[-1], height, width), x)
            view = out.permute(0, 2, 3, 1)  # (N, H, W, Cout)
        _combine(index, m, view[:, 0::2], view[:, 1::2])
    return out  # (N, Cout, H, W)


def _frames_first(frames: torch.Tensor) -> torch.Tensor:
    """(B, P, H, W, C) -> (B*P, C, H, W), channels last (a view)."""
    return frames.flatten(0, 1).permute(0, 3, 1, 2)


def _rows_last(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*P, C, H, W) -> (B, P, H, W, C) (a view when channels last)."""
    return frames.permute(0, 2, 3, 1).unflatten(0, (batch, -1))

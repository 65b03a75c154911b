"""CausalVAE: the causal video VAE of Open-Sora Plan v1.2 (network only).

Module and parameter names equal the reference's state-dict keys (reference notes §8.1), so official
weights load without renaming. Semantics follow reference notes §1.2-1.5. Video is (B, 3, T, H, W) in
[-1, 1]; latents are (B, C, t, h, w) with t = 1 + (T - 1) / 4, h = H / 8, w = W / 8 for v1.2. No latent
scaling happens here: downstream stages multiply by `config.scale_factor` themselves.

Engineering differences to the reference, at equal outputs (§9.16):
- per-frame (2D) modules run on a (B*T, C, H, W) frame layout that is entered and left once per run of
  2D modules, instead of a rearrange around every operator;
- the encoder keeps no list of intermediates;
- the mid attention runs through `scaled_dot_product_attention`, all frames batched;
- without autograd (inference), GroupNorm + swish are fused into convolutions that run over chunks of
  frames into one preallocated output, residuals are added in place, and the causal front padding is
  folded into the kernel instead of copied: a res-block keeps at most its input, one intermediate and
  its output alive. With autograd the plain formulation runs (training), with the same results.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.vae.config import VAEModelConfig
from components.vae.posterior import DiagonalGaussian

# Without autograd, convolutions run over chunks of frames of at most this many input bytes, writing
# into one preallocated output: the normalised input copy and oneDNN's layout reorders then cost one
# chunk of memory, not a whole activation. Small clips run in one chunk (no overhead).
CHUNK_BYTES = 64 * 2**20


def _chunk_length(x: torch.Tensor, dim: int, length: int) -> int:
    """Frames per chunk: as few equal chunks as keep each under CHUNK_BYTES (at least one frame)."""
    frame_bytes = x.numel() // max(x.shape[dim], 1) * x.element_size()
    chunks = -(-length * frame_bytes // CHUNK_BYTES)  # ceil
    return -(-length // max(chunks, 1))


Transform = Callable[[torch.Tensor, int, int], torch.Tensor]


def _no_grad() -> bool:
    return not torch.is_grad_enabled()


def _norm_silu_transform(norm: nn.GroupNorm, x: torch.Tensor, per_frame: bool) -> Transform:
    """GroupNorm + swish as a chunk transform, with statistics taken once over the whole of `x`.

    `x` is (B, C, T, H, W) for 3D blocks (statistics over C/G x T x H x W, as the reference's 5-D
    GroupNorm) or (B*T, C, H, W) for 2D blocks (statistics per frame; the chunk's frame range picks them).
    """
    count, channels, groups = x.shape[0], x.shape[1], norm.num_groups
    var, mean = torch.var_mean(x.reshape(count, groups, -1), dim=2, correction=0)  # (N, G) each
    rstd = torch.rsqrt(var + norm.eps).repeat_interleave(channels // groups, dim=1)  # (N, C)
    scale = rstd * norm.weight  # (N, C)
    shift = norm.bias - mean.repeat_interleave(channels // groups, dim=1) * scale  # (N, C)
    shape = (count, channels) + (1,) * (x.dim() - 2)
    scale, shift = scale.view(shape), shift.view(shape)

    def transform(piece: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        piece_scale, piece_shift = (scale[start:stop], shift[start:stop]) if per_frame else (scale, shift)
        return F.silu(torch.addcmul(piece_shift, piece, piece_scale), inplace=True)  # fresh tensor

    return transform


def _map_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dim: int,
                out: torch.Tensor | None = None, transform: Transform | None = None) -> torch.Tensor:
    """`fn` applied to chunks of slices of `x` along `dim` (a frame-local fn: output frame i
    depends on input frame i only), written into a new tensor or added into `out`."""
    length, accumulate = x.shape[dim], out is not None
    step = _chunk_length(x, dim, length)
    for start in range(0, length, step):
        stop = min(start + step, length)
        piece = x.narrow(dim, start, stop - start)
        result = fn(piece if transform is None else transform(piece, start, stop))
        if out is None:
            out = result.new_empty(result.shape[:dim] + (length,) + result.shape[dim + 1:])
        target = out.narrow(dim, start, stop - start)
        if accumulate:
            target.add_(result)
        else:
            target.copy_(result)
    return out


def _to_frames(video: torch.Tensor) -> torch.Tensor:
    batch, channels, frames, height, width = video.shape
    return video.transpose(1, 2).reshape(batch * frames, channels, height, width)  # (B*T, C, H, W)


def _to_video(frames: torch.Tensor, batch: int) -> torch.Tensor:
    count, channels, height, width = frames.shape
    video = frames.reshape(batch, count // batch, channels, height, width)  # (B, T, C, H, W)
    return video.transpose(1, 2).contiguous()  # (B, C, T, H, W)


def _run(module: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Apply `module` in the layout it works in: frames (per-frame 2D modules) or video (3D modules)."""
    if module.per_frame and x.dim() == 5:
        x = _to_frames(x)  # (B*T, C, H, W)
    elif not module.per_frame and x.dim() == 4:
        x = _to_video(x, batch)  # (B, C, T, H, W)
    return module(x)


# --------------------------------------------------------------------------- primitives (§1.2)


class CausalConv3d(nn.Module):
    """3D convolution, causal in time: the first frame is replicated k_t - 1 times in front.

    Spatial padding is symmetric zero padding; no temporal padding at the end, so
    T_out = (T - 1) // s_t + 1. The wrapped `nn.Conv3d` lives at `.conv` (reference key layout).
    """

    per_frame = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        spatial_padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.kernel_frames = kernel[0]
        self.stride_frames = stride
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=(0, *spatial_padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, T, H, W)
        if _no_grad():
            return self.stream(x)
        front = self.kernel_frames - 1
        if front:
            x = torch.cat([x[:, :, :1].expand(-1, -1, front, -1, -1), x], dim=2)  # (B, Cin, T + kt - 1, H, W)
        return self.conv(x)  # (B, Cout, T_out, H', W')

    def stream(self, x: torch.Tensor, transform: Transform | None = None,
               out: torch.Tensor | None = None, accumulate: bool = True) -> torch.Tensor:
        """Same result as `forward`, computed over chunks of output frames (no autograd).

        `transform(piece, start, stop)` maps each input slice before padding (e.g. GroupNorm + swish);
        with `out`, results are added into it (residual connections), or written when not `accumulate`.
        """
        front, stride, frames = self.kernel_frames - 1, self.stride_frames, x.shape[2]
        accumulate = out is not None and accumulate
        out_frames = (frames - 1) // stride + 1
        step = _chunk_length(x, 2, out_frames * stride)  // stride
        for start in range(0, out_frames, max(step, 1)):
            stop = min(start + max(step, 1), out_frames)
            # Output frame o reads padded frames [o*s, o*s + kt); padded frame p is input frame p - front.
            first, last = start * stride - front, (stop - 1) * stride - front + self.kernel_frames
            piece = x[:, :, max(first, 0):last]  # (B, Cin, <= span, H, W)
            if transform is not None:
                piece = transform(piece, max(first, 0), last)
            for offset, result in self._conv_piece(piece, first):  # (B, Cout, n, H', W') at start + offset
                if out is None:
                    out = result.new_empty((*result.shape[:2], out_frames, *result.shape[3:]))
                target = out[:, :, start + offset: start + offset + result.shape[2]]
                if accumulate:
                    target += result
                else:
                    target.copy_(result)
        return out  # (B, Cout, T_out, H', W')

    def _conv_piece(self, piece: torch.Tensor, first: int):
        """Yield (output offset, conv output) for a chunk whose padded input starts at frame `first`.

        In the first chunk (first < 0) the replicated copies of frame 0 are folded into the kernel
        instead of being materialised: output frame o < front sees frame 0 through the summed taps
        0..front-o, so it needs o + 1 taps; that is 3 fewer frame-taps per 3x3x3 conv than convolving
        the padded input (same result up to float rounding; ~8% faster at T=9).
        """
        front = self.kernel_frames - 1
        if first >= 0:
            yield 0, self.conv(piece)
            return
        if self.stride_frames != 1:
            replicated = piece[:, :, :1].expand(-1, -1, -first, -1, -1)
            yield 0, self.conv(torch.cat([replicated, piece], dim=2))
            return
        weight = self.conv.weight  # (Cout, Cin, kt, kh, kw)
        batch, channels, _, height, width = piece.shape
        for frame in range(min(front, piece.shape[2])):
            # Taps 0..front-frame all see frame 0; the rest see frames 1..frame. As one 2D conv over the
            # frames stacked along channels (frame-major), which oneDNN runs faster than a short 3D conv.
            folded = torch.cat([weight[:, :, :front - frame + 1].sum(2), *weight[:, :, front - frame + 1:].unbind(2)],
                               dim=1)  # (Cout, (frame + 1) * Cin, kh, kw)
            stacked = piece[:, :, :frame + 1].transpose(1, 2).reshape(batch, (frame + 1) * channels, height, width)
            result = F.conv2d(stacked, folded, self.conv.bias, self.conv.stride[1:], self.conv.padding[1:])
            yield frame, result.unsqueeze(2)  # (B, Cout, 1, H', W')
        if piece.shape[2] > front:
            yield front, self.conv(piece)  # valid frames front.. need no padding


class Conv2d(nn.Conv2d):
    """A 2D convolution applied to every frame (frame layout)."""

    per_frame = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B*T, Cin, H, W)
        return self.stream(x) if _no_grad() else super().forward(x)  # (B*T, Cout, H, W)

    def stream(self, x: torch.Tensor, transform: Transform | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        return _map_chunks(super().forward, x, 0, out, transform)


class ResnetBlock(nn.Module):
    """GN, swish, conv3, GN, swish, dropout, conv3, plus a (1x1) shortcut when channels change.

    The 3D variant uses causal 3x3x3 convs and GroupNorm over C/G x T x H x W (statistics pooled over
    all frames: reference notes §1.2, §1.5); the 2D variant works per frame.
    """

    def __init__(self, in_channels: int, out_channels: int, three_d: bool, groups: int, eps: float, dropout: float):
        super().__init__()
        self.per_frame = not three_d
        if three_d:
            def conv(cin: int, cout: int, k: int) -> nn.Module:
                return CausalConv3d(cin, cout, k, padding=k // 2)
        else:
            def conv(cin: int, cout: int, k: int) -> nn.Module:
                return Conv2d(cin, cout, k, padding=k // 2)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = conv(in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.nin_shortcut = conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, T, H, W) or (B*T, Cin, H, W)
        if _no_grad() and not (self.training and self.dropout.p > 0):
            return self._stream(x)
        h = self.conv1(F.silu(self.norm1(x)))  # (..., Cout, ...)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (..., Cout, ...)
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))  # (..., Cout, ...)

    def _stream(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: normalisation fused into chunked convs; the residual is accumulated in place, so
        at most x, h and the output are alive (the output is x itself when channels do not change)."""
        h = self.conv1.stream(x, _norm_silu_transform(self.norm1, x, self.per_frame))  # (..., Cout, ...)
        in_channels, out_channels = x.shape[1], h.shape[1]
        if self.nin_shortcut is None:
            out = x
        elif x.dim() == 5 and x.shape[0] == 1 and out_channels <= in_channels:
            # Write the shortcut over x's last Cout channels: each frame chunk of x is read before
            # those frames are overwritten, and x is not needed afterwards. Saves one activation at the
            # decoder's channel reductions (the largest tensors of a decode).
            out = self.nin_shortcut.stream(x, out=x[:, in_channels - out_channels:], accumulate=False)
        else:
            out = self.nin_shortcut.stream(x)  # (..., Cout, ...)
        del x
        return self.conv2.stream(h, _norm_silu_transform(self.norm2, h, self.per_frame), out=out)


class AttnBlock3DFix(nn.Module):
    """Single-head self-attention inside each frame over its h*w positions (no temporal mixing).

    q/k/v/proj_out are 1x1x1 causal convs (reference key layout); we apply them as one linear map and
    batch every frame through `scaled_dot_product_attention` (scale C^-0.5, as the reference).
    """

    per_frame = False

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        batch, channels, frames, height, width = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(batch * frames, height * width, channels)  # (B*T, HW, C)
        weight = torch.cat([self.q.conv.weight, self.k.conv.weight, self.v.conv.weight]).view(3 * channels, channels)
        bias = torch.cat([self.q.conv.bias, self.k.conv.bias, self.v.conv.bias])
        q, k, v = F.linear(tokens, weight, bias).unsqueeze(1).chunk(3, dim=-1)  # (B*T, 1, HW, C) each
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B*T, HW, C)
        out = F.linear(attended, self.proj_out.conv.weight.view(channels, channels), self.proj_out.conv.bias)
        out = out.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        return x + out


class Downsample(nn.Module):
    """Per-frame 2x spatial downsampling: zero pad right/bottom by 1, conv 3x3 stride 2 (as SD's LDM)."""

    per_frame = True

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B*T, C, H, W)
        if _no_grad():
            return _map_chunks(lambda piece: self.conv(F.pad(piece, (0, 1, 0, 1))), x, 0)  # (B*T, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B*T, C, H/2, W/2)


class Spatial2xTime2x3DDownsample(nn.Module):
    """Zero pad right/bottom by 1, causal conv 3x3x3 stride 2: T -> (T-1)//2 + 1, H -> H/2, W -> W/2."""

    per_frame = False

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if _no_grad():
            return self.conv.stream(x, lambda piece, start, stop: F.pad(piece, (0, 1, 0, 1)))
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, (T-1)//2+1, H/2, W/2)


class SpatialUpsample2x(nn.Module):
    """Nearest 2x in H and W, then a causal (1,3,3) conv."""

    per_frame = False

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (1, 3, 3), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if _no_grad():  # frame-local (kernel 1 in time): upsample and convolve chunk by chunk
            return _map_chunks(self._upsample_conv, x, 2)  # (B, C, T, 2H, 2W)
        return self._upsample_conv(x)  # (B, C, T, 2H, 2W)

    def _upsample_conv(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # (B, C, T, 2H, 2W)
        return self.conv.conv(x)  # (B, C, T, 2H, 2W), kernel (1, 3, 3): no causal padding needed


class Spatial2xTime2x3DUpsample(nn.Module):
    """Frame 0 upsampled 2x in space only, frames 1.. 2x in time and space, then causal conv 3x3x3.

    T -> 1 + 2(T-1), the inverse of the strided causal downsampling (reference notes §1.2).
    """

    per_frame = False

    def __init__(self, channels: int, mode: str = "trilinear"):
        super().__init__()
        self.mode = mode
        self.conv = CausalConv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode=self.mode)  # (B, C, 1, 2H, 2W)
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2), mode=self.mode)  # (B, C, 2(T-1), 2H, 2W)
            first = torch.cat([first, rest], dim=2)  # (B, C, 1 + 2(T-1), 2H, 2W)
        return self.conv(first)  # (B, C, 1 + 2(T-1), 2H, 2W)


# --------------------------------------------------------------------------- encoder and decoder (§1.3-1.4)


class _MidBlock(nn.Module):
    def __init__(self, channels: int, config: VAEModelConfig):
        super().__init__()
        resnet = dict(three_d=True, groups=config.norm_groups, eps=config.norm_eps, dropout=config.dropout)
        self.block_1 = ResnetBlock(channels, channels, **resnet)
        self.attn_1 = AttnBlock3DFix(channels, config.norm_groups, config.norm_eps) if config.mid_attention else None
        self.block_2 = ResnetBlock(channels, channels, **resnet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, t, h, w)
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)  # (B, C, t, h, w)


class _Level(nn.Module):
    """One resolution level: `block` res-blocks then an optional `downsample` or `upsample`."""

    def __init__(self, blocks: list[nn.Module], resample_name: str, resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample is not None:
            setattr(self, resample_name, resample)

    def resample(self) -> nn.Module | None:
        return getattr(self, self.resample_name, None)


class Encoder(nn.Module):
    def __init__(self, config: VAEModelConfig):
        super().__init__()
        hidden, mult = config.hidden_size, config.hidden_size_mult
        if config.encoder_conv_in == "Conv2d":
            self.conv_in = Conv2d(config.in_channels, hidden, 3, padding=1)
        else:
            self.conv_in = CausalConv3d(config.in_channels, hidden, 3, padding=1)
        resnet = dict(groups=config.norm_groups, eps=config.norm_eps, dropout=config.dropout)
        levels = []
        in_channels = hidden
        for factor, block_kind, down_kind in zip(mult, config.encoder_resnet_blocks, config.encoder_downsample,
                                                 strict=True):
            out_channels = hidden * factor
            blocks = [ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                                  three_d=block_kind == "ResnetBlock3D", **resnet)
                      for i in range(config.num_res_blocks)]
            down = {"": None, "Downsample": Downsample,
                    "Spatial2xTime2x3DDownsample": Spatial2xTime2x3DDownsample}[down_kind]
            levels.append(_Level(blocks, "downsample", down(out_channels) if down else None))
            in_channels = out_channels
        self.down = nn.ModuleList(levels)
        self.mid = _MidBlock(in_channels, config)
        self.norm_out = nn.GroupNorm(config.norm_groups, in_channels, eps=config.norm_eps)
        self.conv_out = CausalConv3d(in_channels, 2 * config.z_channels, 3, padding=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W)
        batch = video.shape[0]
        h = _run(self.conv_in, video, batch)  # (B*T, C0, H, W) or (B, C0, T, H, W)
        for level in self.down:
            for block in level.block:
                h = _run(block, h, batch)  # (.., Ci, .., H_i, W_i)
            if level.resample() is not None:
                h = _run(level.resample(), h, batch)  # (.., Ci, .., H_i/2, W_i/2), T halved by 3D downsample
        if h.dim() == 4:
            h = _to_video(h, batch)  # (B, C, t, h, w)
        h = self.mid(h)  # (B, C, t, h, w)
        if _no_grad():
            return self.conv_out.stream(h, _norm_silu_transform(self.norm_out, h, per_frame=False))  # (B, 2z, t, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2z, t, h, w)


class Decoder(nn.Module):
    def __init__(self, config: VAEModelConfig):
        super().__init__()
        hidden, mult = config.hidden_size, config.hidden_size_mult
        in_channels = hidden * mult[-1]
        self.conv_in = CausalConv3d(config.z_channels, in_channels, 3, padding=1)
        self.mid = _MidBlock(in_channels, config)
        resnet = dict(groups=config.norm_groups, eps=config.norm_eps, dropout=config.dropout)
        levels: list[nn.Module | None] = [None] * config.num_levels
        # `up` is indexed fine -> coarse like the reference; forward walks it coarse -> fine.
        for level in reversed(range(config.num_levels)):
            out_channels = hidden * mult[level]
            three_d = config.decoder_resnet_blocks[level] == "ResnetBlock3D"
            blocks = [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, three_d=three_d, **resnet)
                      for i in range(config.num_res_blocks + 1)]
            kind = config.decoder_upsample[level]
            if kind == "SpatialUpsample2x":
                up = SpatialUpsample2x(out_channels)
            elif kind == "Spatial2xTime2x3DUpsample":
                up = Spatial2xTime2x3DUpsample(out_channels, config.upsample_interpolation)
            else:
                up = None
            levels[level] = _Level(blocks, "upsample", up)
            in_channels = out_channels
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(config.norm_groups, in_channels, eps=config.norm_eps)
        self.conv_out = CausalConv3d(in_channels, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, z, t, h, w)
        batch = z.shape[0]
        h = self.conv_in(z)  # (B, C, t, h, w)
        h = self.mid(h)  # (B, C, t, h, w)
        for level in reversed(self.up):
            for block in level.block:
                h = _run(block, h, batch)  # (.., Ci, .., H_i, W_i)
            if level.resample() is not None:
                h = _run(level.resample(), h, batch)  # (B, Ci, T_i', 2H_i, 2W_i)
        if h.dim() == 4:
            h = _to_video(h, batch)  # (B, C0, T, H, W)
        if _no_grad():
            return self.conv_out.stream(h, _norm_silu_transform(self.norm_out, h, per_frame=False))  # (B, 3, T, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, T, H, W)


class CausalVAE(nn.Module):
    """Encoder, quant convs and decoder; `encode` -> DiagonalGaussian, `decode` -> video."""

    def __init__(self, config: VAEModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_layer:
            self.quant_conv = CausalConv3d(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, 1)
        else:
            self.quant_conv = self.post_quant_conv = None

    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        """Untiled encoder: (B, 3, T, H, W) -> moments (B, 2*embed_dim, t, h, w)."""
        moments = self.encoder(video)  # (B, 2z, t, h, w)
        return moments if self.quant_conv is None else self.quant_conv(moments)  # (B, 2e, t, h, w)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Untiled decoder: (B, embed_dim, t, h, w) -> video (B, 3, T, H, W)."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)  # (B, z, t, h, w)
        return self.decoder(latents)  # (B, 3, 1 + 4(t-1), 8h, 8w)

    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """(B, 3, T, H, W) in [-1, 1] -> posterior over (B, embed_dim, t, h, w); tiled when configured."""
        from components.vae import tiling

        if tiling.needs_tiling_encode(self.config, video.shape):
            return DiagonalGaussian(tiling.tiled_encode(self.encode_moments, video, self.config))
        return DiagonalGaussian(self.encode_moments(video))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, t, h, w) -> video (B, 3, T, H, W), unclamped; tiled when configured."""
        from components.vae import tiling

        if tiling.needs_tiling_decode(self.config, latents.shape):
            return tiling.tiled_decode(self.decode_latents, latents, self.config)
        return self.decode_latents(latents)

    def forward(self, video: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(video)
        latents = posterior.sample(generator) if sample else posterior.mode()  # (B, e, t, h, w)
        return self.decode(latents), posterior  # (B, 3, T, H, W)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

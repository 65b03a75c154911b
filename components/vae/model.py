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
- without autograd (inference), the kernels of `streaming.py` run: channels last, chunks of frames,
  GroupNorm + swish fused into the convolutions, residuals added in place, the causal front padding
  folded into the kernel, temporal Winograd: a res-block keeps at most its input, one intermediate and
  its output alive. With autograd the plain formulation runs (training), with the same results up to
  float rounding;
- on CPU, the encoder and each decoder res-block keep freed host memory for reuse
  (`core.host_memory`), so chunks stop page-faulting in the same tensors again and again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.core.host_memory import release_freed_memory, reuse_freed_memory
from components.vae import streaming
from components.vae.config import VAEModelConfig
from components.vae.posterior import DiagonalGaussian
from components.vae.streaming import (
    FastConv2d,
    Frames,
    NearestUpsampleConv,
    Transform,
    causal_conv_stream,
    channels_last,
    fold_replicated_taps,
    map_chunks,
    norm_silu_transform,
)


def _no_grad() -> bool:
    return not torch.is_grad_enabled()


def _to_frames(video: torch.Tensor) -> torch.Tensor:
    batch, channels, frames, height, width = video.shape
    return video.transpose(1, 2).reshape(batch * frames, channels, height, width)  # (B*T, C, H, W)


def _to_video(frames: torch.Tensor, batch: int) -> torch.Tensor:
    count, channels, height, width = frames.shape
    video = frames.reshape(batch, count // batch, channels, height, width)  # (B, T, C, H, W)
    video = video.transpose(1, 2)  # (B, C, T, H, W); a view, channels last if `frames` was
    return channels_last(video) if _no_grad() else video.contiguous()


def _per_frame_chain(modules: list[nn.Module], frames: torch.Tensor, channels: int) -> torch.Tensor:
    """`modules` (all per-frame) applied in turn to chunks of `frames` (N, C, H, W), sized so that a
    `channels`-wide activation at full resolution takes at most one streaming chunk (CHUNK_BYTES), so each
    module inside runs on the chunk in one piece, with no copy into a larger output."""
    frame_bytes = channels * frames.shape[2] * frames.shape[3] * frames.element_size()
    step = max(1, streaming.CHUNK_BYTES // frame_bytes)
    out = None
    for start in range(0, frames.shape[0], step):
        h = frames[start:start + step]
        for module in modules:
            h = module(h)  # (n, C_i, H_i, W_i)
        if out is None:
            out = torch.empty((frames.shape[0], *h.shape[1:]), dtype=h.dtype, device=h.device,
                              memory_format=torch.channels_last)
        out[start:start + step] = h
    return out  # (N, C_out, H_out, W_out)


def _run(module: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Apply `module` in the layout it works in: frames (per-frame 2D modules) or video (3D modules)."""
    if module.per_frame and x.dim() == 5:
        x = _to_frames(x)  # (B*T, C, H, W)
    elif not module.per_frame and x.dim() == 4:
        x = _to_video(x, batch)  # (B, C, T, H, W)
    return module(x)


# --------------------------------------------------------------------------- primitives (§1.2)

# PyTorch's CPU rule (ATen Convolution.cpp, `use_mkldnn`): a float32 3D convolution of batch 1 whose
# channels·frames·height stays at or below this runs on the slow unfolding kernel, not oneDNN.
SLOW_CONV3D_MAX_SIZE = 20480


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
        if x.shape[2] == 1:
            return self._single_frame(x)
        front = self.kernel_frames - 1
        if front:
            x = torch.cat([x[:, :, :1].expand(-1, -1, front, -1, -1), x], dim=2)  # (B, Cin, T + kt - 1, H, W)
        if x.device.type == "cpu" and x.shape[0] == 1 and x.shape[1] * x.shape[2] * x.shape[3] <= SLOW_CONV3D_MAX_SIZE:
            return self._per_frame_taps(x)
        return self.conv(x)  # (B, Cout, T_out, H', W')

    def _single_frame(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, 1, H, W)
        """An image (one frame): the causal padding repeats that frame, so every temporal tap sees it and the
        3D convolution is one 2D convolution with the taps summed, k_t times less work (the VAE's image
        crops in training; the streamed inference path folds the same taps). Equal to the padded 3D
        convolution up to float rounding."""
        conv = self.conv
        weight = fold_replicated_taps(conv.weight, self.kernel_frames - 1)  # (Cout, Cin, kh, kw)
        y = F.conv2d(x[:, :, 0], weight, conv.bias, conv.stride[1:], conv.padding[1:],
                     conv.dilation[1:], conv.groups)  # (B, Cout, H', W')
        return y.unsqueeze(2)  # (B, Cout, 1, H', W')

    def _per_frame_taps(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, T + kt - 1, H, W), padded in front
        """The 3D convolution as a sum over its temporal taps of 2D convolutions of all frames at once.

        Why: at batch 1 PyTorch's CPU backend runs a 3D convolution on its slow unfolding kernel when
        channels·frames·height <= SLOW_CONV3D_MAX_SIZE (a size rule made for 2D inputs), which is every
        layer of a small VAE's training step, and forward and backward are then several times slower
        than oneDNN's (bench/RESULTS.md). Folding the frames into the batch puts every tap on oneDNN, at
        equal results up to float rounding (tests/vae/test_model.py). Larger batches already get oneDNN.
        """
        conv = self.conv
        batch, _, padded, height, width = x.shape
        frames = (padded - self.kernel_frames) // self.stride_frames + 1  # T_out
        out = None
        for tap in range(self.kernel_frames):
            stop = tap + self.stride_frames * (frames - 1) + 1
            taps = _to_frames(x[:, :, tap:stop:self.stride_frames])  # (B*T_out, Cin, H, W)
            y = F.conv2d(taps, conv.weight[:, :, tap], conv.bias if tap == 0 else None, conv.stride[1:],
                         conv.padding[1:], conv.dilation[1:], conv.groups)  # (B*T_out, Cout, H', W')
            out = y if out is None else out + y
        return _to_video(out, batch)  # (B, Cout, T_out, H', W')

    def stream(self, x: torch.Tensor, transform: Transform | None = None,
               out: torch.Tensor | None = None, accumulate: bool = True) -> torch.Tensor:
        """Same result as `forward` without autograd: chunked, channels last (see `streaming`)."""
        return causal_conv_stream(self.conv, self.kernel_frames - 1, x, transform, out, accumulate)


class Conv2d(nn.Conv2d):
    """A 2D convolution applied to every frame (frame layout)."""

    per_frame = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B*T, Cin, H, W)
        return self.stream(x) if _no_grad() else super().forward(x)  # (B*T, Cout, H, W)

    def stream(self, x: torch.Tensor, transform: Transform | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        return map_chunks(FastConv2d(self.weight, self.bias, self.stride, self.padding), x, 0, out, transform)


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
        h = self.conv1.stream(x, norm_silu_transform(self.norm1, x, self.per_frame))  # (..., Cout, ...)
        in_channels, out_channels = x.shape[1], h.shape[1]
        if self.nin_shortcut is None:
            out = x
        elif (x.dim() == 5 and x.shape[0] == 1 and out_channels <= in_channels
              and x.is_contiguous(memory_format=torch.channels_last_3d)):
            # Write the shortcut over the front of x's memory: output frames [a, b) land on input bytes of
            # frames < b, which chunk [a, b) has just read or earlier chunks consumed, and x is not needed
            # afterwards. Saves one activation at the decoder's channel reductions (its largest tensors).
            batch, _, frames, height, width = x.shape
            front = x.permute(0, 2, 3, 4, 1).reshape(-1)[:frames * height * width * out_channels]  # a view
            out = front.view(batch, frames, height, width, out_channels).permute(0, 4, 1, 2, 3)  # channels last
            out = self.nin_shortcut.stream(x, out=out, accumulate=False)
        else:
            out = self.nin_shortcut.stream(x)  # (..., Cout, ...)
        del x
        return self.conv2.stream(h, norm_silu_transform(self.norm2, h, self.per_frame), out=out)


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
            return map_chunks(lambda piece: self.conv(F.pad(piece, (0, 1, 0, 1))), x, 0)  # (B*T, C, H/2, W/2)
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
        if _no_grad():  # frame-local (kernel 1 in time): sub-pixel convs, chunk by chunk over frames
            upsample_conv = NearestUpsampleConv(self.conv.conv.weight[:, :, 0], self.conv.conv.bias)
            frames = map_chunks(upsample_conv, _to_frames(x), 0, growth=4)  # (B*T, C, 2H, 2W)
            return _to_video(frames, x.shape[0])  # (B, C, T, 2H, 2W)
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
        if _no_grad():  # the conv reads upsampled frames as it goes: the 8x larger input is never stored
            batch, channels, frames, height, width = x.shape
            upsampled = Frames(1 + 2 * (frames - 1), batch * channels * 4 * height * width * x.element_size(),
                               4 * height * width, lambda start, stop: self._upsampled(x, start, stop))
            return self.conv.stream(upsampled)  # (B, C, 1 + 2(T-1), 2H, 2W)
        first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode=self.mode)  # (B, C, 1, 2H, 2W)
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2), mode=self.mode)  # (B, C, 2(T-1), 2H, 2W)
            first = torch.cat([first, rest], dim=2)  # (B, C, 1 + 2(T-1), 2H, 2W)
        return self.conv(first)  # (B, C, 1 + 2(T-1), 2H, 2W)

    def _upsampled(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) of the upsampled video, from the few input frames they depend on.

        Upsampled frame 1 + j is interpolated at input frame 1 + j/2 - 1/4, so it reads frames 1 + j//2
        and its neighbour: interpolating a slice with one frame of context on each side gives the same
        values as interpolating the whole video (the slice starts at an even output frame, so the
        interpolation weights are the same), except at the context frames, which are cropped.
        """
        pieces = []
        if start == 0:
            pieces.append(F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode=self.mode))  # (B, C, 1, 2H, 2W)
        rest = x[:, :, 1:]  # (B, C, L, H, W)
        first, last = max(start - 1, 0), stop - 1  # range of rest-frame outputs j
        if last > first:
            lo, hi = max(first // 2 - 1, 0), min((last - 1) // 2 + 2, rest.shape[2])
            window = F.interpolate(rest[:, :, lo:hi], scale_factor=(2, 2, 2), mode=self.mode)
            pieces.append(window[:, :, first - 2 * lo:last - 2 * lo])  # (B, C, last - first, 2H, 2W)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


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
        self.mid = _MidBlock(in_channels, config) if config.mid_block else nn.Identity()
        self.norm_out = nn.GroupNorm(config.norm_groups, in_channels, eps=config.norm_eps)
        self.conv_out = CausalConv3d(in_channels, 2 * config.z_channels, 3, padding=1)

    def _modules_in_order(self) -> list[nn.Module]:
        modules = [self.conv_in]
        for level in self.down:
            modules += [*level.block, *([level.resample()] if level.resample() is not None else [])]
        return modules

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W)
        batch, modules = video.shape[0], self._modules_in_order()
        h = video
        if _no_grad():
            # The leading per-frame modules (v1.2: conv_in and the two 2D levels, GroupNorm per frame
            # included) are frame-local: run them end to end on a few frames at a time, so the full-
            # resolution activations exist for one chunk only, not for the whole clip.
            prefix = next((i for i, module in enumerate(modules) if not module.per_frame), len(modules))
            if prefix:
                h = _per_frame_chain(modules[:prefix], _to_frames(h), self.conv_in.out_channels)  # (B*T, C, h, w)
                modules = modules[prefix:]
        for module in modules:
            h = _run(module, h, batch)  # (.., Ci, .., H_i, W_i); H, W halved by downsamples, T by 3D ones
        if h.dim() == 4:
            h = _to_video(h, batch)  # (B, C, t, h, w)
        h = self.mid(h)  # (B, C, t, h, w)
        if _no_grad():
            return self.conv_out.stream(h, norm_silu_transform(self.norm_out, h, per_frame=False))  # (B, 2z, t, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2z, t, h, w)


class Decoder(nn.Module):
    def __init__(self, config: VAEModelConfig):
        super().__init__()
        hidden, mult = config.hidden_size, config.hidden_size_mult
        in_channels = hidden * mult[-1]
        self.conv_in = CausalConv3d(config.z_channels, in_channels, 3, padding=1)
        self.mid = _MidBlock(in_channels, config) if config.mid_block else nn.Identity()
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
                # Per res-block, not around the whole decoder: the upsamplers' temporaries would grow the
                # kept heap and raise the peak (bench/RESULTS.md).
                with reuse_freed_memory(enabled=h.device.type == "cpu"):
                    h = _run(block, h, batch)  # (.., Ci, .., H_i, W_i)
            if level.resample() is not None:
                h = _run(level.resample(), h, batch)  # (B, Ci, T_i', 2H_i, 2W_i)
        if h.dim() == 4:
            h = _to_video(h, batch)  # (B, C0, T, H, W)
        if _no_grad():
            return self.conv_out.stream(h, norm_silu_transform(self.norm_out, h, per_frame=False))  # (B, 3, T, H, W)
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
        if _no_grad():
            # Chunked inference frees and reallocates the same tensors chunk after chunk: keeping freed
            # memory saves the kernel's page faults (encode 42.8 -> 36 s, bench/RESULTS.md).
            with reuse_freed_memory(enabled=video.device.type == "cpu"):
                moments = self.encoder(channels_last(video))  # (B, 2z, t, h, w)
        else:
            moments = self.encoder(video)
        moments = moments if self.quant_conv is None else self.quant_conv(moments)  # (B, 2e, t, h, w)
        return moments.contiguous()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Untiled decoder: (B, embed_dim, t, h, w) -> video (B, 3, T, H, W)."""
        if _no_grad():
            latents = channels_last(latents)
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)  # (B, z, t, h, w)
        video = self.decoder(latents).contiguous()  # (B, 3, 1 + 4(t-1), 8h, 8w)
        if latents.device.type == "cpu":
            release_freed_memory()  # res-block outputs came from the kept heap (Decoder.forward)
        return video

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

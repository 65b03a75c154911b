"""CausalVAE: exact v1.2 size and key layout, frame arithmetic, posterior, training step on tiny."""

import pytest
import torch
import torch.nn.functional as F

from components.vae import streaming
from components.vae.config import load_vae_config
from components.vae.model import CausalVAE, num_parameters
from components.vae.posterior import DiagonalGaussian


@pytest.fixture(scope="module")
def v12_meta():
    with torch.device("meta"):
        return CausalVAE(load_vae_config("v1.2").model)


def test_v12_parameter_counts(v12_meta):
    assert num_parameters(v12_meta) == 239_189_991
    assert num_parameters(v12_meta.encoder) == 94_399_368
    assert num_parameters(v12_meta.decoder) == 144_790_531
    assert num_parameters(v12_meta.quant_conv) == 72 and num_parameters(v12_meta.post_quant_conv) == 20


def test_v12_state_dict_keys_match_reference_layout(v12_meta):
    shapes = {key: tuple(value.shape) for key, value in v12_meta.state_dict().items()}
    assert len(shapes) == 248
    assert all(key.split(".")[0] in {"encoder", "decoder", "quant_conv", "post_quant_conv"} for key in shapes)
    expected = {  # reference notes §8.1
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
        "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.1.block.0.norm1.weight": (128,),
        "encoder.down.1.downsample.conv.conv.weight": (256, 256, 3, 3, 3),
        "encoder.down.2.block.0.conv1.conv.weight": (512, 256, 3, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.conv.weight": (512, 256, 1, 1, 1),
        "encoder.down.2.downsample.conv.conv.weight": (512, 512, 3, 3, 3),
        "encoder.down.3.block.1.conv2.conv.bias": (512,),
        "encoder.mid.attn_1.q.conv.weight": (512, 512, 1, 1, 1),
        "encoder.mid.attn_1.proj_out.conv.weight": (512, 512, 1, 1, 1),
        "encoder.mid.block_2.norm2.weight": (512,),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.conv.weight": (8, 512, 3, 3, 3),
        "quant_conv.conv.weight": (8, 8, 1, 1, 1),
        "post_quant_conv.conv.weight": (4, 4, 1, 1, 1),
        "decoder.conv_in.conv.weight": (512, 4, 3, 3, 3),
        "decoder.mid.attn_1.norm.weight": (512,),
        "decoder.up.3.block.2.conv2.conv.weight": (512, 512, 3, 3, 3),
        "decoder.up.3.upsample.conv.conv.weight": (512, 512, 3, 3, 3),
        "decoder.up.2.upsample.conv.conv.weight": (512, 512, 3, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.conv.weight": (256, 512, 1, 1, 1),
        "decoder.up.1.upsample.conv.conv.weight": (256, 256, 1, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.conv.weight": (128, 256, 1, 1, 1),
        "decoder.up.0.block.2.conv1.conv.weight": (128, 128, 3, 3, 3),
        "decoder.norm_out.bias": (128,),
        "decoder.conv_out.conv.weight": (3, 128, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert not any("up.0.upsample" in key or "down.3.downsample" in key for key in shapes)


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (9, 3), (17, 5), (2, 1), (8, 2)])
def test_frame_arithmetic(tiny_vae, frames, latent_frames):
    video = torch.rand(1, 3, frames, 16, 24) * 2 - 1
    with torch.no_grad():
        posterior = tiny_vae.encode(video)
        assert posterior.mean.shape == (1, 4, latent_frames, 2, 3)
        decoded = tiny_vae.decode(posterior.mode())
    assert decoded.shape == (1, 3, 1 + 4 * (latent_frames - 1), 16, 24)  # 4k+1 clips round-trip exactly


@pytest.mark.parametrize("height, width, latent", [(32, 24, (4, 3)), (8, 40, (1, 5)), (60, 16, (7, 2))])
def test_spatial_sizes(tiny_vae, height, width, latent):
    with torch.no_grad():
        latents = tiny_vae.encode(torch.zeros(2, 3, 5, height, width)).mean
        assert latents.shape[-2:] == latent
        assert tiny_vae.decode(latents).shape[-2:] == (8 * latent[0], 8 * latent[1])  # H=60 floors to 56


def test_causal_in_padding_but_not_in_groupnorm(tiny_vae):
    """Later frames reach earlier latents only through the 3D GroupNorm statistics (reference notes §1.5)."""
    torch.manual_seed(1)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]
    with torch.no_grad():
        assert (tiny_vae.encode(changed).mean[:, :, 0] - tiny_vae.encode(video).mean[:, :, 0]).abs().max() > 1e-6
    for module in tiny_vae.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.forward = lambda x, m=module: x  # statistics pooled over T are the only non-causal path
    tiny_vae.requires_grad_(False)
    with torch.enable_grad():  # the plain path, which calls the (patched) GroupNorm modules
        reference = tiny_vae.encode(video).mean
        moved = tiny_vae.encode(changed).mean
    torch.testing.assert_close(moved[:, :, :2], reference[:, :, :2])  # latents 0, 1 see frames 0..4
    assert (moved[:, :, 2] - reference[:, :, 2]).abs().max() > 1e-6


def test_posterior_semantics():
    mean = torch.randn(2, 4, 3, 2, 2)
    logvar = torch.full_like(mean, -60.0)
    logvar[:, :, 0] = 1.0
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert posterior.logvar.min() == -30.0  # clamped
    torch.testing.assert_close(posterior.std, torch.exp(0.5 * posterior.logvar))
    assert torch.equal(posterior.mode(), mean)
    first = posterior.sample(torch.Generator().manual_seed(3))
    again = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert (first[:, :, 1:] - mean[:, :, 1:]).abs().max() < 1e-5  # std = e^-15
    assert (first[:, :, 0] - mean[:, :, 0]).abs().max() > 0.1
    kl = posterior.kl()
    assert kl.shape == (2,)
    expected = 0.5 * (mean.pow(2) + posterior.var - 1 - posterior.logvar).flatten(1).sum(1)
    torch.testing.assert_close(kl, expected)
    standard = DiagonalGaussian(torch.zeros(1, 8, 1, 2, 2))
    assert standard.kl().item() == 0.0


@pytest.mark.parametrize("chunk_bytes", [2**30, 40_000])
@pytest.mark.parametrize("per_frame_kernels", ["default", "everywhere"])
def test_no_grad_path_equals_autograd_path(tiny_vae, monkeypatch, chunk_bytes, per_frame_kernels):
    """Streaming inference (fused GroupNorm, chunked convs, in-place residuals, Winograd) gives the same
    numbers. "everywhere" lowers the size thresholds so the tiny model takes every per-frame kernel."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", chunk_bytes)  # 40 kB: chunks of 1-3 frames everywhere, 2D prefix 2 frames
    if per_frame_kernels == "everywhere":
        monkeypatch.setattr(streaming, "MIN_FRAME_PIXELS", 1)
        monkeypatch.setattr(streaming, "ROW_WINOGRAD_MIN_CHANNELS", 1)
    video = torch.rand(1, 3, 21, 16, 16) * 2 - 1
    with torch.no_grad():
        fast_latents = tiny_vae.encode(video).mean
        fast_video = tiny_vae.decode(fast_latents)
    slow_latents = tiny_vae.encode(video).mean
    slow_video = tiny_vae.decode(slow_latents)
    torch.testing.assert_close(fast_latents, slow_latents.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_video, slow_video.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, 1), (3, 2, 0), ((1, 3, 3), 1, 1), (1, 1, 0)])
@pytest.mark.parametrize(("batch", "frames"), [(1, 9), (2, 1)])
def test_cpu_training_convolution_equals_conv3d_with_gradients(kernel, stride, padding, batch, frames):
    """With autograd on CPU a causal conv runs as 2D convolutions per temporal tap (oneDNN at batch 1), and
    on one frame (an image crop) as one 2D convolution with the taps summed: the same values and gradients
    as the wrapped nn.Conv3d on the padded clip."""
    from components.vae.model import CausalConv3d

    torch.manual_seed(0)
    conv = CausalConv3d(8, 6, kernel, stride=stride, padding=padding)
    video = torch.randn(batch, 8, frames, 10, 12, requires_grad=True)
    ours = conv(video)
    front = conv.kernel_frames - 1
    padded = torch.cat([video[:, :, :1].expand(-1, -1, front, -1, -1), video], dim=2) if front else video
    reference = conv.conv(padded)
    assert ours.shape == reference.shape == (batch, 6, (frames - 1) // stride + 1, *reference.shape[-2:])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(reference)
    ours_grads = torch.autograd.grad((ours * weights).sum(), [video, conv.conv.weight, conv.conv.bias])
    reference_grads = torch.autograd.grad((reference * weights).sum(), [video, conv.conv.weight, conv.conv.bias])
    for mine, expected in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-4)


def test_forward_backward_on_tiny(tiny_vae):
    tiny_vae.train()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    reconstruction, posterior = tiny_vae(video, generator=torch.Generator().manual_seed(0))
    assert reconstruction.shape == video.shape
    loss = (reconstruction - video).abs().mean() + 1e-6 * posterior.kl().mean()
    loss.backward()
    grads = [p.grad for p in tiny_vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tiny_vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert tiny_vae.decoder.conv_out.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_upsampled_frames_read_in_pieces_equal_the_whole_upsampling(frames):
    """The temporal upsampler's conv reads its input a few frames at a time; every range must equal the
    same frames of the whole upsampled video (context frames at slice edges, exact weights)."""
    from components.vae.model import Spatial2xTime2x3DUpsample

    upsample = Spatial2xTime2x3DUpsample(3)
    x = torch.randn(1, 3, frames, 4, 5)
    whole = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear")
    if frames > 1:
        whole = torch.cat([whole, F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2), mode="trilinear")], dim=2)
    for start in range(whole.shape[2]):
        for stop in range(start + 1, whole.shape[2] + 1):
            assert torch.equal(upsample._upsampled(x, start, stop), whole[:, :, start:stop]), (start, stop)


LEAN = ["model.num_res_blocks=0", "model.mid_block=false", "model.hidden_size=32", "model.hidden_size_mult=[1,1,1,1]"]


def test_lean_layout_has_no_encoder_blocks_or_mid_and_streams_like_autograd():
    """num_res_blocks 0 and no mid block: plain resamplers in the encoder, one res-block per decoder level."""
    config = load_vae_config("tiny", LEAN).model
    torch.manual_seed(0)
    lean = CausalVAE(config).eval()
    assert [len(level.block) for level in lean.encoder.down] == [0] * 4
    assert [len(level.block) for level in lean.decoder.up] == [1] * 4
    assert isinstance(lean.encoder.mid, torch.nn.Identity) and isinstance(lean.decoder.mid, torch.nn.Identity)
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    with torch.no_grad():
        fast = lean.decode(lean.encode(video).mean)
    slow = lean.decode(lean.encode(video).mean)
    assert fast.shape == (1, 3, 9, 16, 24)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_res_blocks 0 needs one width at every level"):
        load_vae_config("tiny", ["model.num_res_blocks=0"])

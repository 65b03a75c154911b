"""Tail initialisation from a tiny diffusers AutoencoderKL reproduces it on images (T = 1); the phase-2
handoff's re-expression of image-trained kernels keeps images and reads the current frame on video."""

import pytest
import torch

from components.vae.config import TailInitConfig, load_vae_config
from components.vae.model import CausalConv3d, CausalVAE
from components.vae.tail_init import (
    diffusers_to_ldm,
    image_kernels_to_tail,
    inflate_kernel,
    tail_init,
    tail_init_from_config,
)


@pytest.fixture()
def sd_vae_folder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    tiny = load_vae_config("tiny").model
    vae_2d = AutoencoderKL(  # LDM layout at the tiny preset's widths
        block_out_channels=tuple(tiny.hidden_size * m for m in tiny.hidden_size_mult),
        down_block_types=("DownEncoderBlock2D",) * tiny.num_levels,
        up_block_types=("UpDecoderBlock2D",) * tiny.num_levels,
        layers_per_block=tiny.num_res_blocks, norm_num_groups=tiny.norm_groups, latent_channels=tiny.z_channels,
    ).eval()
    vae_2d.save_pretrained(tmp_path / "sd-vae")
    return tmp_path / "sd-vae", vae_2d


def test_inflate_kernel_puts_2d_kernel_in_last_slice():
    kernel = torch.randn(4, 3, 3, 3)
    inflated = inflate_kernel(kernel, torch.Size((4, 3, 3, 3, 3)))
    assert torch.equal(inflated[:, :, -1], kernel) and not inflated[:, :, :-1].any()
    assert torch.equal(inflate_kernel(kernel, torch.Size((4, 3, 1, 3, 3))), kernel[:, :, None])


def test_tail_init_reproduces_2d_vae_on_images(sd_vae_folder):
    folder, vae_2d = sd_vae_folder
    # nearest: SD's upsampler interpolation, so that the decoders agree exactly (config docs).
    config = load_vae_config("tiny", ["model.upsample_interpolation=nearest"])
    model = tail_init_from_config(CausalVAE(config.model).eval(), TailInitConfig(source=str(folder)))
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours_mean = model.encode(images[:, :, None]).mean[:, :, 0]  # (B, 4, h, w)
        ours_video = model.decode(latents[:, :, None])[:, :, 0]  # (B, 3, H, W)
        theirs_mean = vae_2d.encode(images).latent_dist.mean
        theirs_video = vae_2d.decode(latents).sample
    torch.testing.assert_close(ours_mean, theirs_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_video, theirs_video, rtol=1e-4, atol=1e-4)
    assert theirs_video.abs().mean() > 0.1  # not trivially zero


def test_tail_init_from_ldm_state_file(tmp_path, sd_vae_folder):
    from safetensors.torch import save_file

    folder, vae_2d = sd_vae_folder
    ldm = diffusers_to_ldm(vae_2d.state_dict())
    assert "encoder.mid.attn_1.q.weight" in ldm and "decoder.up.3.block.0.conv1.weight" in ldm
    save_file({k: v.contiguous() for k, v in ldm.items()}, tmp_path / "sd-vae.safetensors")
    config = load_vae_config("tiny").model
    from_file = tail_init_from_config(CausalVAE(config), TailInitConfig(source=str(tmp_path / "sd-vae.safetensors")))
    from_folder = tail_init_from_config(CausalVAE(config), TailInitConfig(source=str(folder)))
    assert all(torch.equal(a, b) for a, b in zip(from_file.state_dict().values(), from_folder.state_dict().values(), strict=True))
    weight = from_file.state_dict()["decoder.up.3.upsample.conv.conv.weight"]
    assert torch.equal(weight[:, :, 2], ldm["decoder.up.3.upsample.conv.weight"]) and not weight[:, :, :2].any()


def test_tail_init_rejects_mismatched_source(sd_vae_folder):
    folder, vae_2d = sd_vae_folder
    wider = CausalVAE(load_vae_config("tiny", ["model.hidden_size=32"]).model)
    with pytest.raises(ValueError, match="does not fit"):
        tail_init(wider, diffusers_to_ldm(vae_2d.state_dict()))


@pytest.mark.parametrize("allow_download", [False, True])
def test_hub_id_downloads_only_when_allowed(monkeypatch, sd_vae_folder, allow_download):
    from diffusers import AutoencoderKL

    folder, _ = sd_vae_folder
    calls = []
    original = AutoencoderKL.from_pretrained

    def spy(source, **kwargs):
        calls.append((source, kwargs))
        return original(folder)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", spy)
    init = TailInitConfig(source="stabilityai/sd-vae-ft-mse", allow_download=allow_download)
    tail_init_from_config(CausalVAE(load_vae_config("tiny").model), init)
    assert calls == [("stabilityai/sd-vae-ft-mse", {"subfolder": None, "local_files_only": not allow_download})]


def test_image_kernels_to_tail_keeps_images_and_reads_the_current_frame_on_video():
    """After an image-only phase 1 (kernels with random splits over time), the handoff's re-expression
    computes the same on images, and on video every causal conv reads only its current frame (a strided
    one: every stride-th frame), where before it mixed in the frames before."""
    torch.manual_seed(0)
    model = CausalVAE(load_vae_config("tiny").model).eval()
    convs = [m for m in model.modules() if isinstance(m, CausalConv3d) and m.kernel_frames > 1]
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 1, 32, 32, generator=generator) * 2 - 1
    clips = [torch.rand(1, conv.conv.in_channels, 9, 8, 8, generator=generator) for conv in convs]

    def frame_by_frame(conv: CausalConv3d, clip: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(clip[:, :, t:t + 1]) for t in range(0, 9, conv.stride_frames)], dim=2)

    with torch.no_grad():
        image_before = model.decode(model.encode(image).mean)
        assert not torch.allclose(convs[0](clips[0]), frame_by_frame(convs[0], clips[0]), atol=1e-3)
        assert image_kernels_to_tail(model) == len(convs) > 0
        torch.testing.assert_close(model.decode(model.encode(image).mean), image_before, rtol=1e-4, atol=1e-5)
        for conv, clip in zip(convs, clips, strict=True):
            assert not conv.conv.weight[:, :, :-1].any()
            torch.testing.assert_close(conv(clip), frame_by_frame(conv, clip), rtol=1e-5, atol=1e-6)

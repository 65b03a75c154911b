"""VAE loss terms, the adaptive GAN weight, the 3D discriminator (reference notes §1.9-1.10)."""

import pytest
import torch

from components.vae.discriminator import PatchDiscriminator3D
from components.vae.losses import VAELoss, adaptive_gan_weight, hinge_discriminator_loss
from components.vae.train_config import LossConfig


class FakePosterior:
    def __init__(self, kl):
        self._kl = kl

    def kl(self):
        return self._kl


def test_discriminator_reference_size_and_output_shape():
    disc = PatchDiscriminator3D()  # v1.2 sizes
    assert sum(p.numel() for p in disc.parameters()) == 4_665_729
    tiny = PatchDiscriminator3D(base_channels=4, num_layers=2)
    assert tiny(torch.zeros(2, 3, 9, 32, 32)).shape == (2, 1, 3, 8, 8)


def test_discriminator_reference_output_shape_for_25x256():
    # Shape arithmetic only (a 4.7 M-parameter forward on 25×256² is slow on CPU): use the meta device.
    with torch.device("meta"):
        disc = PatchDiscriminator3D()
        assert disc(torch.empty(1, 3, 25, 256, 256)).shape == (1, 1, 7, 32, 32)


def test_reconstruction_is_l1_summed_over_pixels_and_averaged_over_frames():
    loss = VAELoss(LossConfig(perceptual_weight=0.0))
    target = torch.zeros(2, 3, 5, 8, 8)
    recon = torch.full_like(target, 0.5)
    terms = loss.reconstruction(recon, target)
    assert terms["rec"].item() == pytest.approx(0.5)
    assert terms["nll"].item() == pytest.approx(0.5 * 3 * 8 * 8)  # sum over C·H·W per frame, mean over B·T
    assert "lpips" not in terms


def test_perceptual_term_is_broadcast_per_pixel():
    loss = VAELoss(LossConfig(lpips_backbone="alex", lpips_random_backbone=True))
    target = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    recon = target.flip(-1)
    terms = loss.reconstruction(recon, target)
    expected = (terms["rec"] + terms["lpips"]) * 3 * 32 * 32  # same LPIPS for each pixel of a frame
    assert terms["lpips"] > 0
    assert terms["nll"].item() == pytest.approx(expected.item(), rel=1e-3)


def test_generator_loss_adds_weighted_kl_and_gan_only_when_enabled():
    config = LossConfig(perceptual_weight=0.0, kl_weight=1e-2)
    loss = VAELoss(config)
    disc = PatchDiscriminator3D(base_channels=4, num_layers=1)
    last_layer = torch.nn.Parameter(torch.ones(3))
    target = torch.zeros(2, 3, 3, 16, 16)
    recon = (last_layer.view(1, 3, 1, 1, 1) * 0.1).expand_as(target)
    posterior = FakePosterior(torch.tensor([4.0, 6.0]))
    plain = loss.generator(recon, target, posterior, disc, last_layer, use_gan=False)
    assert plain["kl"].item() == pytest.approx(5.0)  # Σ KL / B
    assert plain["gen"].item() == pytest.approx(plain["nll"].item() + 0.05)
    assert "g" not in plain
    with_gan = loss.generator(recon, target, posterior, disc, last_layer, use_gan=True)
    expected = with_gan["nll"] + 0.05 + with_gan["d_weight"] * with_gan["g"]
    assert with_gan["gen"].item() == pytest.approx(expected.item())
    assert 0 <= with_gan["d_weight"].item() <= 0.5 * 1e4


def test_adaptive_weight_is_gradient_norm_ratio_clamped():
    last = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3.0 * last).sum()  # grad norm 3·√2
    g = (last * torch.tensor([0.0, 4.0])).sum()  # grad norm 4
    assert adaptive_gan_weight(nll, g, last, 1e4).item() == pytest.approx(3 * 2**0.5 / (4 + 1e-4))
    g_flat = (last * 0.0).sum()
    assert adaptive_gan_weight(nll, g_flat, last, 10.0).item() == 10.0


def test_hinge_loss_values():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # real: relu(1-2)=0, relu(1-0)=1 -> 0.5; fake: relu(1-2)=0, relu(1.5)=1.5 -> 0.75
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.5 + 0.75))

"""The training objective (reference notes §3.1): schedule, targets, min-SNR weights, masks, caption dropout."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from components.dit.config import DiffusionConfig, load_dit_config
from components.dit.diffusion import diffusion_loss, drop_captions, make_scheduler


class Oracle(torch.nn.Module):
    """Predicts the exact noise (or velocity) from x_t, knowing the clean latents (so its loss must be 0)."""

    def __init__(self, clean: torch.Tensor, scheduler: DDPMScheduler, garbage_where: torch.Tensor | None = None,
                 prediction_type: str = "epsilon"):
        super().__init__()
        self.clean, self.scheduler, self.garbage_where = clean, scheduler, garbage_where
        self.prediction_type = prediction_type

    def forward(self, noisy, timesteps, text, text_mask, latent_mask=None):
        alpha_bar = self.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
        noise = (noisy - alpha_bar.sqrt() * self.clean) / (1 - alpha_bar).sqrt()
        if self.prediction_type == "v_prediction":  # v = sqrt(ab) eps - sqrt(1 - ab) x0
            noise = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * self.clean
        if self.garbage_where is not None:
            noise = torch.where(self.garbage_where, torch.full_like(noise, 1e3), noise)
        return noise


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 2, 4, 4, generator=generator), torch.randn(3, 5, 8), torch.ones(3, 5)


def test_presets_use_the_reference_schedule():
    config = load_dit_config("v1.2").diffusion
    ours, reference = make_scheduler(config), DDPMScheduler()  # diffusers defaults are the reference's (§3.1)
    torch.testing.assert_close(ours.alphas_cumprod, reference.alphas_cumprod, rtol=0, atol=0)
    assert (config.snr_gamma, config.noise_offset, config.text_dropout) == (5.0, 0.02, 0.1)


def test_a_perfect_prediction_has_zero_loss_even_with_a_noise_offset():
    latents, text, mask = _batch()
    config = DiffusionConfig(noise_offset=0.5)
    scheduler = make_scheduler(config)
    result = diffusion_loss(Oracle(latents, scheduler), latents, text, mask, scheduler, config,
                            torch.Generator().manual_seed(1))
    assert result.loss.item() < 1e-8 and result.timesteps.shape == (3,)


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_v_prediction_targets_the_velocity(snr_gamma):
    """The tiny preset's objective: a model that predicts v = sqrt(ab) eps - sqrt(1 - ab) x0 exactly has
    zero loss, with or without min-SNR weights; one that predicts the noise does not."""
    latents, text, mask = _batch()
    config = DiffusionConfig(prediction_type="v_prediction", snr_gamma=snr_gamma, noise_offset=0.0)
    scheduler = make_scheduler(config)
    velocity = Oracle(latents, scheduler, prediction_type="v_prediction")
    exact = diffusion_loss(velocity, latents, text, mask, scheduler, config, torch.Generator().manual_seed(1))
    assert exact.loss.item() < 1e-8
    noise_only = diffusion_loss(Oracle(latents, scheduler), latents, text, mask, scheduler, config,
                                torch.Generator().manual_seed(1))
    assert noise_only.loss.item() > 1e-3


def test_the_tiny_preset_trains_v_with_plain_mse():
    config = load_dit_config("tiny").diffusion
    assert (config.prediction_type, config.snr_gamma) == ("v_prediction", None)


def test_min_snr_weights_and_determinism():
    latents, text, mask = _batch()
    config = DiffusionConfig(noise_offset=0.0)
    scheduler = make_scheduler(config)
    zero = lambda noisy, *args: torch.zeros_like(noisy)  # noqa: E731  (loss = weighted mean of noise^2)
    first = diffusion_loss(zero, latents, text, mask, scheduler, config, torch.Generator().manual_seed(7))
    again = diffusion_loss(zero, latents, text, mask, scheduler, config, torch.Generator().manual_seed(7))
    assert torch.equal(first.loss, again.loss) and torch.equal(first.timesteps, again.timesteps)
    generator = torch.Generator().manual_seed(7)
    timesteps = torch.randint(0, 1000, (3,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    weights = torch.minimum(snr, torch.tensor(5.0)) / snr
    torch.testing.assert_close(first.per_sample, noise.square().flatten(1).mean(1) * weights)


def test_padding_latents_do_not_count():
    latents, text, mask = _batch()
    config = DiffusionConfig()
    scheduler = make_scheduler(config)
    latent_mask = torch.ones(3, 2, 4, 4)
    latent_mask[:, :, :, 2:] = 0
    garbage = (latent_mask == 0)[:, None].expand_as(latents)
    result = diffusion_loss(Oracle(latents, scheduler, garbage), latents, text, mask, scheduler, config,
                            torch.Generator().manual_seed(1), latent_mask)
    assert result.loss.item() < 1e-8


def test_caption_dropout_uses_the_empty_caption():
    text, mask = torch.randn(4, 3, 8), torch.ones(4, 3, dtype=torch.long)
    empty_text, empty_mask = torch.randn(5, 8), torch.tensor([1, 0, 0, 0, 0])
    kept = drop_captions(text, mask, empty_text, empty_mask, 0.0, torch.Generator().manual_seed(0))
    assert kept[0] is text
    dropped_text, dropped_mask = drop_captions(text, mask, empty_text, empty_mask, 1.0, torch.Generator().manual_seed(0))
    assert dropped_text.shape == (4, 5, 8) and torch.equal(dropped_text[2], empty_text)
    assert dropped_mask.tolist() == [[1, 0, 0, 0, 0]] * 4
    seed = next(s for s in range(100) if 0 < int((torch.rand(4, generator=torch.Generator().manual_seed(s)) < 0.5).sum()) < 4)
    expected = (torch.rand(4, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()
    some_text, some_mask = drop_captions(text, mask, empty_text, empty_mask, 0.5, torch.Generator().manual_seed(seed))
    dropped = [bool(torch.equal(some_text[i], empty_text)) for i in range(4)]
    assert dropped == expected
    for i, was_dropped in enumerate(dropped):
        if not was_dropped:  # kept captions are padded with masked zeros only
            assert torch.equal(some_text[i, :3], text[i]) and some_mask[i].tolist() == [1, 1, 1, 0, 0]

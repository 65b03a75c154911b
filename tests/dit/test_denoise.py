"""The sampling loop (reference notes §4): every scheduler lands on the data under a perfect model, guidance
extrapolates as eps_u + g (eps_c - eps_u), and a seed fixes the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.dit.config import DiffusionConfig
from components.dit.denoise import denoise, make_sampling_scheduler, pad_captions

SHAPE = (4, 2, 4, 4)


class DeltaOracle(torch.nn.Module):
    """The exact noise predictor for data that is one point per caption: caption i (text[:, 0, 0] == i)
    always shows targets[i]."""

    def __init__(self, targets: torch.Tensor, scheduler, prediction_type: str = "epsilon"):
        super().__init__()
        self.targets, self.prediction_type = targets, prediction_type
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the loop a dtype
        alpha_bar = scheduler.alphas_cumprod.double().numpy()
        self.sigmas = np.sqrt((1 - alpha_bar) / alpha_bar)  # continuous-time view shared by all schedulers

    def forward(self, x, timesteps, text, text_mask):
        sigma = torch.tensor(np.interp(timesteps.double().numpy(), np.arange(len(self.sigmas)), self.sigmas))
        alpha_bar = (1 / (1 + sigma**2)).float().view(-1, 1, 1, 1, 1)
        clean = self.targets[text[:, 0, 0].long()]
        noise = (x - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()
        if self.prediction_type == "epsilon":
            return noise
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean  # v = sqrt(ab) eps - sqrt(1 - ab) x0


class Shrink(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, timesteps, text, text_mask):
        return x * self.scale


def _caption(index: int) -> torch.Tensor:
    return torch.full((3, 8), float(index))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_solver", "ddim"])
def test_every_scheduler_recovers_the_data_under_a_perfect_model(name, prediction_type):
    """Either target the model was trained on (the tiny preset trains v, v1.2 epsilon): the scheduler is
    built on the training objective and lands on the data."""
    scheduler = make_sampling_scheduler(name, DiffusionConfig(prediction_type=prediction_type))
    targets = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    text, mask = pad_captions([_caption(0), _caption(1)], [torch.ones(3), torch.ones(3)])
    oracle = DeltaOracle(targets, scheduler, prediction_type)
    latents = denoise(oracle, text, mask, SHAPE, scheduler, 30, torch.Generator().manual_seed(1))
    torch.testing.assert_close(latents, targets, rtol=0, atol=2e-2)


def test_guidance_extrapolates_from_the_negative_caption():
    scheduler = make_sampling_scheduler("ddim", DiffusionConfig())
    targets = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    text, mask = _caption(1)[None], torch.ones(1, 3)
    negative, negative_mask = _caption(0)[None, :1], torch.ones(1, 1)  # a shorter negative caption
    latents = denoise(DeltaOracle(targets, scheduler), text, mask, SHAPE, scheduler, 30,
                      torch.Generator().manual_seed(1), guidance=3.0, negative_text=negative, negative_mask=negative_mask)
    torch.testing.assert_close(latents[0], targets[0] + 3.0 * (targets[1] - targets[0]), rtol=0, atol=5e-2)


def test_a_seed_fixes_the_sample():
    scheduler = make_sampling_scheduler("euler_ancestral", DiffusionConfig())
    net = Shrink()  # any network: the point is the randomness of the loop
    text, mask = _caption(0)[None], torch.ones(1, 3)
    runs = [denoise(net, text, mask, SHAPE, scheduler, 5, torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_guidance_without_a_negative_caption_is_an_error():
    scheduler = make_sampling_scheduler("ddim", DiffusionConfig())
    with pytest.raises(ValueError, match="negative"):
        denoise(torch.nn.Linear(1, 1), _caption(0)[None], torch.ones(1, 3), SHAPE, scheduler, 2,
                torch.Generator().manual_seed(0), guidance=7.5)

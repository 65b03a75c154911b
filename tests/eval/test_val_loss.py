import pytest
import torch

from components.dit.config import DiffusionConfig
from components.dit.diffusion import make_scheduler
from components.eval.val_loss import fixed_timesteps, validation_loss


class _Zeros(torch.nn.Module):
    """Predicts zero noise: its epsilon loss is the noise's mean square at every timestep."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, text, text_mask):
        return torch.zeros_like(x)


class _Oracle(_Zeros):
    """Knows the clean latents are zero, so x_t = sqrt(1 - a_t) eps and eps = x_t / sqrt(1 - a_t)."""

    def __init__(self, scheduler):
        super().__init__()
        self.alphas = scheduler.alphas_cumprod

    def forward(self, x, t, text, text_mask):
        return x / (1 - self.alphas[t]).sqrt()[:, None, None, None, None]


def _batches(num=3, clean=None, size=2):
    generator = torch.Generator().manual_seed(123)
    return [{"latent_mean": torch.zeros(size, 4, 2, 4, 4) if clean == "zero" else torch.randn(size, 4, 2, 4, 4,
                                                                                          generator=generator),
             "text": torch.randn(size, 5, 8, generator=generator), "text_mask": torch.ones(size, 5, dtype=torch.long)}
            for _ in range(num)]


def test_timesteps_are_bin_centres():
    assert fixed_timesteps(10, 1000) == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert fixed_timesteps(1, 1000) == [500]
    with pytest.raises(ValueError, match="num_timesteps"):
        fixed_timesteps(0, 1000)


def test_fixed_noise_makes_the_loss_reproducible_and_exact():
    config = DiffusionConfig()
    scheduler = make_scheduler(config)
    steps = fixed_timesteps(10, 1000)
    zeros = validation_loss(_Zeros(), _batches(), 0.5, scheduler, "epsilon", steps, seed=0)
    # The same noise at every timestep: a model that ignores its input scores the same everywhere.
    assert len(set(zeros["loss"])) == 1 and 0.8 < zeros["mean"] < 1.2
    assert zeros["samples"] == 6 and zeros["batches"] == 3
    assert zeros == validation_loss(_Zeros(), _batches(), 0.5, scheduler, "epsilon", steps, seed=0)
    assert zeros != validation_loss(_Zeros(), _batches(), 0.5, scheduler, "epsilon", steps, seed=1)
    one_at_a_time = validation_loss(_Zeros(), _batches(), 0.5, scheduler, "epsilon", steps, seed=0, forward_batch=1)
    assert one_at_a_time["loss"] == pytest.approx(zeros["loss"], rel=1e-6)
    oracle = validation_loss(_Oracle(scheduler), _batches(clean="zero"), 0.5, scheduler, "epsilon", steps, seed=0)
    assert max(oracle["loss"]) < 1e-8
    assert validation_loss(_Zeros(), _batches(), 0.5, scheduler, "epsilon", steps, seed=0,
                           max_batches=1)["samples"] == 2
    with pytest.raises(ValueError, match="empty"):
        validation_loss(_Zeros(), [], 0.5, scheduler, "epsilon", steps, seed=0)


def test_a_tiny_dit_gives_one_finite_loss_per_timestep():
    from components.dit.config import load_dit_config
    from components.dit.model import OpenSoraT2V

    torch.manual_seed(0)
    config = load_dit_config("tiny", ["model.zero_init=false", "model.caption_channels=8",
                                      "text.tiny.d_model=8"])
    model = OpenSoraT2V(config.model).eval()
    scheduler = make_scheduler(config.diffusion)
    result = validation_loss(model, _batches(), 0.18, scheduler, "epsilon", fixed_timesteps(4, 1000), seed=0)
    assert len(result["loss"]) == 4 and all(0 < v < 100 for v in result["loss"])
    v_loss = validation_loss(model, _batches(), 0.18, scheduler, "v_prediction", fixed_timesteps(4, 1000), seed=0)
    assert v_loss["loss"] != result["loss"]

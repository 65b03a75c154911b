"""EMA: the update rule, a full state dict with EMA weights, and its own state dict (reference notes §1.10)."""

import pytest
import torch

from components.core.training.ema import EMA


def test_ema_update_state_dict_round_trip_and_frozen_params_excluded():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)
    ema = EMA(model, decay=0.9)
    assert "1.weight" not in ema.shadow
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["0.weight"], before + 0.1)
    full = ema.model_state_dict(model)
    assert set(full) == set(model.state_dict()) and torch.equal(full["1.running_mean"], model[1].running_mean)
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.5 and torch.equal(restored.shadow["0.weight"], ema.shadow["0.weight"])
    with pytest.raises(ValueError, match="does not match"):
        EMA(torch.nn.Linear(2, 2), 0.9).load_state_dict(ema.state_dict())


def test_ema_warmup_follows_the_diffusers_rule():
    """Reference notes §3.3: the first update copies, then min(decay, (1 + s) / (10 + s))."""
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999, warmup=True)
    assert [ema.decay_at(s) for s in (0, 1, 10)] == [0.0, 2 / 11, 11 / 20]
    assert ema.decay_at(100_000) == 0.999 and EMA(model, 0.999).decay_at(0) == 0.999
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, updates=0)
    assert torch.equal(ema.shadow["weight"], model.weight)

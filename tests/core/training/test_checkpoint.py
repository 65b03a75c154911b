"""Trainer checkpoints (one process): round trip, fresh optimizers, the last K kept, a damaged latest
checkpoint skipped for the previous intact one, and no arbitrary unpickling."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from components.core import distributed
from components.core.training import checkpoint
from components.core.training.ema import EMA
from components.core.training.rng import rng_state, set_rng_state

CTX = distributed.Context(0, 1, 0, torch.device("cpu"))


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ema = EMA(model, 0.9)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        ema.update(model)
    return model, optimizer, ema


def _tensors(model, optimizer, ema):
    return {"model": checkpoint.ModelState(model), "optimizer": checkpoint.OptimizerState(model, optimizer), "ema": ema}


def test_round_trip_restores_weights_optimizer_ema_and_rng(tmp_path):
    model, optimizer, ema = _trained()
    uri = checkpoint.save(tmp_path, 3, CTX, _tensors(model, optimizer, ema), {"step": 3, "loader": {"epoch": 1}},
                          {"rng": rng_state()}, keep=2)
    expected = (torch.rand(3), random.random(), np.random.rand())
    other, other_optimizer, other_ema = _trained(seed=1)
    loaded = checkpoint.load(uri, CTX, _tensors(other, other_optimizer, other_ema))
    set_rng_state(loaded.ranks[0]["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]
    assert loaded.step == 3 and loaded.shared == {"step": 3, "loader": {"epoch": 1}} and loaded.saved_world_size == 1
    for name, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    for name, value in ema.shadow.items():
        assert torch.equal(other_ema.shadow[name], value), name
    for key, state in optimizer.state_dict()["state"].items():
        for field, value in state.items():
            assert torch.equal(other_optimizer.state_dict()["state"][key][field], value), (key, field)
    whole = checkpoint.read(uri)
    assert torch.equal(whole["model"]["0.weight"], model[0].weight) and whole["step"] == 3


def test_a_fresh_optimizer_is_saved_as_a_fresh_optimizer(tmp_path):
    """DCP creates the state of an optimizer that never stepped with a zero step; it must still be at step 0."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    reference = torch.nn.Linear(4, 2)
    reference.load_state_dict(model.state_dict())
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    checkpoint.save(tmp_path, 0, CTX, {"optimizer": checkpoint.OptimizerState(model, optimizer)}, {}, {}, keep=1)
    assert all(int(state["step"]) == 0 for state in optimizer.state.values())
    for module, opt in ((model, optimizer), (reference, reference_optimizer)):
        opt.zero_grad()
        module(torch.ones(1, 4)).sum().backward()
        opt.step()
    assert torch.equal(model.weight, reference.weight)  # same bias correction as a never-saved Adam


def test_keeps_the_last_k_and_falls_back_from_a_damaged_latest(tmp_path, caplog):
    model, optimizer, ema = _trained()
    for step in (0, 2, 4, 6):
        checkpoint.save(tmp_path, step, CTX, _tensors(model, optimizer, ema), {"step": step}, {}, keep=3)
    assert [step for step, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 4, 6]
    assert checkpoint.latest_intact(tmp_path, CTX) == ((6, checkpoint.checkpoint_uri(tmp_path, 6)), [])

    shard = next((tmp_path / "checkpoints" / "step-6").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated, as by a full disk
    (tmp_path / "checkpoints" / "step-4" / "rank-0.pt").write_bytes(b"x")  # changed
    latest, damaged = checkpoint.latest_intact(tmp_path, CTX)
    assert latest == (2, checkpoint.checkpoint_uri(tmp_path, 2))
    assert [reason for _, reason in damaged] == [f"{shard.name} has {shard.stat().st_size} bytes, "
                                                 f"{shard.stat().st_size + 10} written",
                                                 "rank-0.pt has 1 bytes, " + damaged[1][1].split(", ")[1]]
    assert "falling back" in caplog.text

    # A checkpoint that never finished writing (no index) is not a checkpoint at all.
    (tmp_path / "checkpoints" / "step-2" / checkpoint.INDEX_FILE).unlink()
    assert checkpoint.latest_intact(tmp_path, CTX)[0] is None


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    model, optimizer, ema = _trained()
    uri = checkpoint.save(tmp_path, 1, CTX, _tensors(model, optimizer, ema), {"step": 1}, {"evil": Payload()}, keep=1)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(uri, CTX, _tensors(model, optimizer, ema))

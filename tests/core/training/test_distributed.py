"""The kit on two CPU processes (gloo): DDP and FSDP2 train like one process over the global batch, and a
checkpoint saved sharded at two processes loads in one (resharded). Collective helpers in one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.core import distributed
from components.core.training import checkpoint
from components.core.training.ema import EMA
from tests.core.training.fsdp_job import STEPS, build

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_train_like_one_and_reload_in_one(tmp_path, strategy):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tests.core.training.fsdp_job", str(tmp_path), strategy],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    uri = checkpoint.checkpoint_uri(tmp_path, STEPS)
    ctx = distributed.Context(0, 1, 0, torch.device("cpu"))
    model, _ = build()
    ema = EMA(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    tensors = {"model": checkpoint.ModelState(model), "optimizer": checkpoint.OptimizerState(model, optimizer),
               "ema": ema}
    loaded = checkpoint.load(uri, ctx, tensors)
    assert loaded.saved_world_size == 2 and loaded.ranks == {0: {"rank": 0}, 1: {"rank": 1}}
    trained = checkpoint.read(uri)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    assert not torch.equal(model[0][0].weight, build()[0][0][0].weight)  # it did train


def test_single_process_helpers_are_identities(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed, ctx.dp_size, ctx.dp_rank) == (0, 1, True, False, 1, 0)
    model = torch.nn.BatchNorm1d(3)
    assert distributed.wrap(model, ctx, "fsdp") is model and distributed.sync_batch_norm(model, ctx) is model
    assert distributed.mean_over_ranks({"a": 2.0}, ctx) == {"a": 2.0} and distributed.all_true(False, ctx) is False
    assert distributed.broadcast_object({"x": 1}, ctx) == {"x": 1} and distributed.gather_objects(3, ctx) == [3]
    with pytest.raises(ValueError, match="unknown parallel strategy 'zero'"):
        distributed.wrap(model, distributed.Context(0, 2, 0, torch.device("cpu"), mesh=True), "zero")

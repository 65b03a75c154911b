"""Distributed VAE training on CPU: step time at 1 and 2 processes, and checkpoint save/load time.

    PYTHONPATH=. python bench/vae_distributed.py steps --steps 24        # tiny preset, stand-in clips
    PYTHONPATH=. python bench/vae_distributed.py checkpoint --out /tmp/ckpt   # v1.2 VAE, random weights

`steps` trains VAE phase 1 of the tiny preset (17x64x64 clips, batch 1 per process) with the tests'
stand-in loader (synthetic clips, no video decoding) as 1 process, as 2 processes under torchrun, and
as 1 process with the 2-process global batch; it reports the trainer's own timing (metrics.json: the
loop only, without start-up). `checkpoint` builds the v1.2 VAE, its discriminator, EMA and both Adam
optimizers (state filled with random values) and times the single `torch.save` file the trainer used to
write against the sharded DCP checkpoint it writes now (1 process; sha256 index included), and the
loads. Recorded results are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def steps(args: argparse.Namespace) -> None:
    overrides = [f"train.phase1.steps={args.steps}", "train.checkpoint_every=100000", "train.sample_every=100000",
                 "train.log_every=100000"]
    disc_start = 4  # the tiny preset's
    generator_steps = disc_start + (args.steps - disc_start + 1) // 2
    rows = []
    for processes, batch in ((1, 1), (2, 1), (1, 2)):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            (data / "manifest.json").write_text(json.dumps({"stage": "shard"}))
            env = {**os.environ, "PYTHONPATH": str(ROOT), "T2V_HOME": str(Path(tmp) / "home"), "OMP_NUM_THREADS": "1"}
            env.pop("MLFLOW_TRACKING_URI", None)
            launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                        if processes > 1 else [sys.executable])
            started = time.perf_counter()
            subprocess.run([*launcher, "-m", "tests.vae.standin_train", str(data), str(Path(tmp) / "out"), *overrides,
                            f"data.batch_size={batch}", "data.bucket=17x64x64"], cwd=ROOT, env=env, check=True,
                           capture_output=True)
            wall = time.perf_counter() - started
            metrics = json.loads((Path(tmp) / "out" / "metrics.json").read_text())
        seconds = metrics["seconds_this_run"]
        clips = generator_steps * batch * processes
        rows.append({"processes": processes, "batch_per_process": batch, "global_batch": batch * processes,
                     "steps": args.steps, "loop_seconds": round(seconds, 2), "seconds_per_step": round(seconds / args.steps, 3),
                     "clips_per_second": round(clips / seconds, 2), "wall_seconds_with_startup": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)


def checkpoint_times(args: argparse.Namespace) -> None:
    from components.core import distributed, storage
    from components.core.training import checkpoint
    from components.core.training.ema import EMA
    from components.vae.config import load_vae_config
    from components.vae.discriminator import PatchDiscriminator3D
    from components.vae.model import CausalVAE

    torch.manual_seed(0)
    config = load_vae_config("v1.2")
    model = CausalVAE(config.model)
    disc = PatchDiscriminator3D(3, config.train.discriminator.base_channels, config.train.discriminator.num_layers)
    ema = EMA(model, 0.999)
    optimizers = {name: torch.optim.Adam(module.parameters(), lr=1e-5) for name, module in (("gen", model), ("disc", disc))}
    tensors = {"generator": checkpoint.ModelState(model), "discriminator": checkpoint.ModelState(disc), "ema": ema,
               "gen_optimizer": checkpoint.OptimizerState(model, optimizers["gen"]),
               "disc_optimizer": checkpoint.OptimizerState(disc, optimizers["disc"])}
    for name in ("gen_optimizer", "disc_optimizer"):
        tensors[name].state_dict()  # creates the Adam state (step 0, zero moments) ...
    for optimizer in optimizers.values():
        for state in optimizer.state.values():  # ... filled with random moments, as after training
            state["exp_avg"].normal_()
            state["exp_avg_sq"].uniform_()
    ctx = distributed.Context(0, 1, 0, torch.device("cpu"))
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in disc.parameters())

    def single_state() -> dict:
        return {"generator": model.state_dict(), "discriminator": disc.state_dict(), "ema": ema.state_dict(),
                "gen_optimizer": optimizers["gen"].state_dict(), "disc_optimizer": optimizers["disc"].state_dict()}

    rows = {"parameters": params}
    for repeat in range(args.repeats):
        started = time.perf_counter()
        buffer = io.BytesIO()
        torch.save(single_state(), buffer)  # the former trainer_state.save_checkpoint: one file, written atomically
        sha = storage.write_bytes(out / "single" / f"step-{repeat}.pt", buffer.getvalue())
        del buffer
        rows.setdefault("single_file_save_s", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        loaded = torch.load(io.BytesIO(storage.read_bytes(out / "single" / f"step-{repeat}.pt", sha)),
                            map_location="cpu", weights_only=True)
        model.load_state_dict(loaded["generator"])
        optimizers["gen"].load_state_dict(loaded["gen_optimizer"])
        del loaded
        rows.setdefault("single_file_load_s", []).append(time.perf_counter() - started)

        started = time.perf_counter()
        uri = checkpoint.save(out / "dcp", repeat, ctx, tensors, {"step": repeat}, {}, keep=1)
        rows.setdefault("dcp_save_s", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        assert checkpoint.damage(uri) is None
        rows.setdefault("dcp_verify_s", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        checkpoint.load(uri, ctx, tensors)
        rows.setdefault("dcp_load_s", []).append(time.perf_counter() - started)
    rows["single_file_bytes"] = (out / "single" / f"step-{args.repeats - 1}.pt").stat().st_size
    rows["dcp_bytes"] = sum(p.stat().st_size for p in (out / "dcp" / "checkpoints").rglob("*") if p.is_file())
    print(json.dumps({k: [round(x, 2) for x in v] if isinstance(v, list) else v for k, v in rows.items()}, indent=1))
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    step_parser = commands.add_parser("steps")
    step_parser.add_argument("--steps", type=int, default=24)
    ckpt_parser = commands.add_parser("checkpoint")
    ckpt_parser.add_argument("--out", required=True)
    ckpt_parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps(args) if args.command == "steps" else checkpoint_times(args)


if __name__ == "__main__":
    main()

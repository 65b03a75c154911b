"""What the demo's training buys: the whole tiny chain with the `t2v-full/local` deployment's own parameters
(prefect.yaml: `demo_clips` and `demo_overrides`), in this process (`python -m flows run`: no Prefect or
MLflow server to start), then the numbers the demo is judged by.

    python bench/demo_quality.py --root /tmp/demo-quality        # ~9 min on 2 quiet cores

Reported: seconds per stage, `vae-eval` PSNR / SSIM, and `dit-eval`'s prompt adherence per attribute with
its chance level and the shuffled-prompt control. Everything is seeded (synthetic data seed 0, the presets'
training seeds), so a rerun on the same machine gives the same data and training order; CPU float
arithmetic decides the rest. Run it on a quiet machine: other jobs on the two cores slow small steps
several-fold (thread oversubscription), and the stage times with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def demo_parameters() -> tuple[int, list[str]]:
    definitions = yaml.safe_load((REPO / "prefect.yaml").read_text())["definitions"]
    return definitions["demo_clips"], definitions["demo_overrides"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="run folder (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="demo-quality-"))
    clips, overrides = demo_parameters()
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "T2V_HOME": str(home),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    sets = [arg for override in overrides for arg in ("--set", override)]
    done = subprocess.run([sys.executable, "-m", "flows", "run", "--run-root", str(root / "run"), "--num", str(clips),
                           *sets], env=env, cwd=REPO, capture_output=True, text=True)
    log = done.stdout + done.stderr
    (root / "pipeline.log").write_text(log)
    if done.returncode:
        sys.exit(f"pipeline failed (log: {root / 'pipeline.log'}):\n{log[-3000:]}")
    seconds = {name: float(value) for name, value in re.findall(r"stage (\S+) ran in ([0-9.]+)s", log)}
    for name, value in seconds.items():
        print(f"{name:12s} {value:7.1f} s")
    vae = json.loads((root / "run" / "vae-eval" / "metrics.json").read_text())["metrics"]
    print(f"vae-eval: PSNR {vae['psnr']:.2f} dB, SSIM {vae['ssim']:.3f}")
    adherence = json.loads((root / "run" / "dit-eval" / "metrics.json").read_text())["adherence"]
    for attribute, accuracy in adherence["accuracy"].items():
        print(f"adherence {attribute:10s} {accuracy:.3f} (chance {adherence['chance'][attribute]:.3f}, "
              f"{adherence['ratio_to_chance'][attribute]:.2f}x; shuffled {adherence['shuffled'][attribute]:.3f})")
    if args.json:
        numbers = {"seconds": seconds, "vae": vae,
                   "adherence": {key: adherence[key] for key in ("accuracy", "chance", "shuffled", "ratio_to_chance")}}
        Path(args.json).write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()

"""`t2v`: one command group per component. Each group is the component's own CLI module, imported
only when used, so `t2v data …` does not import torch models or Prefect."""

from __future__ import annotations

import importlib
import sys

GROUPS = {
    "data": ("components.data.cli", "synthesize, filter and shard captioned videos; verify shards"),
    "vae": ("components.vae.cli", "train, evaluate and inspect the causal video VAE"),
    "dit": ("components.dit.cli", "the diffusion transformer (five training stages)"),
    "eval": ("components.eval.cli", "evaluation of trained models (`t2v eval dit`)"),
    "pipeline": ("flows.cli", "run the whole pipeline (Prefect flows)"),
}


# Commands that belong to one group's vocabulary but live in another component: `t2v dit eval …` is
# `t2v eval dit …` (components.dit must not import components.eval; this dispatcher may).
ROUTES = {("dit", "eval"): ("eval", "dit")}


def usage() -> str:
    lines = ["usage: t2v <group> <command> [options]", "", "groups:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in GROUPS.items()]
    lines += [f"  (t2v {' '.join(alias)} … runs t2v {' '.join(target)} …)" for alias, target in ROUTES.items()]
    lines += ["", "Each group also runs as `python -m components.<group> …` (`python -m flows …` for pipeline)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in GROUPS:
        print(f"t2v: unknown group '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    if tuple(argv[:2]) in ROUTES:
        group, command = ROUTES[tuple(argv[:2])]
        module = importlib.import_module(GROUPS[group][0])
        return module.main([command, *argv[2:]], prog=f"t2v {group}")
    module = importlib.import_module(GROUPS[argv[0]][0])
    return module.main(argv[1:], prog=f"t2v {argv[0]}")


if __name__ == "__main__":
    raise SystemExit(main())

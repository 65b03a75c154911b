"""The pipeline's stages in order: which component function each runs and where its inputs come from.

Stages exchange nothing but artifact URIs, and every URI follows from the run root: stage `s` writes
`run_root/s/` and reads the folders of the stages before it. A stage therefore needs only the run root
(plus its own options) and can run in another process, container or machine.

Adding a stage is one more `Stage` entry here, its thin flow in `flows/stage_flows.py` and its
deployment in `prefect.yaml`. This module does not import prefect: the CLI and tests use it as is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core import storage

# Components whose presets and `--set <component>.key=value` overrides the pipeline routes.
COMPONENTS = ("data", "vae", "dit", "eval")


@dataclass(frozen=True)
class Stage:
    name: str  # output folder under the run root; its flow is `t2v-<name>`
    component: str  # whose preset and `--set <component>.…` overrides apply
    function: str  # "module:function", the component's public entry point
    # Stage-specific keyword arguments, from the run root and the options named in `options`.
    arguments: Callable[..., dict[str, Any]]
    options: tuple[str, ...] = ()  # pipeline options (parameters of the stage flow) this stage takes
    outputs: tuple[str, ...] = ()  # key files, relative to the stage folder, reported as URIs
    extra: dict[str, Any] = field(default_factory=dict)  # constant keyword arguments (e.g. a VAE phase)
    # Stages that can run as several processes: the `python -m` command line of the same function, and
    # the component's config loader, whose `launch.nproc_per_node` says how many processes to start.
    cli: tuple[str, ...] = ()
    config: str | None = None

    def load(self) -> Callable[..., dict[str, Any]]:
        return _attribute(self.function)

    def processes(self, preset: str, overrides: Sequence[str]) -> int:
        """How many processes the stage's preset (with the component's overrides) asks for."""
        if self.config is None:
            return 1
        return int(_attribute(self.config)(preset, overrides).launch.nproc_per_node)

    def command(self, preset: str, overrides: Sequence[str], parent_run_id: str | None, **arguments: Any) -> list[str]:
        """The stage as a command line (`-m` module and arguments): each keyword argument as `--name value`."""
        args = [*self.cli, "--preset", str(preset)]
        for name, value in arguments.items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        for override in overrides:
            args += ["--set", override]
        return args + (["--parent-run-id", parent_run_id] if parent_run_id else [])


def _attribute(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def stage_dir(run_root: str, name: str) -> str:
    return storage.join(run_root, name)


def _synth(run_root: str, num: int = 24, seed: int = 0, kind: str = "shapes") -> dict[str, Any]:
    return {"num": num, "seed": seed, "kind": kind}


def _filter(run_root: str, annotations: str | None = None) -> dict[str, Any]:
    # Ingest: annotations of real clips replace the synthetic ones (the synth stage is then left out).
    return {"annotations": annotations or storage.join(stage_dir(run_root, "synth"), "annotations.json")}


def _shard(run_root: str) -> dict[str, Any]:
    return {"annotations": storage.join(stage_dir(run_root, "filter"), "kept.json")}


def _vae_phase1(run_root: str) -> dict[str, Any]:
    return {"data": stage_dir(run_root, "shard")}


def _vae_phase2(run_root: str) -> dict[str, Any]:
    # Phase 2 starts from phase 1's EMA weights (reference notes §1.10).
    return {"data": stage_dir(run_root, "shard"), "init": stage_dir(run_root, "vae-phase1")}


def _vae_eval(run_root: str) -> dict[str, Any]:
    # The original clips the filter kept, not the shards: the protocol reads 33 consecutive frames of the
    # source video with no lossy re-encode in between (reference notes §1.11, §9.10), and the shards hold
    # only the training bucket's frames.
    return {"vae": storage.join(stage_dir(run_root, "vae-phase2"), "model"),
            "data": storage.join(stage_dir(run_root, "filter"), "kept.json")}


def _latents(run_root: str) -> dict[str, Any]:
    # Every clip of the shards encoded once by the trained VAE, every caption once by the text encoder.
    return {"data": stage_dir(run_root, "shard"), "vae": storage.join(stage_dir(run_root, "vae-phase2"), "model")}


def _dit_stage(number: int) -> Callable[[str], dict[str, Any]]:
    """Arguments of DiT stage `number`: the latents, and from stage 2 on the stage before (its EMA weights)."""
    def arguments(run_root: str) -> dict[str, Any]:
        init = stage_dir(run_root, f"dit-stage{number - 1}") if number > 1 else None
        return {"data": stage_dir(run_root, "latents"), "init": init}
    return arguments


def _dit_eval(run_root: str) -> dict[str, Any]:
    return {"dit": stage_dir(run_root, f"dit-stage{DIT_STAGES}"), "data": stage_dir(run_root, "latents")}


_VAE_TRAIN = {"cli": ("components.vae", "train"), "config": "components.vae.config:load_vae_config"}
_DIT_TRAIN = {"cli": ("components.dit", "train"), "config": "components.dit.config:load_dit_config"}
DIT_STAGES = 5  # the curriculum of reference notes §3.5: images, then ever larger and longer video

STAGES: tuple[Stage, ...] = (
    Stage("synth", "data", "components.data.synth:synthesize", _synth, options=("num", "seed", "kind"),
          outputs=("annotations.json",)),
    Stage("filter", "data", "components.data.filter:run_filter", _filter, options=("annotations",),
          outputs=("kept.json", "report.md")),
    Stage("shard", "data", "components.data.shard:shard", _shard, outputs=("index.json",)),
    Stage("vae-phase1", "vae", "components.vae.train:train_vae", _vae_phase1, extra={"phase": 1},
          outputs=("model/model.safetensors",), **_VAE_TRAIN),
    Stage("vae-phase2", "vae", "components.vae.train:train_vae", _vae_phase2, extra={"phase": 2},
          outputs=("model/model.safetensors",), **_VAE_TRAIN),
    Stage("vae-eval", "vae", "components.vae.evaluate:evaluate_vae", _vae_eval, outputs=("metrics.json",)),
    Stage("latents", "dit", "components.dit.encode:encode_latents", _latents, outputs=("index.json",)),
    *(Stage(f"dit-stage{n}", "dit", "components.dit.train:train_dit", _dit_stage(n), extra={"stage": n},
            outputs=("model_ema/diffusion_pytorch_model.safetensors",), **_DIT_TRAIN)
      for n in range(1, DIT_STAGES + 1)),
    Stage("dit-eval", "eval", "components.eval.dit:evaluate_dit", _dit_eval, outputs=("metrics.json", "summary.md")),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def chain(annotations: str | None = None, until: str | None = None) -> list[Stage]:
    """The stages a pipeline run executes, in order: synth unless annotations are ingested, up to `until`."""
    if until is not None and until not in BY_NAME:
        raise ValueError(f"unknown stage '{until}' (--until): use one of {', '.join(BY_NAME)}")
    stages = []
    for stage in STAGES:
        if not (stage.name == "synth" and annotations):
            stages.append(stage)
        if stage.name == until:
            break
    return stages


def split_overrides(overrides: Sequence[str]) -> dict[str, list[str]]:
    """Route pipeline overrides `data.synth.x=1`, `vae.train.steps=3` to their component (`synth.x=1`)."""
    routed: dict[str, list[str]] = {name: [] for name in COMPONENTS}
    for text in overrides:
        component, dot, rest = text.partition(".")
        if not dot or component not in routed or "=" not in rest:
            raise ValueError(f"override '{text}' (--set) must look like <component>.<key>=<value> "
                             f"with component one of {', '.join(COMPONENTS)}")
        routed[component].append(rest)
    return routed


def default_run_root(preset: str) -> str:
    """A run folder under the working folder (`$T2V_HOME`, default `./.t2v`), one per preset: named as
    the preset (`runs/v1.2`), or after the file for a YAML path (`runs/mine` for `mine.yaml`)."""
    from components.core.tracking import t2v_home

    name = Path(str(preset))
    return str(t2v_home() / "runs" / (name.stem if name.suffix in (".yaml", ".yml") else name.name))


def absolute_root(run_root: str) -> str:
    """S3 URIs as they are; local paths made absolute, so every process agrees on them."""
    if storage.is_s3(run_root):
        return run_root.rstrip("/")
    local = storage.local_dir(run_root)
    assert local is not None
    return str(local.resolve())

"""Everything about a pipeline run that can be checked without work, checked before its first stage.

Each component checks its own preset, `--set` overrides and offline files (`components/<name>/preflight.py`,
see components/core/preflight.py); a component without a configuration yet takes no overrides. Then
what no single component can see: that the stages fit together (the VAE trains on a bucket the shard
stage makes). Every problem is one line naming the key or file; no prefect here.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Sequence

from components.core import storage
from flows.stages import COMPONENTS, Stage, split_overrides


class PreflightFailed(ValueError):
    """The run cannot start; the message lists every problem, one a line."""


def problems(stages: Sequence[Stage], preset: str, overrides: Sequence[str],
             annotations: str | None = None) -> list[str]:
    try:
        routed = split_overrides(overrides)
    except ValueError as exc:
        return [str(exc)]
    functions: dict[str, set[str]] = {name: set() for name in COMPONENTS}
    for stage in stages:
        functions[stage.component].add(stage.function.partition(":")[2])
    found: list[str] = []
    for component in COMPONENTS:
        module = f"components.{component}.preflight"
        if importlib.util.find_spec(module) is None:
            found += [f"--set {component}.{text}: the {component} component has no configuration yet"
                      for text in routed[component]]
            continue
        found += importlib.import_module(module).check(preset, routed[component], functions[component])
    found = _one_unknown_preset_line(found)
    if annotations and not storage.exists(annotations):
        found.append(f"--annotations {annotations}: no such file")
    if not found:
        found += _stages_fit_together({stage.name for stage in stages}, preset, routed)
    return found


def _one_unknown_preset_line(found: list[str]) -> list[str]:
    """A preset no component has is one mistake: one line for it, not one per component."""
    unknown = [re.match(r"unknown preset '(.+)' in .*/(\w+)/presets; available: (.*)$", line) for line in found]
    matched = [match for match in unknown if match]
    if len(matched) < 2 or len({(m.group(1), m.group(3)) for m in matched}) != 1:
        return found
    preset, available = matched[0].group(1), matched[0].group(3)
    components = ", ".join(m.group(2) for m in matched)
    rest = [line for line, match in zip(found, unknown, strict=True) if not match]
    return [f"unknown preset '{preset}' (--preset): {components} have {available}", *rest]


def check(stages: Sequence[Stage], preset: str, overrides: Sequence[str], annotations: str | None = None) -> None:
    """Raise PreflightFailed listing every problem, or return: the run may start."""
    found = problems(stages, preset, overrides, annotations)
    if found:
        raise PreflightFailed("\n".join(found))


def _stages_fit_together(names: set[str], preset: str, routed: dict[str, list[str]]) -> list[str]:
    if not {"shard", "vae-phase1"} <= names:
        return []
    from components.data.buckets import make_buckets
    from components.data.config import load_data_config
    from components.vae.config import load_vae_config

    shard = load_data_config(preset, routed["data"]).shard
    config = load_vae_config(preset, routed["vae"])
    buckets = make_buckets(shard.frames, shard.resolutions)
    problems = []
    for phase in (1, 2):  # a phase may train on its own bucket (vae.train.phaseN.bucket)
        key = f"vae.train.phase{phase}.bucket" if getattr(config.train, f"phase{phase}").bucket else "vae.data.bucket"
        problem = _bucket_problem(key, config.for_phase(phase).data, buckets, preset)
        if problem and problem not in problems:
            problems.append(problem)
    return problems


def _bucket_problem(key: str, data, buckets, preset: str) -> str | None:
    made = [b.name for b in buckets]
    if data.bucket in made:
        return None
    frames, height, width = data.size
    if data.crop_larger:  # crops of any bucket at least that large
        if any(b.frames >= frames and b.height >= height and b.width >= width for b in buckets):
            return None
        return (f"{key} {data.bucket} (crop_larger) fits in no bucket the shard stage makes "
                f"({', '.join(made)}; preset '{preset}'): set {key} to a size that one of them holds")
    return (f"{key} {data.bucket} is not a bucket the shard stage makes ({', '.join(made)}; preset "
            f"'{preset}'): set {key} to one of them, or data.shard.frames/resolutions to make it")

"""Typed configuration loaded from YAML presets, with dotted command-line overrides.

Every component keeps its presets beside its code (`components/<name>/presets/<preset>.yaml`) and
declares one pydantic root model. Errors name the offending key and the file (or `--set`) it came from,
and are raised before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A preset or override that does not fit the component's configuration model."""


class StrictModel(BaseModel):
    """Base for every configuration group: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


def preset_path(presets_dir: Path, name_or_path: str | Path) -> Path:
    """Resolve a preset name (`tiny`, `v1.2`) in `presets_dir`, or accept a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"preset file {candidate} does not exist")
        return candidate
    path = presets_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in presets_dir.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{name_or_path}' in {presets_dir}; available: {', '.join(available)}")
    return path


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (['train', 'lr'], 0.0001). The value is parsed as YAML (numbers, lists, bools)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key.path=value (from --set)")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted override set. Unknown keys are left for validation to reject."""
    merged = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = _item(node, key, text, keys[:depth]) if isinstance(node, list) else node.setdefault(key, {})
            if not isinstance(child, dict | list):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"override '{text}' (from --set): '{where}' is a value, not a group")
            node = child
        if isinstance(node, list):
            _item(node, keys[-1], text, keys[:-1])
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    return merged


def _item(items: list[Any], key: str, text: str, where: list[str]) -> Any:
    """A list entry named by its index in a dotted key, e.g. `train.stages.0.steps`."""
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"override '{text}' (from --set): '{'.'.join(where)}' is a list of {len(items)}; "
                          f"'{key}' is not an index in it")
    return items[int(key)]


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "<root>"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if not error["loc"]:  # a check across groups: its message names the keys; the input is the whole config
        return error["msg"].removeprefix("Value error, ")
    return f"key '{key}': {error['msg']} (got {error.get('input')!r})"


def validate_config(model_cls: type[M], raw: dict[str, Any], source: str) -> M:
    """Validate plain data against `model_cls`; every error line names its key and `source`."""
    try:
        return model_cls.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_describe(err)}" for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_config(
    model_cls: type[M], presets_dir: Path, preset: str | Path, overrides: Sequence[str] = ()
) -> M:
    """Load preset YAML, apply `--set` overrides, validate. Raises ConfigError naming key and file."""
    path = preset_path(presets_dir, preset)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of groups")
    source = str(path) if not overrides else f"{path} (with --set {' '.join(overrides)})"
    return validate_config(model_cls, apply_overrides(raw, overrides), source)


def config_hash(config: BaseModel) -> str:
    """Stable sha256 of a configuration's values: equal configs hash equal across runs and machines."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()

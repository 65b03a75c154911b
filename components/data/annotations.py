"""Video annotations in Open-Sora Plan v1.2's schema (reference notes §5.1), read and validated.

An annotations file is a JSON list of objects, one per video:
`{path, cap, resolution: {height, width}, fps, duration}` plus optional `num_frames` and any extra
fields (scores). `cap` is a string or a list of strings. `path` is relative to the annotations file's
folder, or (in the filter's `kept.json`) an absolute path or URI: `video_uri` resolves both.

Used by the synth stage (writer), the filter (reader of raw input, lenient per entry) and the shard
stage (reader of `kept.json`, strict).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from components.core import storage

VIDEO_FIELDS = ("path", "cap", "resolution", "fps", "duration")


class AnnotationError(ValueError):
    """One entry of an annotations file is malformed; names the file, the entry index and the field."""

    def __init__(self, source: str, index: int | None, field: str | None, problem: str):
        self.source, self.index, self.field, self.problem = source, index, field, problem
        where = source if index is None else f"{source}: entry {index}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


def read_entries(uri: str | Path) -> list[dict[str, Any]]:
    """The raw list of entries; only checks that the file is a JSON list of objects."""
    data = storage.read_json(uri)
    if not isinstance(data, list):
        raise AnnotationError(str(uri), None, None, f"expected a JSON list of entries, got {type(data).__name__}")
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise AnnotationError(str(uri), index, None, f"expected an object, got {type(entry).__name__}")
    return data


def caption_text(entry: dict[str, Any]) -> str:
    """The caption as one string (the first of a list); '' when there is none usable."""
    cap = entry.get("cap")
    if isinstance(cap, list):
        cap = next((c for c in cap if isinstance(c, str) and c.strip()), "")
    return cap.strip() if isinstance(cap, str) else ""


def check_path(entry: dict[str, Any], index: int, source: str) -> str:
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        raise AnnotationError(source, index, "path", f"must be a non-empty string, got {path!r}")
    return path


def check_caption(entry: dict[str, Any], index: int, source: str) -> str:
    if "cap" not in entry:
        raise AnnotationError(source, index, "cap", "missing caption")
    cap = entry["cap"]
    items = cap if isinstance(cap, list) else [cap]
    if not items or not all(isinstance(c, str) for c in items):
        raise AnnotationError(source, index, "cap", f"must be a string or a list of strings, got {cap!r}")
    if not caption_text(entry):
        raise AnnotationError(source, index, "cap", "caption is empty")
    return caption_text(entry)


def _positive_number(entry: dict[str, Any], key: str, index: int, source: str, integer: bool = False) -> None:
    value = entry.get(key)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise AnnotationError(source, index, key, f"must be {what}, got {value!r}")


def validate_entry(entry: dict[str, Any], index: int, source: str = "<annotations>") -> None:
    """Raise AnnotationError for the first problem of one video entry (strict schema)."""
    check_path(entry, index, source)
    check_caption(entry, index, source)
    resolution = entry.get("resolution")
    if not isinstance(resolution, dict):
        raise AnnotationError(source, index, "resolution", f"must be {{height, width}}, got {resolution!r}")
    for key in ("height", "width"):
        value = resolution.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise AnnotationError(source, index, f"resolution.{key}", f"must be a positive integer, got {value!r}")
    _positive_number(entry, "fps", index, source)
    _positive_number(entry, "duration", index, source)
    if "num_frames" in entry:
        _positive_number(entry, "num_frames", index, source, integer=True)


def load_annotations(uri: str | Path) -> list[dict[str, Any]]:
    """Read and validate an annotations file; raises AnnotationError (a ValueError) naming file, entry, field."""
    entries = read_entries(uri)
    for index, entry in enumerate(entries):
        validate_entry(entry, index, str(uri))
    return entries


def annotations_root(uri: str | Path) -> str:
    """The folder that relative `path`s are relative to: the annotations file's folder."""
    text = str(uri).rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://"):]
    head = text.rsplit("/", 1)[0] if "/" in text else "."
    if storage.is_s3(text):
        return head
    return str(Path(head).resolve())


def is_absolute(path: str) -> bool:
    return path.startswith(("/", "s3://", "file://"))


def video_uri(annotations_uri: str | Path, path: str) -> str:
    """Where an entry's video lives: `path` itself when absolute (or a URI), else beside the annotations."""
    if is_absolute(path):
        return path
    return storage.join(annotations_root(annotations_uri), path)


def contained_path(root: str, path: str) -> str | None:
    """`path` (relative to `root`, or absolute) as a normalised URI inside `root`; None when it escapes
    (`..` segments or an absolute path elsewhere)."""
    scheme = "s3://" if storage.is_s3(root) else ""
    base = root[len(scheme):].rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    if is_absolute(path):
        if storage.is_s3(path) != bool(scheme):
            return None
        target = posixpath.normpath(path[len(scheme):])
    else:
        target = posixpath.normpath(posixpath.join(base, path))
    return scheme + target if target.startswith(base + "/") else None


def resolve_inside(root: str, path: str, allow_external_symlinks: bool = False) -> tuple[str | None, str]:
    """`(uri, "")` for a `path` that stays inside `root`, else `(None, why)`. The lexical check of
    `contained_path` first; then, for local files, the real path (symlinks resolved) must stay inside the
    real root too, unless `allow_external_symlinks` (a dataset assembled from links into a shared store)."""
    uri = contained_path(root, path)
    if uri is None:
        return None, f"path {path!r} leaves the data folder {root}"
    if storage.is_s3(uri) or allow_external_symlinks:
        return uri, ""
    real_root, real = os.path.realpath(root), os.path.realpath(uri)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        return None, (f"path {path!r} is or passes through a symlink leading out of the data folder {root} "
                      f"(to {real}); set allow_external_symlinks to follow such links")
    return uri, ""

"""`components.data.annotations`: schema errors name the file, the entry index and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data.annotations import AnnotationError, contained_path, load_annotations, video_uri

GOOD = {"path": "videos/a.mp4", "cap": "a red circle", "resolution": {"height": 64, "width": 96},
        "fps": 24, "duration": 1.5}


def write(tmp_path: Path, entries) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(entries))
    return path


def test_valid_entries_load(tmp_path: Path) -> None:
    entries = [GOOD, {**GOOD, "cap": ["first", "second"], "num_frames": 36}]
    assert load_annotations(write(tmp_path, entries)) == entries


@pytest.mark.parametrize(("change", "field"), [
    ({"cap": ""}, "cap"), ({"cap": 3}, "cap"), ({"cap": []}, "cap"), ({"path": ""}, "path"),
    ({"fps": 0}, "fps"), ({"duration": "long"}, "duration"), ({"resolution": {"height": 64}}, "resolution.width"),
    ({"num_frames": 2.5}, "num_frames"),
])
def test_errors_name_file_entry_and_field(tmp_path: Path, change: dict, field: str) -> None:
    path = write(tmp_path, [GOOD, {**GOOD, **change}])
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    assert info.value.index == 1 and info.value.field == field
    assert str(path) in str(info.value) and "entry 1" in str(info.value) and f"'{field}'" in str(info.value)


def test_missing_field_and_non_list(tmp_path: Path) -> None:
    entry = dict(GOOD)
    del entry["fps"]
    with pytest.raises(AnnotationError, match="entry 0, field 'fps'"):
        load_annotations(write(tmp_path, [entry]))
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        load_annotations(write(tmp_path, {"path": "x"}))


def test_paths_resolve_and_escapes_are_caught(tmp_path: Path) -> None:
    ann = tmp_path / "data" / "annotations.json"
    assert video_uri(ann, "videos/a.mp4") == f"{tmp_path}/data/videos/a.mp4"
    assert video_uri(ann, "/abs/b.mp4") == "/abs/b.mp4"
    assert video_uri("s3://bucket/set/annotations.json", "v/c.mp4") == "s3://bucket/set/v/c.mp4"
    root = f"{tmp_path}/data"
    assert contained_path(root, "videos/../videos/a.mp4") == f"{root}/videos/a.mp4"
    assert contained_path(root, "../secret.mp4") is None
    assert contained_path(root, "/etc/passwd") is None
    assert contained_path(root, f"{root}/videos/a.mp4") == f"{root}/videos/a.mp4"
    assert contained_path("s3://b/set", "../other/x.mp4") is None
    assert contained_path("s3://b/set", "v/x.mp4") == "s3://b/set/v/x.mp4"

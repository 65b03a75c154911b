"""A stand-in component for flow tests: writes one file and a manifest, skips when already done."""

from __future__ import annotations

from components.core import manifest, storage, tracking

CALLS: list[dict] = []


def make(out: str, value: int, preset: str = "tiny", overrides=(), parent_run_id: str | None = None) -> dict:
    CALLS.append({"out": out, "value": value, "overrides": list(overrides), "parent_run_id": parent_run_id})
    if value < 0:
        raise ValueError(f"value must be >= 0, got {value}")
    inputs = {"request": {"value": str(value)}}
    chash = storage.sha256_bytes(f"{preset}{list(overrides)}".encode())
    done = manifest.is_complete(out, chash, inputs)
    if done:
        return done["summary"]
    with tracking.stage_run("fake", parent_run_id=parent_run_id) as run:
        run.log_metrics({"value": value})
        uri = storage.join(out, "value.txt")
        files = {"value.txt": manifest.file_entry(uri, storage.write_text(uri, str(value)), len(str(value)))}
        summary = {"value": uri}
        manifest.write_manifest(out, manifest.build_manifest(
            stage="fake", preset=preset, config={}, config_hash=chash, inputs=inputs, files=files,
            mlflow_run_id=run.run_id, summary=summary))
    return summary

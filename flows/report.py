"""The pipeline run's markdown report: one table row per stage (no prefect here, so it is testable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.core import storage, tracking

# Metrics worth a glance in the table; the full set is in each stage's MLflow run.
KEY_METRICS = ("num_clips", "num_good", "num_entries", "num_kept", "samples", "shards", "psnr_mean",
               "final/steps", "train/rec", "train/lpips", "train/kl", "eval/psnr", "eval/ssim", "eval/lpips",
               "eval/adherence/background", "eval/adherence/colour", "eval/adherence/direction", "eval/val_loss/mean",
               "eval/clip_score")


def _metrics(metrics: dict[str, float], notes: dict[str, str]) -> str:
    def shown(key: str) -> str:
        return f"{key}={metrics[key]:g}" + (f" (**{notes[key]}**)" if key in notes else "")

    keys = [key for key in KEY_METRICS if key in metrics]
    if not keys:  # no familiar names: the first few, so the column is never empty when there are metrics
        keys = sorted(metrics)[:4]
    return ", ".join(shown(key) for key in keys) or "–"


def uri_link(uri: str, text: str | None = None) -> str:
    """A link a reader can open: local paths as file:// URLs; s3:// URIs as they are (open them with an S3
    client or the bucket's console)."""
    text = text or uri
    if storage.is_s3(uri):
        return f"`{uri}`"
    return f"[{text}]({Path(uri).resolve().as_uri()})"


def _run_link(result: dict[str, Any]) -> str:
    run_id = result.get("mlflow_run_id")
    if not run_id:
        return "–"
    # A URL when tracking goes to a server (built from MLFLOW_TRACKING_URI); the full id otherwise.
    return f"[open in MLflow]({result['mlflow_url']})" if result.get("mlflow_url") else f"`{run_id}`"


def markdown(run_root: str, results: list[dict[str, Any]], parent: dict[str, Any], error: str | None = None) -> str:
    """`results`: the stage results (runner.describe), and for a failed stage {stage, status, seconds, error}."""
    parent_run = (f"[{parent['url']}]({parent['url']})" if parent.get("url")
                  else f"`{parent['run_id']}` (see it with `mlflow ui --backend-store-uri {tracking.tracking_uri()}`)")
    lines = [
        f"# t2v-full: {'failed' if error else 'completed'}",
        "",
        f"- run root: {uri_link(run_root)}",
        f"- MLflow parent run: {parent_run}",
        *[f"- registered model: `{r['registered_model']['name']}` version {r['registered_model']['version']} "
          f"(stage {r['stage']})" for r in results if r.get("registered_model")],
        "",
        "| stage | status | duration (s) | key metrics | artifacts | MLflow run |",
        "|---|---|---:|---|---|---|",
    ]
    for result in results:
        out = result.get("out")
        uris = [uri for uri in [result.get("manifest"), *result.get("outputs", {}).values()] if uri]
        outputs = "<br>".join(uri_link(uri, storage.relative_to(uri, out) if out else None) for uri in uris)
        lines.append(f"| {result['stage']} | **{result['status']}** | {result.get('seconds', 0):.1f} | "
                     f"{_metrics(result.get('metrics', {}), result.get('notes', {}))} | {outputs or '–'} | "
                     f"{_run_link(result)} |")
    if error:
        lines += ["", "## Error", "", "```", error, "```"]
    return "\n".join(lines) + "\n"

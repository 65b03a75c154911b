"""The pipeline run's markdown report: one table row per stage (no prefect here, so it is testable)."""

from __future__ import annotations

from typing import Any

# Metrics worth a glance in the table; the full set is in each stage's MLflow run.
KEY_METRICS = ("num_clips", "num_good", "num_entries", "num_kept", "samples", "shards", "psnr_mean",
               "final/steps", "train/rec", "train/lpips", "train/kl", "eval/psnr", "eval/ssim", "eval/lpips")


def _metrics(metrics: dict[str, float]) -> str:
    shown = [f"{key}={metrics[key]:g}" for key in KEY_METRICS if key in metrics]
    if not shown:  # no familiar names: the first few, so the column is never empty when there are metrics
        shown = [f"{key}={value:g}" for key, value in sorted(metrics.items())[:4]]
    return ", ".join(shown) or "–"


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


def markdown(run_root: str, results: list[dict[str, Any]], parent: dict[str, Any], error: str | None = None) -> str:
    """`results`: the stage results (runner.describe), and for a failed stage {stage, status, seconds, error}."""
    lines = [
        f"# t2v-full: {'failed' if error else 'completed'}",
        "",
        f"- run root: `{run_root}`",
        f"- MLflow parent run: {_link('`' + parent['run_id'] + '`', parent.get('url'))}",
        *[f"- registered model: `{r['registered_model']['name']}` version {r['registered_model']['version']} "
          f"(stage {r['stage']})" for r in results if r.get("registered_model")],
        "",
        "| stage | status | duration (s) | key metrics | artifacts | MLflow run |",
        "|---|---|---:|---|---|---|",
    ]
    for result in results:
        outputs = "<br>".join(f"`{uri}`" for uri in [result.get("manifest"), *result.get("outputs", {}).values()]
                              if uri)
        run_id = result.get("mlflow_run_id")
        run = _link(f"`{run_id[:8]}`", result.get("mlflow_url")) if run_id else "–"
        lines.append(f"| {result['stage']} | **{result['status']}** | {result.get('seconds', 0):.1f} | "
                     f"{_metrics(result.get('metrics', {}))} | {outputs or '–'} | {run} |")
    if error:
        lines += ["", "## Error", "", "```", error, "```"]
    return "\n".join(lines) + "\n"

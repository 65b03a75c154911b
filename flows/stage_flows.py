"""One thin flow per stage: call the stage's component function on the run root, return its URIs.

Every stage flow takes the same common parameters (run root, preset, `--set` overrides, MLflow parent
run) plus its own options, so the pipeline can call it in-process or as a deployment on a work pool
with the same parameters. Where a flow runs is set in `prefect.yaml`, not here.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from components.core import storage
from components.core.storage import StorageError
from flows import runner
from flows.logs import forward_component_logs
from flows.stages import BY_NAME


def _transient(task_, task_run, state) -> bool:
    """Retry only what may go away: storage and connection errors, not configuration or data errors."""
    try:
        state.result()
    except (StorageError, ConnectionError, TimeoutError):
        return True
    except Exception:
        return False
    return False


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_condition_fn=_transient,
      cache_policy=NO_CACHE, task_run_name="{name}")
def run_stage(name: str, run_root: str, preset: str, overrides: list[str] | None, parent_run_id: str | None,
              **options: Any) -> dict[str, Any]:
    forward_component_logs()  # progress and other component logs into this flow run's logs
    return runner.run_stage(BY_NAME[name], run_root, preset, overrides or [], parent_run_id,
                            logger=get_run_logger(), **options)


@flow(name="t2v-synth")
def synth(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
          parent_run_id: str | None = None, num: int = 24, seed: int = 0, kind: str = "shapes") -> dict[str, Any]:
    """Synthetic captioned clips into `run_root/synth`."""
    return run_stage("synth", run_root, preset, overrides, parent_run_id, num=num, seed=seed, kind=kind)


@flow(name="t2v-filter")
def filter_clips(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
                 parent_run_id: str | None = None, annotations: str | None = None) -> dict[str, Any]:
    """Filter `annotations` (default: the synth stage's) into `run_root/filter` (kept.json, report)."""
    return run_stage("filter", run_root, preset, overrides, parent_run_id, annotations=annotations)


@flow(name="t2v-shard")
def shard(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
          parent_run_id: str | None = None) -> dict[str, Any]:
    """Bucket the kept clips and write WebDataset shards into `run_root/shard`."""
    return run_stage("shard", run_root, preset, overrides, parent_run_id)


@flow(name="t2v-vae-phase1")
def vae_phase1(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
               parent_run_id: str | None = None) -> dict[str, Any]:
    """VAE training phase 1 on the shards into `run_root/vae-phase1` (resumes from its checkpoints)."""
    return run_stage("vae-phase1", run_root, preset, overrides, parent_run_id)


@flow(name="t2v-vae-phase2")
def vae_phase2(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
               parent_run_id: str | None = None) -> dict[str, Any]:
    """VAE training phase 2 from phase 1's EMA weights into `run_root/vae-phase2`; registers `t2v-vae`."""
    return run_stage("vae-phase2", run_root, preset, overrides, parent_run_id)


@flow(name="t2v-vae-eval")
def vae_eval(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
             parent_run_id: str | None = None) -> dict[str, Any]:
    """Reconstruction metrics of the phase-2 VAE on the shards into `run_root/vae-eval`."""
    return run_stage("vae-eval", run_root, preset, overrides, parent_run_id)


@flow(name="t2v-latents")
def latents(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
            parent_run_id: str | None = None) -> dict[str, Any]:
    """The shards' clips through the phase-2 VAE and their captions through the text encoder, once, into
    `run_root/latents` (latent shards, text store, held-out `val/`)."""
    return run_stage("latents", run_root, preset, overrides, parent_run_id)


def _dit_stage_flow(number: int):
    """The flow of DiT stage `number` (they differ only in the stage they run)."""
    @flow(name=f"t2v-dit-stage{number}")
    def dit_stage(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
                  parent_run_id: str | None = None) -> dict[str, Any]:
        return run_stage(f"dit-stage{number}", run_root, preset, overrides, parent_run_id)

    dit_stage.__doc__ = (f"DiT curriculum stage {number} on the latents into `run_root/dit-stage{number}`"
                         + (f", from stage {number - 1}'s EMA weights" if number > 1 else "")
                         + "; resumes from its checkpoints; registers `t2v-dit@stage{number}`.")
    return dit_stage


dit_stage1, dit_stage2, dit_stage3, dit_stage4, dit_stage5 = (_dit_stage_flow(n) for n in range(1, 6))


@flow(name="t2v-dit-eval")
def dit_eval(run_root: str, preset: str = "tiny", overrides: list[str] | None = None,
             parent_run_id: str | None = None) -> dict[str, Any]:
    """Samples of the last DiT stage scored against their prompts, and validation loss, into `run_root/dit-eval`."""
    result = run_stage("dit-eval", run_root, preset, overrides, parent_run_id)
    report_uri = result["outputs"]["summary.md"]
    create_markdown_artifact(markdown=storage.read_text(report_uri), key="t2v-dit-eval",
                             description="DiT evaluation: prompt adherence and validation loss")
    return result


# The flow of each stage, by stage name (the pipeline calls these in-process).
STAGE_FLOWS = {"synth": synth, "filter": filter_clips, "shard": shard, "vae-phase1": vae_phase1,
               "vae-phase2": vae_phase2, "vae-eval": vae_eval, "latents": latents,
               "dit-stage1": dit_stage1, "dit-stage2": dit_stage2, "dit-stage3": dit_stage3,
               "dit-stage4": dit_stage4, "dit-stage5": dit_stage5, "dit-eval": dit_eval}

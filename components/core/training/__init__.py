"""The training kit every trainer builds on (setup -> build -> fit stays in the component):

- `ema`: exponential moving average of weights, kept apart from the live model.
- `checkpoint`: sharded trainer checkpoints (DCP) with per-rank RNG and loader state; resumable on
  another world size; the last K kept; a damaged latest one falls back to the previous intact one.
- `guard`: the non-finite loss guard (skip the step; roll back and skip the batches after a streak).
- `events`: the run's unusual events as `events.jsonl` in the output folder.
- `run`: the stage's MLflow run, continued on resume, written by rank 0 only.
- `precision`: autocast and peak-memory helpers.
- `publish`: a finished output folder (files first, manifest last).
- `rng`: process RNG states that survive a weights-only load.
"""

"""Pipeline parameters that run the whole tiny chain in seconds per stage, for tests that check the chain
and its plumbing rather than what it learns: 12 clips and a few steps per training stage (a checkpoint
every 2 steps, so a kill after step 2 has one to resume from). The deployments' own parameters (the
demo's, prefect.yaml `demo_overrides`) train for minutes."""

from flows.stages import DIT_STAGES

VAE_OVERRIDES = ["vae.train.phase1.steps=4", "vae.train.phase2.steps=2", "vae.train.disc_start=2",
                 "vae.train.checkpoint_every=2", "vae.train.sample_every=1000", "vae.eval.max_clips=2"]
DIT_OVERRIDES = ["dit.train.checkpoint_every=2", *(f"dit.train.stages.{i}.steps=4" for i in range(DIT_STAGES))]
EVAL_OVERRIDES = ["dit.encode.val_fraction=0.3", "eval.prompts.count=4", "eval.sampling.steps=2",
                  "eval.sampling.frames=9", "eval.report.grid_prompts=2"]
PARAMETERS = {"num": 12, "seed": 3, "overrides": VAE_OVERRIDES + DIT_OVERRIDES + EVAL_OVERRIDES}

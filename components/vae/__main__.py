"""`python -m components.vae …` runs the same CLI as `t2v vae …` (also as each rank under torchrun)."""

from torch.distributed.elastic.multiprocessing.errors import record

from components.vae.cli import main

# `record`: under torchrun, a rank's uncaught exception is written where torchrun reports it as the job's
# root cause (which rank failed, and its traceback); a plain run is unaffected.
raise SystemExit(record(main)())

"""A torchrun rank that joins the job, writes its pid to `DIR/rank-R.pid` and sleeps (for the launcher test)."""

import os
import sys
import time

from components.core import distributed

if __name__ == "__main__":
    ctx = distributed.setup("cpu", timeout_s=300)
    with open(os.path.join(sys.argv[1], f"rank-{ctx.rank}.pid"), "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(300)

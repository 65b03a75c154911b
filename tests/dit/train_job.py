"""`python -m tests.dit.train_job STAGE DATA OUT [KEY=VALUE ...]`: one DiT training stage, as one process or
as each rank under torchrun (the tests start it from the outside, to kill it); one thread per process."""

import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record


@record
def main() -> None:
    torch.set_num_threads(1)
    from components.dit.train import train_dit

    train_dit(int(sys.argv[1]), sys.argv[2], sys.argv[3], overrides=sys.argv[4:])


if __name__ == "__main__":
    main()

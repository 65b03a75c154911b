"""`python -m tests.dit.standin_train STAGE DATA OUT [KEY=VALUE ...]`: a DiT stage with the stand-in latent
loader, as one process or as each rank under torchrun (the tests start it from the outside, to kill it)."""

import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from tests.dit.latent_standin import patch_loader


@record
def main() -> None:
    torch.set_num_threads(1)
    patch_loader()
    from components.dit.train import train_dit

    train_dit(int(sys.argv[1]), sys.argv[2], sys.argv[3], overrides=sys.argv[4:])


if __name__ == "__main__":
    main()

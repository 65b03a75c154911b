"""`python -m tests.vae.standin_train DATA OUT [KEY=VALUE ...]`: VAE phase 1 with the stand-in loader, as
one process or as each rank under torchrun (the tests start it from the outside, to kill it)."""

import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from tests.vae.standin import patch_loader


@record
def main() -> None:
    torch.set_num_threads(1)
    patch_loader()
    from components.vae.train import train_vae

    train_vae(1, sys.argv[1], sys.argv[2], overrides=sys.argv[3:])


if __name__ == "__main__":
    main()

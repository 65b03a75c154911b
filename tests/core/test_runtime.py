import torch

from components.core import runtime


def test_cpu_device_and_fp32_autocast_here():
    device = runtime.select_device("auto")
    assert device.type == "cpu"  # these machines have no accelerator
    assert runtime.autocast_dtype(device) is None
    assert runtime.autocast_dtype(torch.device("cuda", 0)) is torch.bfloat16
    assert runtime.autocast_dtype(device, "bf16") is torch.bfloat16


def test_seeding_differs_per_rank_and_repeats():
    runtime.seed_everything(3, rank=0)
    a = torch.rand(4)
    runtime.seed_everything(3, rank=1)
    b = torch.rand(4)
    runtime.seed_everything(3, rank=0)
    assert torch.equal(a, torch.rand(4)) and not torch.equal(a, b)

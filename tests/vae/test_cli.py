"""`python -m components.vae info` and `load_vae` from S3 (moto server on loopback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from components.core import storage
from components.vae import load_vae
from components.vae.config import load_vae_config
from components.vae.model import CausalVAE
from components.vae.official import config_to_official, save_vae

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "components.vae", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_info_v12_preset():
    result = _cli("info", "--preset", "v1.2")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["num_parameters"] == 239_189_991
    assert info["compression"] == {"t": 4, "h": 8, "w": 8}
    assert info["latent_channels"] == 4 and info["scale_factor"] == 0.18215


def test_info_model_folder_and_bad_preset(tmp_path, tiny_vae):
    save_vae(tmp_path / "vae", tiny_vae)
    result = _cli("info", "--vae", str(tmp_path / "vae"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_parameters"] == sum(p.numel() for p in tiny_vae.parameters())
    bad = _cli("info", "--preset", "tiny", "--set", "model.norm_groups=5")
    assert bad.returncode == 2 and "norm_groups" in bad.stderr and "tiny.yaml" in bad.stderr





def test_load_vae_from_s3_ours_and_official(tmp_path, s3_bucket):
    torch.manual_seed(0)
    # Official configs have no norm_groups field (always 32): use a width that 32 groups divide.
    model = CausalVAE(load_vae_config("tiny", ["model.hidden_size=32", "model.norm_groups=32"]).model).eval()
    save_vae(f"{s3_bucket}/ours", model)
    official = tmp_path / "official"
    official.mkdir()
    (official / "config.json").write_text(json.dumps(config_to_official(model.config)))
    torch.save({"state_dict": model.state_dict()}, official / "checkpoint.ckpt")
    for name in ("config.json", "checkpoint.ckpt"):
        storage.put_file(official / name, f"{s3_bucket}/official/{name}")
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = model.encode(video).mean
        for uri in (f"{s3_bucket}/ours", f"{s3_bucket}/official"):
            assert torch.equal(load_vae(uri).encode(video).mean, expected), uri


def test_train_and_eval_check_their_offline_weights_before_any_work(tmp_path):
    """v1.2 needs torchvision's LPIPS backbones; without them the command stops at once, naming key and file."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "T2V_HOME": str(tmp_path / "home")}
    for args, name in ((["train", "--phase", "1"], "vgg16-397923af.pth"), (["eval", "--vae", "x"], "alexnet-owt-7be5be79.pth")):
        proc = subprocess.run([sys.executable, "-m", "components.vae", *args, "--data", str(tmp_path / "none"),
                               "--out", str(tmp_path / "out"), "--preset", "v1.2"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / name}" in proc.stderr
        assert "lpips_random_backbone=true" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()

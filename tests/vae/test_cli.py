"""`python -m components.vae info` and `load_vae` from S3 (moto server on loopback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.fixture()
def s3_bucket(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    storage.reset_clients()
    storage._s3_client().create_bucket(Bucket="vae")
    yield "s3://vae"
    storage.reset_clients()
    server.stop()


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

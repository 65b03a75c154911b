"""Model folders and training state: round trips, atomic writes, and no arbitrary unpickling."""

from __future__ import annotations

import io
import pickle
import random

import numpy as np
import pytest
import torch

from components.core import checkpoints, storage


def test_model_folder_round_trip_with_checksums(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    sums = checkpoints.save_model_folder(tmp_path / "m", model.state_dict(), {"width": 4})
    config, weights = checkpoints.load_model_folder(tmp_path / "m", expected=sums)
    assert config == {"width": 4}
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(storage.ChecksumMismatch):
        checkpoints.load_model_folder(tmp_path / "m", expected=sums)


def test_training_state_round_trip_restores_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    state = {"step": 7, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": checkpoints.rng_state(), "loader": {"epoch": 1, "position": 12}}
    checkpoints.save_training_state(tmp_path / "state.pt", state)
    expected = (torch.rand(3), random.random(), np.random.rand())

    torch.manual_seed(123), random.seed(5), np.random.seed(9)  # disturb every generator
    loaded = checkpoints.load_training_state(tmp_path / "state.pt")
    checkpoints.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
    assert loaded["step"] == 7 and loaded["loader"] == {"epoch": 1, "position": 12}
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    buffer = io.BytesIO()
    torch.save({"evil": Payload()}, buffer)
    storage.write_bytes(tmp_path / "evil.pt", buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        checkpoints.load_training_state(tmp_path / "evil.pt")


def test_model_folder_upload_puts_the_config_last(tmp_path, s3_bucket, s3_env, monkeypatch):
    """A kill during the final upload once left `model_raw/config.json` without its weights."""
    from tests.flaky_proxy import FlakyProxy

    model = torch.nn.Linear(4, 3)
    checkpoints.save_model_folder(tmp_path / "m", model.state_dict(), {"width": 4})
    proxy = FlakyProxy(s3_env["AWS_ENDPOINT_URL"], failures=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    storage.reset_clients()
    try:
        files = checkpoints.put_model_folder(tmp_path / "m", f"{s3_bucket}/run/model")
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
        storage.reset_clients()
    puts = [line.rsplit("/", 1)[1] for line in proxy.log if line.startswith("PUT ")]
    assert puts == ["model.safetensors", "config.json"] and list(files) == puts
    config, weights = checkpoints.load_model_folder(f"{s3_bucket}/run/model",
                                                    expected={name: entry["sha256"] for name, entry in files.items()})
    assert config == {"width": 4} and torch.equal(weights["weight"], model.weight)


def test_overwriting_a_model_folder_removes_the_old_config_first(tmp_path):
    folder = tmp_path / "m"
    checkpoints.save_model_folder(folder, torch.nn.Linear(4, 3).state_dict(), {"width": 4})
    (folder / "model.safetensors").unlink()  # as if killed while writing the new weights
    checkpoints.save_model_folder(folder, {}, {"width": 5})
    assert checkpoints.load_model_folder(folder)[0] == {"width": 5}


def test_truncated_weights_name_the_file(tmp_path):
    folder = tmp_path / "m"
    checkpoints.save_model_folder(folder, torch.nn.Linear(4, 3).state_dict(), {"width": 4})
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"m/model\.safetensors: not a readable safetensors file"):
        checkpoints.load_model_folder(folder)

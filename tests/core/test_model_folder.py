"""Model folders: round trip with checksums, and strict loading that names the source."""

from __future__ import annotations

import pytest
import torch

from components.core import model_folder, storage


def test_model_folder_round_trip_with_checksums(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    sums = model_folder.save_model_folder(tmp_path / "m", model.state_dict(), {"width": 4})
    config, weights = model_folder.load_model_folder(tmp_path / "m", expected=sums)
    assert config == {"width": 4}
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(storage.ChecksumMismatch):
        model_folder.load_model_folder(tmp_path / "m", expected=sums)


def test_load_weights_names_the_source_when_they_do_not_fit():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="m/model.safetensors: weights do not fit.*missing \\['bias'\\]"):
        model_folder.load_weights(model, {"weight": torch.zeros(3, 4)}, "m/model.safetensors")
    with pytest.raises(ValueError, match="other shapes"):
        model_folder.load_weights(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(3)}, "m")


def test_model_folder_upload_puts_the_config_last(tmp_path, s3_bucket, s3_env, monkeypatch):
    """A kill during the final upload once left `model_raw/config.json` without its weights."""
    from tests.flaky_proxy import FlakyProxy

    model = torch.nn.Linear(4, 3)
    model_folder.save_model_folder(tmp_path / "m", model.state_dict(), {"width": 4})
    proxy = FlakyProxy(s3_env["AWS_ENDPOINT_URL"], failures=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    storage.reset_clients()
    try:
        files = model_folder.put_model_folder(tmp_path / "m", f"{s3_bucket}/run/model")
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
        storage.reset_clients()
    puts = [line.rsplit("/", 1)[1] for line in proxy.log if line.startswith("PUT ")]
    assert puts == ["model.safetensors", "config.json"] and list(files) == puts
    config, weights = model_folder.load_model_folder(f"{s3_bucket}/run/model",
                                                    expected={name: entry["sha256"] for name, entry in files.items()})
    assert config == {"width": 4} and torch.equal(weights["weight"], model.weight)


def test_overwriting_a_model_folder_removes_the_old_config_first(tmp_path):
    folder = tmp_path / "m"
    model_folder.save_model_folder(folder, torch.nn.Linear(4, 3).state_dict(), {"width": 4})
    (folder / "model.safetensors").unlink()  # as if killed while writing the new weights
    model_folder.save_model_folder(folder, {}, {"width": 5})
    assert model_folder.load_model_folder(folder)[0] == {"width": 5}


def test_truncated_weights_name_the_file(tmp_path):
    folder = tmp_path / "m"
    model_folder.save_model_folder(folder, torch.nn.Linear(4, 3).state_dict(), {"width": 4})
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"m/model\.safetensors: not a readable safetensors file"):
        model_folder.load_model_folder(folder)


def test_stage_uploads_put_each_model_config_after_its_weights(tmp_path):
    from components.core import stage

    for name in ("model", "model_raw"):
        model_folder.save_model_folder(tmp_path / "local" / name, torch.nn.Linear(2, 2).state_dict(), {"w": 2})
    (tmp_path / "local" / "metrics.json").write_text("{}")
    uploaded = list(stage.upload_folder(tmp_path / "local", str(tmp_path / "out")))  # in upload order
    for name in ("model", "model_raw"):
        assert uploaded.index(f"{name}/model.safetensors") < uploaded.index(f"{name}/config.json")

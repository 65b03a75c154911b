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

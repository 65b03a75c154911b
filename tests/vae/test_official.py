"""Loading official Open-Sora Plan v1.2 VAE folders and our own folders gives identical models."""

import json

import pytest
import torch
from safetensors.torch import save_file

from components.vae import load_vae
from components.vae.config import load_vae_config
from components.vae.official import config_to_official, load_official, save_vae, select_official_weights
from components.vae.model import CausalVAE


def _outputs(model, video):
    with torch.no_grad():
        latents = model.encode(video).mean
        return latents, model.decode(latents)


def _write_official_config(folder, config, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    raw = config_to_official(config) | {"_diffusers_version": "0.28.0", "resolution": 256, "loss_type": "l1",
                                        "loss_params": {"kl_weight": 1e-6}, "lr": 1e-5} | extra
    (folder / "config.json").write_text(json.dumps(raw))


@pytest.fixture()
def tiny_config():
    # Official configs carry no norm_groups field: the reference always uses 32 groups.
    return load_vae_config("tiny", ["model.hidden_size=32", "model.norm_groups=32"]).model


@pytest.fixture()
def tiny_vae(tiny_config):
    torch.manual_seed(0)
    return CausalVAE(tiny_config).eval()


@pytest.fixture()
def video():
    return torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_official_ckpt_prefers_ema_and_drops_module_and_loss(tmp_path, tiny_vae, tiny_config, video):
    raw_weights = {f"module.{k}": torch.randn_like(v) for k, v in tiny_vae.state_dict().items()}
    checkpoint = {
        "ema_state_dict": {f"module.{k}": v for k, v in tiny_vae.state_dict().items()},
        "state_dict": {"gen_model": raw_weights, "dics_model": {"discriminator.main.0.weight": torch.ones(2)}},
    }
    checkpoint["ema_state_dict"]["module.loss.logvar"] = torch.zeros(())
    checkpoint["ema_state_dict"]["module.loss.perceptual_loss.lin0.weight"] = torch.ones(1)
    _write_official_config(tmp_path / "vae", tiny_config)
    torch.save(checkpoint, tmp_path / "vae" / "checkpoint.ckpt")

    loaded = load_vae(tmp_path / "vae")
    for ours, theirs in zip(_outputs(tiny_vae, video), _outputs(loaded, video)):
        assert torch.equal(ours, theirs)
    raw_model = load_official(tmp_path / "vae", weights="model")
    expected = {k.removeprefix("module."): v for k, v in raw_weights.items()}
    assert all(torch.equal(raw_model.state_dict()[k], v) for k, v in expected.items())


def test_select_weights_falls_back_to_state_dict_when_ema_empty():
    state = {"module.a": torch.ones(1)}
    assert select_official_weights({"ema_state_dict": {}, "state_dict": state}).keys() == {"a"}
    assert select_official_weights({"state_dict": {"gen_model": state}}).keys() == {"a"}
    with pytest.raises(ValueError, match="'ema' or 'model'"):
        select_official_weights({"state_dict": state}, weights="1")  # explicit, never an env string (§9.11)


def test_official_safetensors_folder(tmp_path, tiny_vae, tiny_config, video):
    _write_official_config(tmp_path / "vae", tiny_config)
    save_file(tiny_vae.state_dict(), tmp_path / "vae" / "checkpoint.safetensors")
    loaded = load_vae(str(tmp_path / "vae"))
    for ours, theirs in zip(_outputs(tiny_vae, video), _outputs(loaded, video)):
        assert torch.equal(ours, theirs)


def test_our_folder_round_trip(tmp_path, tiny_vae, video):
    hashes = save_vae(tmp_path / "ours", tiny_vae)
    assert set(hashes) == {"config.json", "model.safetensors"}
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["format"] == "t2v-causal-vae" and saved["model"]["scale_factor"] == 0.18215
    loaded = load_vae(tmp_path / "ours")
    assert loaded.config == tiny_vae.config
    for ours, theirs in zip(_outputs(tiny_vae, video), _outputs(loaded, video)):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("field, value, message", [
    ("encoder_attention", "AttnBlock3D", "field 'encoder_attention'"),
    ("encoder_temporal_downsample", ["TimeDownsampleRes2x", "", "", ""], "field 'encoder_temporal_downsample'"),
    ("use_fancy_thing", True, "field 'use_fancy_thing'"),
    ("hidden_size_mult", [1, 2, 4], "encoder_resnet_blocks needs one entry per level"),
    ("encoder_spatial_downsample", ["Downsample", "Bogus", "", ""], "field 'encoder_spatial_downsample"),
])
def test_bad_official_config_names_field_and_file(tmp_path, tiny_vae, tiny_config, field, value, message):
    _write_official_config(tmp_path / "vae", tiny_config, **{field: value})
    torch.save({"state_dict": tiny_vae.state_dict()}, tmp_path / "vae" / "checkpoint.ckpt")
    with pytest.raises(ValueError) as error:
        load_vae(tmp_path / "vae")
    assert message in str(error.value) and str(tmp_path / "vae" / "config.json") in str(error.value)


def test_mismatched_weights_fail_loudly(tmp_path, tiny_vae, tiny_config):
    _write_official_config(tmp_path / "vae", tiny_config)
    state = tiny_vae.state_dict()
    state.pop("decoder.conv_out.conv.bias")
    state["discriminator.extra"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "vae" / "checkpoint.ckpt")
    with pytest.raises(ValueError, match="decoder.conv_out.conv.bias"):
        load_vae(tmp_path / "vae")


def test_v12_official_config_maps_to_v12_preset():
    from components.vae.official import official_to_config

    v12 = load_vae_config("v1.2").model
    raw = config_to_official(v12) | {"_class_name": "CausalVAEModel", "resolution": 256}
    assert official_to_config(raw) == v12

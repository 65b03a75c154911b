"""DiT folders: official Open-Sora Plan v1.2 folders load and reproduce the reference; ours round-trip;
bad folders fail naming the file and field (reference notes §8.2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from components.dit import load_dit, read_dit_config, save_dit
from components.dit.model import OpenSoraT2V
from components.dit.official import CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, official_to_config
from tests.dit.conftest import make_inputs

FIXTURES = Path(__file__).parent / "fixtures"
# A tiny official-format folder and outputs, both made by the reference code (bench/dit_reference.py fixture).
REFERENCE_FOLDER = FIXTURES / "reference"
REFERENCE_OUTPUTS = FIXTURES / "reference_outputs.safetensors"
CASES = ("video", "image", "video_latent_mask", "image_latent_mask", "video_480p")


@pytest.fixture()
def official_folder(tmp_path) -> Path:
    folder = tmp_path / "official"
    shutil.copytree(REFERENCE_FOLDER, folder)
    return folder


@pytest.mark.parametrize("case", CASES)
def test_official_folder_reproduces_the_reference(official_folder, case):
    if case == "video_480p":  # the same weights under 480p interpolation scales (1, 1, 1)
        raw = json.loads((official_folder / CONFIG_FILE).read_text())
        raw.update(interpolation_scale_h=1.0, interpolation_scale_w=1.0)
        (official_folder / CONFIG_FILE).write_text(json.dumps(raw))
    model = load_dit(official_folder)
    data = {key.split(".", 1)[1]: value for key, value in load_file(REFERENCE_OUTPUTS).items()
            if key.startswith(f"{case}.")}
    with torch.no_grad():
        output = model(data["latents"], data["timestep"], data["text"], data["text_mask"], data["latent_mask"])
    torch.testing.assert_close(output, data["output"], rtol=0, atol=1e-5)


def test_released_config_extras_are_accepted_and_null_scales_take_the_reference_defaults(official_folder):
    raw = json.loads((official_folder / CONFIG_FILE).read_text())
    assert raw["attention_mode"] == "xformers" and raw["use_stable_fp32"] and raw["optimization_step"] == 400
    raw.update(sample_size=[90, 160], sample_size_t=24, interpolation_scale_t=None, interpolation_scale_h=None,
               interpolation_scale_w=None)
    config = official_to_config(raw)
    assert config.interpolation_scales == (1.5, 3.0, 4.0)  # 24 / 16; 90 / 30; 160 / 40


def test_our_folder_round_trips_and_keeps_the_official_fields(tmp_path, small_config, official_folder):
    torch.manual_seed(0)
    model = OpenSoraT2V(small_config.model_copy(update={"zero_init": True, "rope_angles": "model_dtype"}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    hashes = save_dit(tmp_path / "ours", model)
    assert set(hashes) == {WEIGHTS_FILE, CONFIG_FILE}
    loaded = load_dit(tmp_path / "ours")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ours = json.loads((tmp_path / "ours" / CONFIG_FILE).read_text())
    theirs = json.loads((official_folder / CONFIG_FILE).read_text())
    ema_bookkeeping = {"decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step",
                       "use_ema_warmup"}
    assert set(ours) - {"_t2v"} == set(theirs) - ema_bookkeeping  # every field the reference's loader reads


def test_training_checkpoint_folders_load_ema_or_raw_weights(tmp_path, small_config):
    models = {}
    for seed, sub in enumerate(("model", "model_ema")):
        torch.manual_seed(seed)
        models[sub] = OpenSoraT2V(small_config)
        save_dit(tmp_path / "checkpoint-10" / sub, models[sub])
    ema = load_dit(tmp_path / "checkpoint-10")
    raw = load_dit(tmp_path / "checkpoint-10", weights="model")
    assert torch.equal(ema.proj_out.weight, models["model_ema"].proj_out.weight)
    assert torch.equal(raw.proj_out.weight, models["model"].proj_out.weight)
    assert read_dit_config(tmp_path / "checkpoint-10") == small_config


def test_sharded_weights_load(official_folder):
    state = load_file(official_folder / WEIGHTS_FILE)
    keys = sorted(state)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in halves.items():
        save_file({key: state[key] for key in part}, official_folder / name)
    index = {"metadata": {}, "weight_map": {key: name for name, part in halves.items() for key in part}}
    (official_folder / WEIGHTS_INDEX_FILE).write_text(json.dumps(index))
    (official_folder / WEIGHTS_FILE).unlink()
    model = load_dit(official_folder)
    assert torch.equal(model.proj_out.weight, state["proj_out.weight"])


def test_s3_folders_save_and_load(s3_bucket, small_config):
    torch.manual_seed(0)
    model = OpenSoraT2V(small_config).eval()
    uri = f"{s3_bucket}/runs/dit-stage1/model_ema"
    save_dit(uri, model)
    loaded = load_dit(uri)
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=0)


@pytest.mark.parametrize(("edit", "message"), [
    ({"norm_type": "layer_norm"}, "field 'norm_type' = 'layer_norm' is not supported"),
    ({"use_flux": True}, "field 'use_flux' is not a known"),
    ({"attention_head_dim": 8}, "field 'attention_head_dim' is invalid"),
    ({"num_layers": -8}, "field 'num_layers' is invalid"),
    ({"cross_attention_dim": 99}, "field 'cross_attention_dim' = 99"),
    ({"_class_name": "UDiTT2V"}, "not an OpenSoraT2V"),
])
def test_bad_configs_name_the_file_and_field(official_folder, edit, message):
    raw = json.loads((official_folder / CONFIG_FILE).read_text())
    raw.update(edit)
    (official_folder / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as info:
        load_dit(official_folder)
    assert str(official_folder / CONFIG_FILE) in str(info.value)


def test_weights_must_match_exactly(official_folder):
    state = load_file(official_folder / WEIGHTS_FILE)
    for change, message in [
        (lambda s: s.pop("proj_out.bias"), r"missing 1 keys \['proj_out.bias'\]"),
        (lambda s: s.update({"pos_embed.pos_embed": torch.zeros(1)}), r"unexpected 1 keys \['pos_embed.pos_embed'\]"),
        (lambda s: s.update({"proj_out.bias": torch.zeros(32)}), r"proj_out.bias \(32,\) \(expected \(16,\)\)"),
    ]:
        edited = dict(state)
        change(edited)
        save_file(edited, official_folder / WEIGHTS_FILE)
        with pytest.raises(ValueError, match=message):
            load_dit(official_folder)


def test_truncated_or_pickled_weights_are_refused_naming_the_file(official_folder):
    weights = official_folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"{weights}: unreadable safetensors"):
        load_dit(official_folder)
    weights.unlink()
    torch.save({}, official_folder / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.bin, which we do not unpickle"):
        load_dit(official_folder)


def test_a_folder_without_config_is_not_a_dit(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a DiT folder"):
        load_dit(tmp_path)


def test_reference_shorthands_in_configs(official_folder):
    raw = json.loads((official_folder / CONFIG_FILE).read_text())
    raw.update(out_channels=None, sample_size=16)  # the reference's defaults: out = in; an int is square
    raw["_use_default_values"] = ["dropout"]  # metadata diffusers writes when it saved a config
    config = official_to_config(raw)
    assert config.out_channels == config.in_channels == 4 and config.sample_size == (16, 16)


def test_overwriting_a_folder_never_pairs_the_old_config_with_new_weights(tmp_path, small_config, monkeypatch):
    from components.dit import official

    torch.manual_seed(0)
    save_dit(tmp_path / "model", OpenSoraT2V(small_config))
    wider = small_config.model_copy(update={"num_attention_heads": 3})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # killed while writing the new weights

    monkeypatch.setattr(official, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_dit(tmp_path / "model", OpenSoraT2V(wider))
    assert not (tmp_path / "model" / CONFIG_FILE).exists()  # unfinished, not finished with the wrong config

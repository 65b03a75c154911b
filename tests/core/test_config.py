"""Config errors fail before any work, naming the key and the file."""

from pathlib import Path

import pytest

from components.core.config import ConfigError, StrictModel, config_hash, load_config


class TrainConfig(StrictModel):
    lr: float = 1e-4
    steps: int = 10


class ModelConfig(StrictModel):
    width: int = 8


class RootConfig(StrictModel):
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


@pytest.fixture()
def presets(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text("model:\n  width: 16\ntrain:\n  lr: 0.001\n")
    (tmp_path / "typo.yaml").write_text("model:\n  widht: 16\n")
    (tmp_path / "badtype.yaml").write_text("train:\n  steps: many\n")
    return tmp_path


def test_loads_preset_and_applies_dotted_overrides(presets):
    cfg = load_config(RootConfig, presets, "tiny", ["train.lr=1e-4", "train.steps=3"])
    assert cfg.model.width == 16
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.steps == 3


def test_unknown_key_names_key_and_file(presets):
    with pytest.raises(ConfigError) as err:
        load_config(RootConfig, presets, "typo")
    assert "unknown key 'model.widht'" in str(err.value)
    assert "typo.yaml" in str(err.value)


def test_wrong_type_names_key_and_file(presets):
    with pytest.raises(ConfigError) as err:
        load_config(RootConfig, presets, "badtype")
    assert "key 'train.steps'" in str(err.value) and "badtype.yaml" in str(err.value)


def test_unknown_override_key_names_set(presets):
    with pytest.raises(ConfigError) as err:
        load_config(RootConfig, presets, "tiny", ["train.lrr=1"])
    assert "unknown key 'train.lrr'" in str(err.value) and "--set train.lrr=1" in str(err.value)


def test_override_into_a_value_is_rejected(presets):
    with pytest.raises(ConfigError, match="'train.lr' is a value"):
        load_config(RootConfig, presets, "tiny", ["train.lr.x=1"])


def test_unknown_preset_lists_available(presets):
    with pytest.raises(ConfigError, match="available: badtype, tiny, typo"):
        load_config(RootConfig, presets, "huge")


def test_config_hash_is_stable_and_sensitive(presets):
    a = load_config(RootConfig, presets, "tiny")
    b = load_config(RootConfig, presets, "tiny")
    c = load_config(RootConfig, presets, "tiny", ["train.steps=11"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_override_into_a_list_entry_by_index(tmp_path):
    from components.core.config import apply_overrides

    raw = {"train": {"stages": [{"steps": 5}, {"steps": 6}]}}
    assert apply_overrides(raw, ["train.stages.1.steps=2"]) == {"train": {"stages": [{"steps": 5}, {"steps": 2}]}}
    assert apply_overrides({"sizes": [1, 2]}, ["sizes.0=7"]) == {"sizes": [7, 2]}
    with pytest.raises(ConfigError, match="'train.stages' is a list of 2; '2' is not an index"):
        apply_overrides(raw, ["train.stages.2.steps=2"])
    with pytest.raises(ConfigError, match="'train.stages' is a list of 2; 'x' is not an index"):
        apply_overrides(raw, ["train.stages.x=2"])

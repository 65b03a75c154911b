"""The DiT's checks before any work: configuration, and a text encoder that loads offline."""

from __future__ import annotations

from components.dit.preflight import check


def test_configuration_alone_when_no_stage_runs_the_dit():
    assert check("v1.2", []) == []  # the pipeline validates the preset and overrides, nothing more
    assert "unknown key 'model.depth'" in check("tiny", ["model.depth=2"])[0]


def test_text_encoder_must_load_offline(tmp_path):
    stage = {"train_dit"}
    assert check("tiny", [], stage) == []  # the seeded tiny encoder needs no files
    (problem,) = check("v1.2", [], stage)
    assert problem.startswith("dit preset 'v1.2': text.source google/mt5-xxl: not a local folder and not in the "
                              "Hugging Face cache")
    assert "text.allow_download=true" in problem
    assert check("v1.2", ["text.allow_download=true"], stage) == []
    (missing,) = check("v1.2", [f"text.source={tmp_path / 'mt5'}"], stage)
    assert f"text.source {tmp_path / 'mt5'}: no such folder" in missing
    (tmp_path / "mt5").mkdir()
    assert "a folder without config.json" in check("v1.2", [f"text.source={tmp_path / 'mt5'}"], stage)[0]
    (tmp_path / "mt5" / "config.json").write_text("{}")
    assert check("v1.2", [f"text.source={tmp_path / 'mt5'}"], stage) == []

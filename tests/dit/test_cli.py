"""`t2v dit info`: parameter count, tokens and latent shape as JSON; bad sizes are one clear line."""

from __future__ import annotations

import json
import shlex

from components.dit.cli import build_parser, main


def _info(capsys, *argv: str) -> dict:
    assert main(["info", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_for_the_v12_preset_at_720p(capsys):
    info = _info(capsys, "--preset", "v1.2", "--frames", "93", "--height", "720", "--width", "1280")
    assert info["num_parameters"] == 2_771_907_856 and info["state_dict_keys"] == 687
    assert info["latent_shape"] == [4, 24, 90, 160]
    assert info["tokens"] == 86_400  # reference notes §2.1


def test_info_for_a_folder(capsys, tmp_path):
    info = _info(capsys, "--dit", "tests/dit/fixtures/reference", "--frames", "9", "--height", "64", "--width", "96")
    assert info["interpolation_scales"] == {"t": 1.0, "h": 1.5, "w": 2.0}
    assert info["tokens"] == 3 * 4 * 6 and info["hidden_size"] == 24


def test_help_example_runs(capsys):
    epilog = build_parser()._subparsers._group_actions[0].choices["info"].epilog
    argv = shlex.split(epilog.removeprefix("example: "))[2:]  # drop "t2v dit"
    assert _info(capsys, *argv[1:])["tokens"] == 86_400


def test_a_bad_size_is_one_line_naming_it(capsys):
    assert main(["info", "--preset", "tiny", "--height", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "height 100 must be a positive multiple of 16" in err


def test_caption_width_must_match_the_tiny_text_encoder(capsys):
    assert main(["info", "--preset", "tiny", "--set", "model.caption_channels=32"]) == 2
    err = capsys.readouterr().err
    assert "model.caption_channels (32) must equal the tiny text encoder's width text.tiny.d_model (64)" in err
    assert "'num_layers'" not in err  # the message names the keys, not the whole configuration

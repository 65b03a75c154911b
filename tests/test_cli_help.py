"""Every example in every `--help` works: each `--set KEY=VALUE` shown is accepted by that very command,
and each preset named exists."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex

import pytest

from components.cli import GROUPS, usage

SET_EXAMPLE = re.compile(r"--set[\s=]+([a-z][\w.]*=[^\s)\]]+)")  # not the usage line's KEY=VALUE


def _help_texts(parser: argparse.ArgumentParser, path: str) -> dict[str, str]:
    """`t2v group command` -> its --help text, for the parser and every subcommand below it."""
    texts = {path: parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts.update(_help_texts(sub, f"{path} {name}"))
    return texts


def _all_help() -> dict[str, tuple[str, str]]:
    found = {}
    for group, (module, _) in GROUPS.items():
        parser = importlib.import_module(module).build_parser(prog=f"t2v {group}")
        for path, text in _help_texts(parser, f"t2v {group}").items():
            found[path] = (group, text)
    return found


HELP = _all_help()
EXAMPLES = [(path, group, example) for path, (group, text) in HELP.items() for example in SET_EXAMPLE.findall(text)]


def test_every_config_command_shows_an_example():
    shown = {path for path, _, _ in EXAMPLES}
    for path, (_, text) in HELP.items():
        if "--set KEY=VALUE" in text:
            assert path in shown, f"{path} --help takes --set but shows no example"
    assert "t2v pipeline run" in shown and "t2v vae train" in shown and "t2v data shard" in shown


@pytest.mark.parametrize("path, group, example", EXAMPLES, ids=[f"{p}:{e}" for p, _, e in EXAMPLES])
def test_set_example_is_accepted_by_its_command(path, group, example):
    if group == "pipeline":
        from flows import preflight
        from flows.stages import chain

        assert preflight.problems(chain(), "tiny", [example]) == [], path
        return
    check = importlib.import_module(f"components.{group}.preflight").check
    for preset in ("tiny", "v1.2"):
        assert check(preset, [example]) == [], (path, preset)


def test_presets_named_in_help_exist():
    from components.core.config import preset_path

    for group, text in HELP.values():
        if group in ("data", "vae", "eval") and "(tiny, v1.2)" in text:
            folder = importlib.import_module(f"components.{group}.config").PRESETS_DIR
            for preset in ("tiny", "v1.2"):
                preset_path(folder, preset)  # raises when missing


def test_top_level_usage_names_every_group():
    text = usage()
    for group in GROUPS:
        assert f"  {group} " in text


def test_dit_eval_is_routed_to_the_eval_component(capsys):
    """`t2v dit eval` lives in components.eval (dit must not import eval): the dispatcher routes it."""
    from components.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["dit", "eval", "--help"])
    assert exited.value.code == 0
    assert "--dit DIT" in capsys.readouterr().out
    assert "t2v dit eval … runs t2v eval dit …" in usage()


def _epilog_examples() -> list[tuple[str, str]]:
    """(command path, example) for every subcommand whose epilog is `example: t2v …`."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if (sub.epilog or "").startswith("example: t2v "):
                        found.append((f"{path} {name}", sub.epilog.removeprefix("example: ")))
                    walk(sub, f"{path} {name}")

    for group, (module, _) in GROUPS.items():
        walk(importlib.import_module(module).build_parser(prog=f"t2v {group}"), f"t2v {group}")
    return found


@pytest.mark.parametrize("path, example", _epilog_examples(), ids=[path for path, _ in _epilog_examples()])
def test_epilog_example_parses(path, example):
    """Each shown example is a valid command line of its command (tests/dit/test_sample_cli.py runs the
    sampling one end to end)."""
    argv = shlex.split(example)
    assert " ".join(argv[:len(path.split())]) == path
    group = argv[1]
    parser = importlib.import_module(GROUPS[group][0]).build_parser(prog=f"t2v {group}")
    args = parser.parse_args(argv[2:])
    assert args.command == argv[2]

"""Every command's `--help` shows an example, and each example uses the command's real options."""

from __future__ import annotations

import shlex

import typer.main
from typer.testing import CliRunner

from vlcurate.cli.examples import EXAMPLES, command_paths
from vlcurate.cli.main import app


def _click_command(path: tuple[str, ...]):  # type: ignore[no-untyped-def]
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


def test_every_command_has_an_example_in_its_help() -> None:
    paths = [" ".join(p) for p, _ in command_paths(app)]
    assert sorted(paths) == sorted(EXAMPLES), set(paths) ^ set(EXAMPLES)
    for path in paths:
        r = CliRunner().invoke(app, [*path.split(), "--help"], terminal_width=200)
        assert r.exit_code == 0, (path, r.output)
        assert "Example: vlcurate " + path in " ".join(r.stdout.split()), path


def test_each_example_names_the_command_and_only_options_it_has() -> None:
    for path, example in EXAMPLES.items():
        words = shlex.split(example.split("|")[0])
        assert words[: 1 + len(path.split())] == ["vlcurate", *path.split()], example
        cmd = _click_command(tuple(path.split()))
        options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        used = {w.split("=")[0] for w in words if w.startswith("--")}
        assert used <= options, (path, used - options)

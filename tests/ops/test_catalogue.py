"""`vlcurate ops --format json|markdown` and `vlcurate --version`: generated from the code, for scripts
and the documentation's operator page."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vlcurate import __version__
from vlcurate.cli.main import app
from vlcurate.ops.catalogue import catalogue_markdown
from vlcurate.ops.registry import operators


def test_json_lists_every_registered_operator_with_its_parameters() -> None:
    r = CliRunner().invoke(app, ["ops", "--format", "json"])
    assert r.exit_code == 0, r.output
    entries = {e["name"]: e for e in json.loads(r.stdout)}
    assert set(entries) == set(operators())
    top = entries["top_fraction"]
    assert top["kind"] == "global"
    params = {p["name"]: p for p in top["params"]}
    assert params["fraction"]["required"] and params["among"]["default"] == "all"
    assert params["column"]["type"] == "str" and params["column"]["description"]
    assert entries["clip_score"]["uses_model"]


def test_markdown_has_one_section_per_operator_and_table_still_prints() -> None:
    text = catalogue_markdown()
    for name in operators():
        assert f"\n## {name}\n" in text and f"[`{name}`]" in text
    r = CliRunner().invoke(app, ["ops", "--format", "markdown"])
    assert r.exit_code == 0 and r.stdout == text
    table = CliRunner().invoke(app, ["ops"])
    assert table.exit_code == 0 and "datacomp_basic" in table.stdout
    bad = CliRunner().invoke(app, ["ops", "--format", "yaml"])
    assert bad.exit_code == 2 and "unknown format" in bad.output


def test_version_flag_and_command() -> None:
    for args in (["--version"], ["version"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0 and r.stdout.strip() == __version__

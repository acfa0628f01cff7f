"""Recipes are validated before anything runs, with errors that point at the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlcurate.ops.recipe import RecipeError, load_recipe

GOOD = """\
source: {input: shards/}
steps:
  - op: clip_score
    model: tiny-synth
  - op: score_threshold
    column: clip_score
    min: 0.2
  - op: top_fraction
    fraction: 0.5
sink: {out: runs/x}
"""


def test_a_good_recipe_loads_with_its_operators() -> None:
    r = load_recipe("r.yaml", text=GOOD)
    assert [s.op for s in r.steps] == ["clip_score", "score_threshold", "top_fraction"]
    assert [s.line for s in r.steps] == [3, 5, 8]
    assert [op.name for op in r.operators()] == ["clip_score", "score_threshold", "top_fraction"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("op: score_threshold", "op: score_treshold"),
            "r.yaml:5: step 2: unknown operator 'score_treshold'; did you mean score_threshold",
        ),
        (
            GOOD.replace("min: 0.2", "minimum: 0.2"),
            "r.yaml:5: step 2 (score_threshold): unknown parameter 'minimum'",
        ),
        (
            GOOD.replace("fraction: 0.5", "fraction: lots"),
            "r.yaml:8: step 3 (top_fraction): parameter 'fraction'",
        ),
        (GOOD.replace("fraction: 0.5", "fraction: 1.5"), "less than or equal to 1"),
        (
            GOOD.replace("column: clip_score\n", "column: aesthetic\n"),
            "r.yaml:5: step 2 (score_threshold): needs column(s) ['aesthetic']",
        ),
        (GOOD.replace("sink: {out: runs/x}", ""), "missing 'sink'"),
        (GOOD.replace("steps:", "stepz:"), "unknown top-level key(s) ['stepz']"),
        (GOOD + "  - {op: [", "not valid YAML"),
        ("- just a list", "a recipe is a mapping"),
        (
            GOOD.replace("  - op: clip_score\n    model: tiny-synth\n", "  - model: tiny-synth\n"),
            "r.yaml:3: step 1: each step is a mapping with 'op: NAME'",
        ),
    ],
)
def test_bad_recipes_name_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("r.yaml", text=text)
    assert message in str(err.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")

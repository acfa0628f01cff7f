"""The model-free instruction filters: each reason on hand-made samples, and precision / recall of
at least 0.9 for every filter on 2,000 synthetic samples with planted faults (chained as in the recipe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.instruct_ops import answers_agree, longest_loop
from vlcurate.ops.recipe import RecipeError, load_recipe
from vlcurate.ops.registry import get_operator
from vlcurate.synth.instruct_eval import precision_recall


def batch(
    answers: list[str], metas: list[dict[str, Any]] | None = None, question: str = "What is it?"
) -> pa.Table:
    metas = metas or [{} for _ in answers]
    msgs = [
        json.dumps([{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": a}])
        for a in answers
    ]
    return pa.table(
        {
            "uid": [f"{i:032x}" for i in range(len(answers))],
            "messages": msgs,
            "meta": [json.dumps(m) for m in metas],
        }
    )


def run(op: str, table: pa.Table, **params: Any) -> list[str | None]:
    cls = get_operator(op)
    out = cls(cls.Params(**params)).process(table)
    return out.column("reason").to_pylist()


def test_repetition_reasons() -> None:
    loop = "There are 3 objects. " + "and a red star " * 6
    ngram = " ".join(f"w{i % 7}" for i in range(20)) + " " + " ".join(f"w{i}" for i in range(40)) + "."
    cut = "A large red circle on the left and two small blue squares at"
    got = run(
        "instruct_repetition",
        batch(["There are 3 objects.", loop, "Yes.", cut, "Fine answer.", ngram],
              [{}, {}, {}, {}, {"finish_reason": "length"}, {}]),
        loop_repeats=4,
    )  # fmt: skip
    assert got == [None, "repetition:loop", None, "repetition:truncated", "repetition:truncated", got[5]]
    assert got[5] in ("repetition:ngram", "repetition:loop")
    assert run("instruct_repetition", batch([cut]), unterminated_min_words=None) == [None]
    assert run("instruct_repetition", batch(["很好" * 10 + "。"])) == ["repetition:loop"]


def test_longest_loop() -> None:
    assert longest_loop(list("abcabcabcx"), 5) == (3, 3)
    assert longest_loop(list("abcdef"), 5) == (1, 0)


def test_teacher_behaviour_reasons() -> None:
    answers = [
        "I'm sorry, but I can't help with that.",
        "Il y a trois objets dans cette image.",
        "Rouge",
        "The star is red.",
    ]
    assert run("teacher_behaviour", batch(answers)) == ["refusal", "language:fr", None, None]
    assert run(
        "teacher_behaviour", batch(["Il y a trois objets dans cette image."], [{"language": "fr"}])
    ) == [None]
    assert run("teacher_behaviour", batch(["Il y a trois objets dans cette image."]), languages=None) == [
        None
    ]
    mc = "What colour?\nA. red\nB. blue\nC. green\nAnswer with the option's letter."
    got = run("teacher_behaviour", batch(["B", "E", "B. blue", "blue", "purple"], question=mc))
    assert got == [None, "format:invalid_choice", None, None, "format:invalid_choice"]
    got = run(
        "teacher_behaviour",
        batch(
            ["Three.", "3", "There are several.", "There are no stars."], question="How many stars are there?"
        ),
    )
    assert got == [None, None, "format:missing_number", None]
    assert run("teacher_behaviour", batch(["Several."], question="How many?"), numbers=False) == [None]


def test_answer_agreement() -> None:
    assert answers_agree("There are three objects in the image.", "3")
    assert not answers_agree("There are 2 objects in the image.", "3")
    assert answers_agree("Yes, there is a red star.", "yes") and not answers_agree(
        "No, there is no star.", "yes"
    )
    assert answers_agree("The star is red.", "red") and not answers_agree("The star is blue.", "red")
    assert answers_agree("Counting them...\nAnswer: 4", "four") and not answers_agree(
        "Red is there.\nAnswer: 2", "red"
    )
    assert answers_agree("B. blue", "B", ["red", "blue"]) and not answers_agree("A", "B")
    assert not answers_agree("The star is red.", "red", mode="exact") and answers_agree(
        "Red.", "red", mode="exact"
    )
    got = run(
        "answer_agreement",
        batch(["Red.", "Blue.", "Anything."], [{"short_answer": "red"}, {"short_answer": "red"}, {}]),
    )
    assert got == [None, "answer_mismatch", None]


def test_bad_params_are_clear_recipe_errors(tmp_path: Path) -> None:
    text = (
        "source: {input: d.json, kind: instruct}\nsteps:\n  - op: teacher_behaviour\n"
        "    language_min_words: 0\nsink: {out: o}\n"
    )
    with pytest.raises(RecipeError, match="language_min_words"):
        load_recipe("r.yaml", text=text)
    text = "source: {input: d.json}\nsteps:\n  - op: answer_agreement\nsink: {out: o}\n"
    with pytest.raises(RecipeError, match=r"needs column\(s\) \['messages', 'meta'\]"):
        load_recipe("r.yaml", text=text)
    text = "source: {input: d.tar}\nsteps:\n  - op: text_length\nsink: {out: o, instruct_format: llava}\n"
    with pytest.raises(RecipeError, match="instruct_format needs an instruct source"):
        load_recipe("r.yaml", text=text)


RECIPE = """\
source: {{input: "{data}", kind: instruct, options: {{samples_per_shard: 500}}}}
steps:
  - op: instruct_repetition
  - op: teacher_behaviour
  - op: answer_agreement
sink: {{out: "{out}", instruct_format: llava}}
"""


def test_precision_and_recall_on_planted_faults(planted: Path, tmp_path: Path) -> None:
    rec = load_recipe("r.yaml", text=RECIPE.format(data=planted / "data.json", out=tmp_path))
    result = run_recipe(rec)
    assert result.rows == 2000
    truth = {
        r["uid"]: r["fault"] for r in map(json.loads, (planted / "truth.jsonl").read_text().splitlines())
    }
    import pyarrow.parquet as pq

    decisions = [
        r for f in sorted((tmp_path / "decisions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
    ]
    scores = precision_recall(decisions, truth)
    for step, s in scores.items():
        assert s["planted"] > 100, step
        assert s["precision"] >= 0.9 and s["recall"] >= 0.9, (step, s)
    # what the model-free filters must leave alone (other helpers' model-based filters catch these)
    left = {r["uid"] for r in decisions if r["keep"]}
    for fault in ("blind_answerable", "hallucination", None):
        ids = [u for u, f in truth.items() if f == fault]
        assert sum(u in left for u in ids) / len(ids) >= 0.95, fault

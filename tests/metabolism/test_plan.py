"""`plan` from real diagnoses: collection asks for the weak attribute, recipes validate, removals
name the implicated training samples, every action names its evidence; bad diagnoses fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.metabolism.runs import blind_to, write_run, wrong_for
from typer.testing import CliRunner

from vlcurate.builder.spec import load_spec
from vlcurate.cli.main import app
from vlcurate.evals.results import SampleResult
from vlcurate.metabolism.diagnose import DiagnoseOptions, diagnose, vocabulary
from vlcurate.metabolism.diagnosis import Diagnosis, Weakness
from vlcurate.metabolism.plan import load_plan, make_plan
from vlcurate.metabolism.trainpool import items_from_rows
from vlcurate.ops.recipe import load_recipe


def _diagnosis(tmp_path: Path) -> tuple[Path, set[str]]:
    run = write_run(tmp_path, 96, 0, blind_to("red"))
    bench = [json.loads(line) for line in (tmp_path / "bench" / "bench.jsonl").read_text().splitlines()]
    rows = [
        {
            "id": f"t{k}",
            "question": it["question"],
            "answer": wrong_for(it) if it["meta"]["colour"] == "red" else it["answer"],
            "short_answer": it["answer"],
            "image": str(tmp_path / "bench" / it["image"]),
        }
        for k, it in enumerate(bench)
        if it["meta"]["colour"] != "red" or k % 4 == 0
    ]
    diagnose(
        run, tmp_path / "diag", DiagnoseOptions(train=items_from_rows(rows), scorer=None, progress=False)
    )
    return tmp_path / "diag", {r["id"] for r in rows if r["answer"] != r["short_answer"]}


def test_plan_from_a_diagnosis(tmp_path: Path) -> None:
    diag, wrong = _diagnosis(tmp_path)
    res = CliRunner().invoke(
        app, ["plan", str(diag), "--out", str(tmp_path / "plan"), "--per-weakness", "60"]
    )
    assert res.exit_code == 0, res.output
    plan = load_plan(tmp_path / "plan")
    d = json.loads((diag / "diagnosis.json").read_text())
    ids = {w["id"] for w in d["weaknesses"]}
    first = plan.collect[0]
    assert first.focus == {"colour": "red"} and first.n == 60 and first.evidence.weakness == "w01"
    assert "red circles" in first.build_request and all("red" in q for q in first.retrieval_queries)
    spec = load_spec(tmp_path / "plan" / first.build_spec)  # the builder reads the request it was given
    assert "red circle" in spec.class_names and spec.images_per_class == 12
    for imp in plan.improve:
        recipe = load_recipe(tmp_path / "plan" / imp.recipe)
        assert recipe.steps[0].op == "concept_match" and imp.terms == ["red"]
    removal = plan.remove[0]
    noise = next(w for w in d["weaknesses"] if w["kind"] == "label_noise")
    assert set(removal.sample_ids) == {s["id"] for s in noise["implicated"]}
    assert set(removal.sample_ids) == wrong and removal.evidence.kind == "label_noise"
    assert all("disagrees with its short answer" in removal.reasons[i] for i in removal.sample_ids)
    assert all(a.evidence.weakness in ids and a.evidence.failing_ids for a in plan.actions())
    stage2 = next(m for m in plan.mixture if m.stage == "stage2-instruction")
    assert abs(sum(stage2.weights.values()) - 1.0) < 1e-3 and stage2.weights[first.id] > 0


def test_plan_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["plan", str(tmp_path), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "is not a diagnosis" in res.output
    diagnose(write_run(tmp_path, 16, 0), tmp_path / "diag", DiagnoseOptions(scorer=None, progress=False))
    res = runner.invoke(app, ["plan", str(tmp_path / "diag"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "no weaknesses" in res.output and "nothing to plan" in res.output
    assert not (tmp_path / "p" / "plan.json").exists()


def _weakness(wid: str, attribute: dict[str, str], category: str) -> Weakness:
    return Weakness(
        id=wid,
        kind="perception",
        category=category,
        attribute=attribute,
        label=f"{attribute} (perception)",
        score=5.0,
        n=40,
        failures=20,
        failure_rate=0.5,
        ci95=(0.35, 0.65),
        rest_failure_rate=0.1,
        failing_ids=["q1", "q2"],
    )


def test_requests_are_phrased_in_the_benchmarks_own_words(tmp_path: Path) -> None:
    """A benchmark that is not the synthetic world: its meta says `object` and `colour`; the plan's
    build requests use those words, and a one-class request names what it is not."""
    rows = [
        SampleResult(
            id=f"q{i}", question="?", answer="a", meta={"object": o, "colour": c, "img": f"x{i}.jpg"}
        )
        for i, (o, c) in enumerate(
            [("bus", "red"), ("car", "blue"), ("dog", "white"), ("person", "red"), ("car", "white")]
        )
    ]
    vocab = vocabulary(rows)
    assert vocab == {"colour": ["blue", "red", "white"], "object": ["bus", "car", "dog", "person"]}
    diag = Diagnosis(
        run="r",
        created="2026-12-07T00:00:00+00:00",
        answers=40,
        failures=20,
        accuracy=0.5,
        weaknesses=[
            _weakness("w01", {"object": "bus"}, "what"),
            _weakness("w02", {"colour": "red"}, "colour"),
        ],
        vocabulary=vocab,
    )
    plan = make_plan(diag, tmp_path / "plan", per_weakness=40, top=2)
    bus, red = plan.collect
    assert bus.build_request == "40 images each of buses for classification, not cars or dogs or persons"
    spec = load_spec(tmp_path / "plan" / bus.build_spec)
    assert spec.class_names == ["bus"] and {"car", "dog", "person"} <= {o.rstrip("s") for o in spec.other}
    assert red.build_request.startswith("10 images each of red buses, red cars, red dogs and red persons")
    assert "red dog" in load_spec(tmp_path / "plan" / red.build_spec).class_names
    assert bus.retrieval_queries == ["a bus"] and "a red car" in red.retrieval_queries


def test_a_weakness_with_no_thing_to_build_plans_retrieval_from_its_failures(tmp_path: Path) -> None:
    """A caption benchmark with no categories and no attributes (COCO captions as they come): there is
    no object to build a labelled set of, so the plan asks for images like the failed ones by their
    reference captions, never for "200 images each of alls"; `--collect build` says why it cannot."""
    from vlcurate.evals.results import summarize
    from vlcurate.metabolism.apply import ApplyError, build_collector

    run = tmp_path / "run"
    run.mkdir()
    rows = [
        SampleResult(
            id=f"c{k}",
            type="caption",
            question="Describe the image.",
            answer=f"a dog on a sofa {k}",
            response="a square",
            correct=k % 5 == 0,
            status="ok",
        )
        for k in range(20)
    ]
    summary = summarize(rows, model="m", bench="b.json", expected=20)
    (run / "samples.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
    (run / "summary.json").write_text(summary.model_dump_json())
    (run / "config.json").write_text(json.dumps({"bench": "b.json", "model": "m"}))
    diag = diagnose(run, tmp_path / "diag", DiagnoseOptions(scorer=None, progress=False))
    assert diag.weaknesses, diag
    plan = make_plan(diag, tmp_path / "plan", top=1)
    [c] = plan.collect
    assert c.build_request is None and c.build_spec is None
    assert c.retrieval_queries and all(q.startswith("a dog on a sofa") for q in c.retrieval_queries)
    assert c.game_pool["queries"] == c.retrieval_queries
    assert not plan.improve  # no term names what to improve ("all" is no term)
    with pytest.raises(ApplyError, match="names no thing to build a labelled set of"):
        build_collector([str(tmp_path)])(c, tmp_path / "x", 1)
    out = CliRunner().invoke(app, ["plan", str(tmp_path / "diag"), "--out", str(tmp_path / "p2")]).output
    assert "retrieval:" in out and "collect" in out

"""`plan` from real diagnoses: collection asks for the weak attribute, recipes validate, removals
name the implicated training samples, every action names its evidence; bad diagnoses fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

from tests.metabolism.runs import blind_to, write_run, wrong_for
from typer.testing import CliRunner

from vlcurate.builder.spec import load_spec
from vlcurate.cli.main import app
from vlcurate.metabolism.diagnose import DiagnoseOptions, diagnose
from vlcurate.metabolism.plan import load_plan
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

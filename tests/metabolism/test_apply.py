"""The loop's apply step beyond the synthetic collector: the plan's improve recipes run with the
engine against the bundled VLM server (rewrites replace their originals, with lineage), a recipe
that fails fails the round with nothing committed, and `--collect build` turns a `vlcurate build`
over a small synthetic pool into question/answer samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.builder.conftest import scene_of, true_class, write_scene_pool
from tests.metabolism.runs import blind_to, collect_action, write_run
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.loop_cmd import synth_collector
from vlcurate.cli.main import app
from vlcurate.metabolism.apply import ApplyError, build_collector, build_question
from vlcurate.metabolism.loop import Loop, LoopConfig, LoopError
from vlcurate.metabolism.plan import CollectAction, Plan, load_plan, plural
from vlcurate.synth.bench import make_training_samples
from vlcurate.synth.vocab import SHAPES
from vlcurate.versions.store import VersionStore


def _config(tmp_path: Path, endpoint: str, train: Path, **kw: Any) -> LoopConfig:
    return LoopConfig.model_validate(
        {
            "bench": str(tmp_path / "r" / "bench" / "bench.jsonl"),
            "endpoint": endpoint,
            "store": tmp_path / "store",
            "out": tmp_path / "loop",
            "train": str(train),
            "per_weakness": 4,
            "top": 1,
            "probe": False,
            "scorer": None,
            "progress": False,
            "train_cmd": "true",
            **kw,
        }
    )


def test_improve_recipe_rewrites_samples_with_lineage(tmp_path: Path) -> None:
    """Blind to red: the plan recaptions the training samples about red; the engine runs the recipe
    against the bundled server, and the committed version holds the checked rewrites in place of
    the originals, each with a lineage event naming the operator, plan, action and weakness."""
    run = write_run(tmp_path / "r", 16, 0, blind_to("red"))
    train = make_training_samples(tmp_path / "train", 6, seed=4, focus={"colour": "red"})
    with VLMServer() as vlm:
        loop = Loop(_config(tmp_path, vlm.base_url, train), synth_collector)
        base = loop.initial_version()
        rec = loop.run_round(1, base, run)
    plan = json.loads((tmp_path / "loop" / "round-1" / "plan" / "plan.json").read_text())
    (improve,) = plan["improve"]
    assert improve["op"] == "recaption" and improve["terms"] == ["red"]
    assert rec.new_version is not None and rec.improved > 0
    vs = VersionStore(tmp_path / "store")
    before = {s["id"]: s for s in vs.iter_samples(base)}
    after = {s["id"]: s for s in vs.iter_samples(rec.new_version)}
    rewrites = [e for e in vs.events(rec.new_version).to_pylist() if e["op"] == "cot_rewrite"]
    assert len(rewrites) == rec.improved
    for e in rewrites:
        sid = e["sample_id"]
        params = json.loads(e["params"]) if isinstance(e["params"], str) else e["params"]
        assert params["plan"] == plan["id"] and params["action"] == improve["id"]
        assert params["weakness"] == improve["evidence"]["weakness"] and plan["id"] in e["reason"]
        old, new = before[sid]["messages"][-1]["content"], after[sid]["messages"][-1]["content"]
        assert new != old and new.endswith(f"Answer: {before[sid]['short_answer']}")  # replaced, same id
    untouched = set(before) - {e["sample_id"] for e in rewrites}
    assert all(after[s]["messages"] == before[s]["messages"] for s in untouched if s in after)
    assert len(after) == len(before) + rec.added - rec.removed


def test_failing_improve_recipe_fails_the_round_and_commits_nothing(tmp_path: Path) -> None:
    """A recipe the engine cannot run (here: a plan's recipe edited into nonsense) fails the round
    with the error, before anything is committed; `--no-improve` commits the collected data only."""
    run = write_run(tmp_path / "r", 16, 0, blind_to("red"))
    train = make_training_samples(tmp_path / "train", 6, seed=4, focus={"colour": "red"})

    def later(action: CollectAction, out: Path, seed: int) -> list[Path]:
        raise RuntimeError("not yet")

    loop = Loop(_config(tmp_path, "http://127.0.0.1:9/v1", train, improve=False), later)
    base = loop.initial_version()
    with pytest.raises(LoopError, match="apply: not yet"):  # stops after the plan is written
        loop.run_round(1, base, run)
    plan = load_plan(tmp_path / "loop" / "round-1" / "plan")
    recipe = tmp_path / "loop" / "round-1" / "plan" / plan.improve[0].recipe
    doc = yaml.safe_load(recipe.read_text())  # the endpoint is down: no rewrite can be made
    doc["steps"][-1]["vlm"] |= {"max_retries": 0, "max_answer_retries": 0, "timeout_s": 2}
    recipe.write_text(yaml.safe_dump(doc))
    loop = Loop(_config(tmp_path, "http://127.0.0.1:9/v1", train), synth_collector)
    with pytest.raises(LoopError, match=r"apply: improve a02 \(recaption\): every rewrite failed \(\d+\)"):
        loop.run_round(1, base, run)
    recipe.write_text("steps: [{op: nope}]\n")
    with pytest.raises(LoopError, match=r"apply: improve a02 \(recaption\): .*a02\.yaml: missing 'source'"):
        loop.run_round(1, base, run)
    rnd = json.loads((tmp_path / "loop" / "round-1" / "round.json").read_text())
    assert rnd["status"] == "failed" and rnd["done"] == ["base_eval", "diagnose", "plan"]
    assert "a02.yaml: missing 'source'" in rnd["error"] and VersionStore(tmp_path / "store").ids() == [base]
    loop = Loop(_config(tmp_path, "http://127.0.0.1:9/v1", train, improve=False), synth_collector)
    samples, events = loop.apply(plan, base, 1, tmp_path / "loop" / "round-1")
    assert {e.op for e in events} == {"collect"} and len(samples) == 6 + len(events)


def _build_action(request: str) -> CollectAction:
    return collect_action(request, {"shape": "circle|square"}, "shape", ["a circle", "a square"])


def test_collect_build_turns_verified_images_into_samples(tmp_path: Path) -> None:
    """`--collect build`: the collect action's request built from a small synthetic pool; every
    exported image becomes a question over the spec's classes answered by its verified label, and
    the lineage names the build and the label's confidence and model."""
    pool = write_scene_pool(tmp_path / "pool", 40, single=True)
    train = make_training_samples(tmp_path / "train", 4, seed=4)
    cfg = _config(tmp_path, "http://127.0.0.1:9/v1", train, improve=False)
    loop = Loop(cfg, build_collector([str(pool)]))
    base = loop.initial_version()
    action = _build_action("3 images each of circles and squares for classification")
    plan = Plan(id="p1", diagnosis="", run="", created="", train_source=None, collect=[action])
    samples, events = loop.apply(plan, base, 1, tmp_path / "round")
    built = [s for s in samples if s["id"].startswith("r1-a01-")]
    assert len(built) == 6 == len(events)
    labels = {
        json.loads(r)["uid"]: json.loads(r) for r in _lines(tmp_path / "round/collect/a01/build/labels.jsonl")
    }
    for s in built:
        assert s["messages"][0]["content"].endswith(
            "What is shown in the image? Answer with one of: circle, square."
        )
        assert (
            s["messages"][1]["content"]
            == s["short_answer"]
            == labels[s["build"]["uid"]]["labels"][0]["class"]
        )
        assert Path(s["images"][0]).is_file() and s["short_answer"] in ("circle", "square")
    right = sum(true_class(s["build"]["source"], True) == s["short_answer"] for s in built)
    assert right >= 5  # verified labels, checked twice: (nearly) all right
    for e in events:
        assert e.op == "collect" and e.params["build"]["request"] == action.build_request
        assert e.params["label_model"] == "zero-shot:tiny-synth" and 0 < e.scores["label_confidence"] <= 1
    # a one-class build has nothing to choose between: its images are asked about by yes/no
    assert build_question(["star"], "star") == (
        "Is there a star in the image? Answer yes or no.",
        "yes",
        ["yes", "no"],
    )
    with pytest.raises(ApplyError, match="one class and nothing to tell it from"):
        build_collector([str(pool)])(
            _build_action("3 images each of zebras for classification"), tmp_path / "z", 1
        )
    with pytest.raises(ApplyError, match="one class and nothing to tell it from"):
        build_collector([str(pool)])(
            _build_action("3 images each of circles for detection"), tmp_path / "d", 1
        )


def test_collect_build_for_detection_asks_how_many(tmp_path: Path) -> None:
    """A counting weakness plans a detection build: every exported scene is asked how many of each
    class it holds, answered by its verified boxes, never by a count with a doubtful box in it. The
    request names what the classes are not: their boxes are labelled too, so a triangle is not
    counted as a square."""
    pool = write_scene_pool(tmp_path / "pool", 40, single=False)
    train = make_training_samples(tmp_path / "train", 4, seed=4)
    loop = Loop(
        _config(tmp_path, "http://127.0.0.1:9/v1", train, improve=False), build_collector([str(pool)])
    )
    base = loop.initial_version()
    action = _build_action(
        "4 images each of circles and squares for detection, not triangles, stars or crosses"
    )
    plan = Plan(id="p1", diagnosis="", run="", created="", train_source=None, collect=[action])
    samples, events = loop.apply(plan, base, 1, tmp_path / "round")
    built = [s for s in samples if s["id"].startswith("r1-a01-")]
    assert built and len(built) == len(events)
    build_dir = tmp_path / "round/collect/a01/build"
    labels = {json.loads(r)["uid"]: json.loads(r) for r in _lines(build_dir / "labels.jsonl")}
    queued = {json.loads(r)["uid"] for r in _lines(build_dir / "review" / "queue.jsonl")}
    right = 0
    for s in built:
        q, a = s["messages"][0]["content"], s["messages"][1]["content"]
        cls = s["label"]["class"] if "label" in s else None
        row = labels[s["build"]["uid"]]
        boxes = [lab for lab in row["labels"] if lab["class"] == cls]
        assert (
            q.endswith(f"How many {plural(cls)} are there? Answer with a number.") and a == s["short_answer"]
        )
        assert int(a) == len(boxes) == s["label"]["boxes"] > 0 and all(lab["verified"] for lab in boxes)
        assert not (s["build"]["uid"] in queued and cls in {lab["class"] for lab in row["labels"]} - {cls})
        truth = sum(SHAPES[o.label] == cls for o in scene_of(s["build"]["source"], False).objects)
        right += int(a) == truth
        assert Path(s["images"][0]).is_file()
    assert right >= 0.7 * len(built)  # counts from verified boxes: mostly the true count
    assert {e.op for e in events} == {"collect"} and all("label_confidence" in e.scores for e in events)


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


def test_collect_build_needs_a_pool(tmp_path: Path) -> None:
    args = ["loop", str(tmp_path / "b.jsonl"), "--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, [*args, "--collect", "build"])
    assert res.exit_code == 2 and "--collect build needs --pool" in res.output
    res = CliRunner().invoke(app, [*args, "--pool", str(tmp_path)])
    assert res.exit_code == 2 and "--pool is for --collect build" in res.output

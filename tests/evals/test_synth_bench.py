"""The synthetic benchmark and its training samples: exact answers, attribute meta, focus, determinism."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.synth.bench import CATEGORIES, iter_training_samples, make_benchmark, make_training_samples
from vlcurate.synth.offline_vlm.memory import load_memory
from vlcurate.synth.scene import scene_from_seed


def test_benchmark_answers_are_true_and_deterministic(tmp_path: Path) -> None:
    a = make_benchmark(tmp_path / "a", 60, seed=7)
    b = make_benchmark(tmp_path / "b", 60, seed=7)
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    assert set(Counter(r["category"] for r in rows)) == set(CATEGORIES)
    for r in rows:
        scene = scene_from_seed(7, r["meta"]["scene"])
        objs = scene.layout.objects
        assert (tmp_path / "a" / r["image"]).read_bytes() == scene.encode("png")
        m = r["meta"]
        if m["form"] == "count":
            assert int(r["answer"]) == sum((o.colour, o.shape) == (m["colour"], m["shape"]) for o in objs)
        elif m["form"] == "count_all":
            assert int(r["answer"]) == len(objs)
        elif m["form"] == "exists":
            assert (r["answer"] == "yes") == any(
                (o.colour, o.shape) == (m["colour"], m["shape"]) for o in objs
            )
        elif m["form"] == "colour_of":
            assert [o.colour for o in objs if o.shape == m["shape"]] == [r["answer"]] == [m["colour"]]
        elif m["form"] == "shape_of":
            assert [o.shape for o in objs if o.colour == m["colour"]] == [r["answer"]] == [m["shape"]]
        elif m["form"] == "background":
            assert r["answer"] == scene.background
        if r["type"] == "mc":
            assert r["answer"] in r["choices"] and len(set(r["choices"])) == len(r["choices"])


def test_training_samples_follow_the_focus_and_never_reuse_bench_images(tmp_path: Path) -> None:
    data = make_training_samples(tmp_path / "t", 12, seed=7, focus={"colour": "red"})
    rows = json.loads(data.read_text())
    assert len(rows) == 12 and all(r["attributes"]["colour"] == "red" for r in rows)
    assert load_memory(data).count(("colour", "red")) == 12
    bench_png = {scene_from_seed(7, i).encode("png") for i in range(40)}
    assert not bench_png & {(tmp_path / "t" / r["image"]).read_bytes() for r in rows}
    counts = [s for s, _ in iter_training_samples(5, seed=7, focus={"category": "count"})]
    assert all(s.meta["category"] == "count" and s.messages[1].content.isdigit() for s in counts)
    for focus, msg in [({"colour": "magenta"}, "not in the world"), ({"size": "big"}, "unknown focus key")]:
        with pytest.raises(ValueError, match=msg):
            make_training_samples(tmp_path / "x", 3, focus=focus)
    with pytest.raises(ValueError, match="only 0 of 2"):
        list(iter_training_samples(2, focus={"category": "caption", "colour": "red"}, max_scenes=5))


def test_synth_bench_cli(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app, ["synth", "bench", str(tmp_path), "--n", "12", "--train", "4", "--focus", "shape=star"]
    )
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "bench.jsonl").read_text().splitlines()) == 12
    assert all(
        s["attributes"]["shape"] == "star" for s in json.loads((tmp_path / "train" / "data.json").read_text())
    )
    r = CliRunner().invoke(app, ["synth", "bench", str(tmp_path / "x"), "--categories", "count,smell"])
    assert r.exit_code == 2 and "unknown categories ['smell']" in r.output

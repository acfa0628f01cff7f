"""`vlcurate loop` against the bundled server with a planted weakness (it refuses counting): a
failing train hook marks the round failed and keeps the version without accepting it; the re-run
resumes at the train step, the server learns from the new version's export, and validation accepts
the increment with the count category cured. Wrong answers are re-asked to tell perception from
reasoning. And a collector that fails: the round fails before anything is committed."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from tests.metabolism.runs import blind_to, collect_action, write_run
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.metabolism.loop import Loop, LoopConfig, LoopError
from vlcurate.metabolism.plan import CollectAction
from vlcurate.synth.bench import make_benchmark, make_training_samples
from vlcurate.versions.store import VersionStore


def test_loop_round_fails_then_resumes_and_cures(tmp_path: Path) -> None:
    make_benchmark(tmp_path / "bench", 40, seed=3, categories=("count", "exists", "colour"))
    train = make_training_samples(tmp_path / "train", 30, seed=4, focus={"category": "exists"})
    store, out = tmp_path / "store", tmp_path / "loop"
    with VLMServer(["--weakness", "refuse=count,blind-colour=red", "--memory-min", "10"]) as vlm:
        args = [
            "loop",
            str(tmp_path / "bench" / "bench.jsonl"),
            "--store",
            str(store),
            "--out",
            str(out),
            "--train",
            str(train),
            "--endpoint",
            vlm.base_url,
            "--rounds",
            "1",
            "--per-weakness",
            "24",
            "--top",
            "1",
            "--scorer",
            "none",
            "-q",
        ]
        res = CliRunner().invoke(app, [*args, "--train-cmd", "test -d {export} && exit 7"])
        assert res.exit_code == 3, res.output
        rnd = json.loads((out / "round-1" / "round.json").read_text())
        assert rnd["status"] == "failed" and "exited with 7" in rnd["error"]
        assert rnd["top_weakness"].startswith("category=count") and "refusal" in rnd["top_weakness"]
        vs = VersionStore(store)
        vid = rnd["new_version"]
        info = vs.get(vid)  # the version is kept, with the plan that asked for it
        assert info.plan_id == rnd["plan_id"] and info.n_samples == 30 + rnd["added"] and rnd["added"] >= 20
        atts = vs.attachments(vid)
        assert atts["plan"].payload["id"] == rnd["plan_id"]
        assert atts["train-failed-round-1"].payload["accepted"] is False
        assert "validation-round-1" not in atts
        events = vs.events(vid).to_pylist()
        assert {e["op"] for e in events} == {"collect"} and all(rnd["plan_id"] in e["reason"] for e in events)

        # resumes: same version, default hook (server memory); the increment must also gain something
        res = CliRunner().invoke(app, [*args, "--require-gain"])
        assert res.exit_code == 0, res.output
    rnd = json.loads((out / "round-1" / "round.json").read_text())
    assert rnd["status"] == "accepted" and rnd["new_version"] == vid
    assert rnd["accuracy_before"]["count"]["accuracy"] == 0.0
    assert rnd["accuracy_after"]["count"]["accuracy"] > 0.5
    assert rnd["decision"]["categories"]["count"]["improved"]
    assert not any(c["regressed"] for c in rnd["decision"]["categories"].values())
    target = rnd["targets"][0]  # the weakness the increment was for, closed
    assert target["label"].startswith("category=count") and target["closed"]
    assert target["before"]["accuracy"] == 0.0 and target["before"]["n"] == target["after"]["n"] > 0
    diag = json.loads((out / "round-1" / "diag" / "diagnosis.json").read_text())
    assert diag["probed"]  # wrong answers were re-asked: described, then answered from the description
    probed = [f for f in diag["failed"] if f["probe"] is not None]
    assert probed and all(
        f["kind"] in ("perception", "reasoning") and f["probe"]["description"] for f in probed
    )
    red = [f for f in probed if f["meta"].get("colour") == "red" and f["meta"].get("present")]
    assert all(f["kind"] == "perception" for f in red)  # blind to red: its own description misses them
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_version"] == vid
    vs = VersionStore(store)
    validation = vs.attachments(vid)["validation-round-1"].payload
    assert validation["accepted"] is True and validation["reasons"][-1].startswith("gain: closed w")
    assert vs.head("main") == vid and rnd["main_moved"]  # main follows the accepted increment
    assert vs.get(vid).parent == rnd["base_version"]
    assert (out / "summary.html").is_file() and (out / "round-1" / "report.html").is_file()


def test_failing_collector_fails_the_round_and_commits_nothing(tmp_path: Path) -> None:
    """No model needed: the round starts from a hand-made base run (blind to red)."""
    run = write_run(tmp_path / "r", 48, 0, blind_to("red"))
    train = make_training_samples(tmp_path / "train", 12, seed=4, focus={"category": "exists"})
    cfg = LoopConfig(
        bench=str(tmp_path / "r" / "bench" / "bench.jsonl"),
        endpoint="http://127.0.0.1:9/v1",
        store=tmp_path / "store",
        out=tmp_path / "loop",
        train=str(train),
        probe=False,
        scorer=None,
        progress=False,
    )

    def broken(action: CollectAction, out: Path, seed: int) -> list[Path]:
        raise RuntimeError(f"no source answers {action.build_request!r}")

    loop = Loop(cfg, broken)
    base = loop.initial_version()
    with pytest.raises(LoopError, match="apply: no source answers"):
        loop.run_round(1, base, run)
    rnd = json.loads((tmp_path / "loop" / "round-1" / "round.json").read_text())
    assert rnd["status"] == "failed" and rnd["done"] == ["base_eval", "diagnose", "plan"]
    assert rnd["top_weakness"] == "colour=red (perception)"
    assert VersionStore(tmp_path / "store").ids() == [base]  # nothing committed
    # the store's main version is a training pool diagnose can read
    args = ["diagnose", str(run), "--out", str(tmp_path / "d"), "--train", str(tmp_path / "store")]
    res = CliRunner().invoke(app, [*args, "-q", "--scorer", "none", "--no-probe"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    assert d["train"] == {"source": str(tmp_path / "store"), "samples": 12, "wrong_labels": 0}
    assert d["weaknesses"][0]["coverage"]["train_total"] == 12


def test_collect_command(tmp_path: Path) -> None:
    from vlcurate.cli.loop_cmd import command_collector

    action = collect_action(
        "2 images each of red circles for classification", {"colour": "red"}, None, ["a red circle"]
    )
    py = shlex.quote(sys.executable)
    make = (
        "from pathlib import Path; import sys, json; from vlcurate.synth.bench import make_training_samples"
    )
    make += " as m"
    run = "m(Path(sys.argv[1]), int(sys.argv[2]), 1, json.loads(sys.argv[3]))"
    collect = command_collector(f"{py} -c {shlex.quote(make + '; ' + run)} {{out}} {{n}} {{focus}}")
    files = collect(action, tmp_path / "c", 1)
    data = json.loads(files[0].read_text())
    assert len(data) == 6 and all("red" in json.dumps(d).lower() for d in data)
    failing = command_collector(f"{py} -c 'import sys; sys.exit(\"no pool for \" + sys.argv[1])' {{request}}")
    with pytest.raises(RuntimeError, match="no pool for 2 images each of red circles"):
        failing(action, tmp_path / "f", 1)


def test_loop_without_training_data(tmp_path: Path) -> None:
    args = [
        "loop",
        str(tmp_path / "bench.jsonl"),
        "--store",
        str(tmp_path / "s"),
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "no training data: give --train" in res.output
    res = CliRunner().invoke(app, [*args, "--train", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no instruction data" in res.output

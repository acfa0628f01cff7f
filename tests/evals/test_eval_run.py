"""`run_eval` against the real offline VLM server: scoring, resume after a kill, the cache, repeats,
the diagnosis modes, and every kind of bad input (missing images and answers, empty and garbled
replies, refusals, a judge that times out, an unreachable server, a changed configuration)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.evals.live import InThreadVLM
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.evals.config import EvalConfig
from vlcurate.evals.results import load_run
from vlcurate.evals.runner import RunConfigMismatch, run_eval

pytestmark = pytest.mark.slow


def cfg(server: InThreadVLM | str, bench: Path, out: Path, **kw: Any) -> EvalConfig:
    url = server if isinstance(server, str) else server.base_url
    return EvalConfig(endpoint=url, bench=str(bench), out=out, concurrency=4, **kw)


def answers(run: Path) -> dict[tuple[str, int], tuple[str | None, bool | None]]:
    return {k: (s.response, s.correct) for k, s in load_run(run).by_key().items()}


def test_run_scores_resumes_after_a_kill_and_hits_the_cache(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    shutil.copytree(bench.parent, tmp_path / "bench")  # a copy: its answers are edited at the end
    bench = tmp_path / "bench" / bench.name
    cache = tmp_path / "cache"
    s = run_eval(cfg(servers["plain"], bench, tmp_path / "a", cache_dir=cache), progress=False)
    assert s.complete and s.answered == s.expected == 18
    assert set(s.per_category) == {"count", "exists", "colour", "shape", "background", "caption"}
    assert s.status_counts == {"ok": 18} and s.cache_hits == 0
    assert s.overall.accuracy is not None and s.overall.accuracy >= 0.6  # tiny-synth is mostly right
    lo, hi = s.overall.ci95
    assert lo < s.overall.accuracy <= hi
    for name in ("report.md", "report.html", "accuracy.png", "report.json", "config.json", "summary.json"):
        assert (tmp_path / "a" / name).is_file(), name
    first = answers(tmp_path / "a")

    # A kill: 5 whole lines and half of the sixth are left. The re-run asks only the other 13.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tmp_path / "a" / "config.json", killed / "config.json")
    lines = (tmp_path / "a" / "samples.jsonl").read_bytes().split(b"\n")
    (killed / "samples.jsonl").write_bytes(b"\n".join(lines[:5]) + b"\n" + lines[5][:40])
    run_eval(cfg(servers["plain"], bench, killed, cache_dir=tmp_path / "cache2"), progress=False)
    report = json.loads((killed / "report.json").read_text())
    assert report["run"]["asked"] == 13 and report["summary"]["complete"]
    assert answers(killed) == first
    assert len((killed / "samples.jsonl").read_text().splitlines()) == 18  # the half line was cut

    # Nothing left to ask: the same folder again asks nothing.
    run_eval(cfg(servers["plain"], bench, tmp_path / "a", cache_dir=cache), progress=False)
    assert json.loads((tmp_path / "a" / "report.json").read_text())["run"]["asked"] == 0

    # A fresh folder with the same cache: every answer comes from the cache, the same as before.
    again = run_eval(cfg(servers["plain"], bench, tmp_path / "b", cache_dir=cache), progress=False)
    assert again.cache_hits == 18 and answers(tmp_path / "b") == first

    # A different configuration in the same folder is refused, nothing is written.
    before = (tmp_path / "a" / "samples.jsonl").read_bytes()
    with pytest.raises(RunConfigMismatch, match="temperature"):
        run_eval(cfg(servers["plain"], bench, tmp_path / "a", temperature=0.7), progress=False)
    bench.write_text(bench.read_text().replace('"answer": "', '"answer": "x'))  # answers edited in place
    with pytest.raises(RunConfigMismatch, match="benchmark file's content changed"):
        run_eval(cfg(servers["plain"], bench, tmp_path / "a", cache_dir=cache), progress=False)
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == before


def test_repeats_and_the_diagnosis_modes(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    plain = servers["plain"]
    s = run_eval(cfg(plain, bench, tmp_path / "rep", repeats=2, temperature=0.7, limit=4), progress=False)
    keys = set(load_run(tmp_path / "rep").by_key())
    assert s.expected == 8 and len(keys) == 8 and {r for _, r in keys} == {0, 1}

    # Without the image the model abstains (refused); from the bench's true description it reasons right.
    blind = run_eval(cfg(plain, bench, tmp_path / "none", image_mode="none"), progress=False)
    assert blind.status_counts.get("refused", 0) >= 12
    told = run_eval(
        cfg(plain, bench, tmp_path / "told", image_mode="description", description_from="bench"),
        progress=False,
    )
    assert told.overall.accuracy is not None and told.overall.accuracy >= 0.9
    before = plain.app.state.faults.requests
    own = run_eval(cfg(plain, bench, tmp_path / "own", image_mode="description"), progress=False)
    rows = load_run(tmp_path / "own").samples
    assert all(isinstance(r.model_extra and r.model_extra.get("description"), str) for r in rows)
    assert own.overall.n == 18
    # One description per image, then one text-only question per non-caption item.
    asked = plain.app.state.faults.requests - before
    assert asked == len({r.image for r in rows}) + sum(r.type != "caption" for r in rows)


def test_weak_model_refuses_garbles_and_is_blind(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    s = run_eval(cfg(servers["weak"], bench, tmp_path / "w"), progress=False)
    rows = load_run(tmp_path / "w").samples
    by_cat: dict[str, list[Any]] = {}
    for r in rows:
        by_cat.setdefault(r.category, []).append(r)
    assert {r.status for r in by_cat["count"]} == {"refused"}
    assert {r.status for r in by_cat["shape"]} == {"unparsed"}
    assert all(r.correct is False for r in by_cat["count"] + by_cat["shape"])  # scored as wrong
    assert s.per_category["count"].accuracy == 0.0
    report = (tmp_path / "w" / "report.md").read_text()
    assert "First failures:" in report and "| refused |" in report and "| unparsed |" in report
    red = [r for r in rows if r.meta.get("colour") == "red" and r.category in ("exists", "colour")]
    assert red and not any(r.correct for r in red if r.meta.get("present", True))


def test_missing_images_and_answers_are_marked_not_scored(
    servers: dict[str, InThreadVLM], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    from vlcurate.synth.scene import scene_from_seed

    (src / "ok.png").write_bytes(scene_from_seed(1, 0).encode("png"))
    (src / "broken.png").write_bytes(b"not a png")
    rows = [
        {"id": "ok", "image": "ok.png", "question": "How many objects are there?", "answer": "2"},
        {"id": "gone", "image": "nowhere.png", "question": "How many objects are there?", "answer": "2"},
        {"id": "broken", "image": "broken.png", "question": "Is there a red star?", "answer": "no"},
        {"id": "noans", "image": "ok.png", "question": "Is there a red star?"},
    ]
    (src / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = run_eval(cfg(servers["plain"], src / "b.jsonl", tmp_path / "r"), progress=False)
    got = {r.id: r for r in load_run(tmp_path / "r").samples}
    assert got["ok"].status == "ok" and got["ok"].correct is not None
    assert got["gone"].status == "missing_image" and "nowhere.png" in (got["gone"].error or "")
    assert got["broken"].status == "missing_image" and "unreadable" in (got["broken"].error or "")
    assert got["noans"].status == "missing_answer" and got["noans"].correct is None
    assert s.complete and s.overall.n == 1 and s.overall.unscored == 3


def test_empty_replies_are_no_answer(servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path) -> None:
    s = run_eval(cfg(servers["empty"], bench, tmp_path / "e", limit=3), progress=False)
    rows = load_run(tmp_path / "e").samples
    assert {r.status for r in rows} == {"no_answer"} and all(r.correct is False for r in rows)
    assert s.overall.n == 3 and s.overall.correct == 0


def test_judge_decides_and_a_judge_timeout_marks_error(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    plain = servers["plain"]
    judged = run_eval(
        cfg(
            plain,
            bench,
            tmp_path / "j",
            judge_endpoint=plain.base_url,
            judge_model="tiny-synth",
            judge_mode="always",
        ),
        progress=False,
    )
    rows = load_run(tmp_path / "j").samples
    questions = [r for r in rows if r.type != "caption"]
    assert all(
        r.judge == "tiny-synth" and r.model_extra and r.model_extra.get("judge_reason") for r in questions
    )
    exact = answers(tmp_path / "j")
    assert judged.status_counts.get("error", 0) == 0 and len(exact) == 18

    slow = cfg(plain, bench, tmp_path / "t", judge_endpoint=servers["hang"].base_url, judge_mode="always",
               judge_timeout_s=0.3, limit=7)  # fmt: skip
    s = run_eval(slow, progress=False)
    rows = load_run(tmp_path / "t").samples
    errors = [r for r in rows if r.status == "error"]
    assert len(errors) == sum(r.type != "caption" for r in rows) >= 5
    assert all((r.error or "").startswith("judge: timed out") and r.response for r in errors)
    assert s.complete and s.overall.unscored == len(errors)  # the run went on; the caption was scored


def test_unreachable_server_and_bad_files_from_the_cli(bench: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    from tests.platform_live import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    r = runner.invoke(app, ["eval", dead, str(bench), "--out", str(tmp_path / "d"), "--limit", "2",
                            "--max-retries", "0", "--no-progress"])  # fmt: skip
    assert r.exit_code == 3, r.output
    assert "2 item(s) failed with request errors (2x cannot reach" in " ".join(r.output.split())
    rows = load_run(tmp_path / "d").samples
    assert {x.status for x in rows} == {"error"} and all("cannot reach" in (x.error or "") for x in rows)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "q?", "answer": "a"}\n{"id": "2", "question": \n[1, 2]\n')
    r = runner.invoke(app, ["eval", dead, str(bad), "--out", str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code == 2
    assert "bad.jsonl:2: invalid JSON" in r.output and "bad.jsonl:3: expected a JSON object" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["eval", "ftp://nowhere", str(bench), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "endpoint must be an http(s) URL" in r.output


def test_a_killed_cli_run_keeps_its_lines_and_resumes(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "vlcurate.cli.main", "eval", servers["slow"].base_url, str(bench),
           "--out", str(out), "--concurrency", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.is_file() and samples.read_bytes().count(b"\n") >= 4:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    kept = load_run(out).samples
    assert 4 <= len(kept) < 18 and not (out / "summary.json").exists()
    s = run_eval(cfg(servers["plain"], bench, out), progress=False)
    assert s.complete and s.answered == 18
    assert json.loads((out / "report.json").read_text())["run"]["asked"] == 18 - len(kept)


def test_a_vlmevalkit_tsv_with_base64_images_answers_like_the_jsonl(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    """The same questions as MMBench-style TSV (images inline in base64, repeated images naming the
    first row that holds them): the model sees the same images, so it answers the same."""
    import base64

    rows = [json.loads(x) for x in bench.read_text().splitlines()]
    rows = [r for r in rows if r["type"] != "caption"]
    letters = "ABCD"
    head = ["index", "question", "type", *letters, "answer", "category", "image"]
    lines = ["\t".join(head)]
    first_row: dict[str, str] = {}
    for r in rows:
        choices = (r["choices"] or []) + [""] * 4
        answer = letters[r["choices"].index(r["answer"])] if r["choices"] else r["answer"]
        img = first_row.get(r["image"]) or base64.b64encode((bench.parent / r["image"]).read_bytes()).decode()
        first_row.setdefault(r["image"], r["id"])
        lines.append("\t".join([r["id"], r["question"], r["type"], *choices[:4], answer, r["category"], img]))
    tsv = tmp_path / "mm" / "bench.tsv"
    tsv.parent.mkdir()
    tsv.write_text("\n".join(lines) + "\n")
    a = run_eval(cfg(servers["plain"], bench, tmp_path / "jsonl", cache_dir=tmp_path / "c1"), progress=False)
    b = run_eval(cfg(servers["plain"], tsv, tmp_path / "tsv", cache_dir=tmp_path / "c2"), progress=False)
    assert b.status_counts == {"ok": len(rows)} and b.answered == len(rows)
    want = {k: v for k, v in answers(tmp_path / "jsonl").items() if k[0] in {r["id"] for r in rows}}
    assert answers(tmp_path / "tsv") == want
    assert a.overall.n > b.overall.n  # the captions were left out of the TSV


def test_image_root_for_a_benchmark_kept_apart_from_its_images(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    """POPE's layout: the question file in one place, the photos in COCO's folder: `--image-root`
    finds them for the run, and `diagnose` finds them again from the run's config."""
    from vlcurate.metabolism.diagnose import DiagnoseOptions, diagnose

    moved = tmp_path / "q" / "bench.jsonl"
    moved.parent.mkdir()
    shutil.copy(bench, moved)
    base = ["eval", servers["plain"].base_url, str(moved), "--no-progress", "--concurrency", "4"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "lost")])
    assert {s.status for s in load_run(tmp_path / "lost").samples} == {"missing_image"}, r.output
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "found"), "--image-root", str(bench.parent)])
    assert r.exit_code == 0, r.output
    run_eval(cfg(servers["plain"], bench, tmp_path / "ref", cache_dir=tmp_path / "c"), progress=False)
    assert answers(tmp_path / "found") == answers(tmp_path / "ref")
    d = diagnose(tmp_path / "found", tmp_path / "diag", DiagnoseOptions(scorer=None, progress=False))
    assert all(f.image and Path(f.image).is_file() for f in d.failed) and d.failed
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "x"), "--image-root", str(tmp_path / "no")])
    assert r.exit_code == 2 and "no such folder" in r.output


def test_every_image_of_a_multi_image_item_is_sent(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    """image_2 and on go to the model with the first, in order (the cache key sees them: the same
    question with another second image is asked again); an item whose second image is missing is
    marked missing_image, never asked with one image fewer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlcurate.evals.bench import read_benchmark
    from vlcurate.evals.runner import _load_images

    rows = [json.loads(x) for x in bench.read_text().splitlines()][:2]
    img = [(bench.parent / r["image"]).read_bytes() for r in rows]
    table = pa.table(
        {
            "id": ["m1", "m2", "m3"],
            "question": ["How many objects are there in the two images?"] * 3,
            "answer": ["3"] * 3,
            "image_1": [{"bytes": img[0], "path": None}] * 3,
            "image_2": [{"bytes": img[1], "path": None}, {"bytes": img[0], "path": None}, None],
            "image_3": [None, None, {"bytes": None, "path": "gone.png"}],
        }
    )
    pq.write_table(table, tmp_path / "multi.parquet")
    items = read_benchmark(tmp_path / "multi.parquet")
    assert [len(_load_images(i)[0]) for i in items[:2]] == [2, 2]
    assert _load_images(items[0])[0] == img and _load_images(items[2])[1] is not None
    s = run_eval(cfg(servers["plain"], tmp_path / "multi.parquet", tmp_path / "run"), progress=False)
    got = {r.id: r for r in load_run(tmp_path / "run").samples}
    assert got["m1"].status == got["m2"].status == "ok" and s.cache_hits == 0
    assert got["m3"].status == "missing_image" and "gone.png" in (got["m3"].error or "")


def test_a_cache_tag_keeps_a_retrained_models_answers_apart(
    servers: dict[str, InThreadVLM], bench: Path, tmp_path: Path
) -> None:
    """The same model name, the same shared cache: under another --cache-tag (new weights) nothing
    comes from the cache; under the same tag everything does; and a run folder refuses another tag."""
    cache = tmp_path / "cache"
    base = ["eval", servers["plain"].base_url, str(bench), "--no-progress", "--cache-dir", str(cache)]
    for out, tag in (("a", "round-1"), ("b", "round-2"), ("c", "round-1")):
        r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / out), "--cache-tag", tag])
        assert r.exit_code == 0, r.output
    hits = {o: json.loads((tmp_path / o / "summary.json").read_text())["cache_hits"] for o in "abc"}
    assert hits == {"a": 0, "b": 0, "c": 18}
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a"), "--cache-tag", "round-3"])
    assert r.exit_code == 2 and "cache_tag: 'round-1' -> 'round-3'" in r.output

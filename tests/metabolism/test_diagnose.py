"""`diagnose` on hand-made runs: the planted weakness is ranked first, failures are attributed,
training coverage and wrong labels are found, and bad runs fail with one clear line."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.metabolism.runs import Item, blind_to, write_run, wrong_for
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.metabolism.diagnose import DiagnoseOptions, diagnose
from vlcurate.metabolism.diagnosis import DiagnosisError, load_diagnosis
from vlcurate.metabolism.trainpool import items_from_rows

NO_EMBED = DiagnoseOptions(scorer=None, progress=False)


def test_blind_colour_ranked_first_with_its_failures(tmp_path: Path) -> None:
    run = write_run(tmp_path, 64, 0, blind_to("red"))
    d = diagnose(run, tmp_path / "diag", DiagnoseOptions(progress=False))
    top = d.weaknesses[0]
    assert top.attribute == {"colour": "red"} and top.category is None
    planted = {
        json.loads(line)["id"]
        for line in (tmp_path / "bench" / "bench.jsonl").read_text().splitlines()
        if json.loads(line)["meta"]["colour"] == "red"
    }
    assert set(top.failing_ids) == planted and top.failures == len(planted) == d.failures
    assert top.failure_rate == 1.0 and top.rest_failure_rate == 0.0
    # no endpoint: wrong answers are not re-asked, and the diagnosis says so
    assert d.attribution == {"wrong": len(planted)} and not d.probed
    assert any("not re-asked" in w for w in d.warnings)
    # clusters from the bundled scorer's embeddings hold every failure once
    assert sum(c.size for c in d.clusters) == d.failures
    # the report shows the failures' images and the plots
    html = (tmp_path / "diag" / "report.html").read_text()
    assert "figures/categories.png" in html and "figures/weaknesses.png" in html
    assert html.count('<img src="images/') >= min(8, len(planted))
    assert load_diagnosis(tmp_path / "diag").weaknesses[0].id == "w01"


def test_refusals_confusions_and_format(tmp_path: Path) -> None:
    def rule(item: Item) -> tuple[str, str | None] | None:
        if item["category"] == "count":
            return ("refused", None)
        if item["category"] == "shape" and item["answer"] in ("circle", "square"):
            return ("ok", "square" if item["answer"] == "circle" else "circle")
        if item["category"] == "exists" and item["meta"]["shape"] == "star":
            return ("unparsed", None)
        return None

    d = diagnose(write_run(tmp_path, 120, 1, rule), tmp_path / "diag", NO_EMBED)
    first = d.weaknesses[0]
    assert (first.kind, first.category, first.attribute) == ("refusal", "count", {})
    swap = next(w for w in d.weaknesses if w.kind == "perception")
    assert swap.attribute == {"shape": "circle|square"} and swap.category == "shape"
    assert set(swap.confusions) <= {"circle->square", "square->circle"} and swap.confusions
    fmt = next(w for w in d.weaknesses if w.kind == "format")
    assert (fmt.category, fmt.attribute, fmt.failure_rate) == ("exists", {"shape": "star"}, 1.0)
    assert len(d.weaknesses) == 3  # nothing else fails
    assert d.attribution["refusal"] == first.failures and d.attribution["format"] == fmt.failures


def test_training_coverage_and_wrong_labels(tmp_path: Path) -> None:
    run = write_run(tmp_path, 96, 0, blind_to("red"))
    bench = [json.loads(line) for line in (tmp_path / "bench" / "bench.jsonl").read_text().splitlines()]
    rows = []
    for k, item in enumerate(bench):
        if item["meta"]["colour"] == "red" and k % 3:
            continue  # the pool is thin on red
        wrong = item["meta"]["colour"] == "red"  # and what it has about red is mislabelled
        rows.append(
            {
                "id": f"t{k}",
                "question": item["question"],
                "answer": wrong_for(item) if wrong else item["answer"],
                "short_answer": item["answer"],
                "image": str(tmp_path / "bench" / item["image"]),
            }
        )
    train = items_from_rows(rows)
    d = diagnose(run, tmp_path / "diag", DiagnoseOptions(train=train, progress=False))
    top = d.weaknesses[0]
    assert top.attribute == {"colour": "red"} and top.coverage is not None and top.coverage.thin
    cov = top.coverage
    assert cov.matching < 10 and cov.share < cov.bench_share / 2
    # the failures' nearest training samples are farther than those of the items answered right
    assert cov.nn_similarity_failures is not None and cov.nn_similarity_passes is not None
    assert cov.nn_similarity_failures < cov.nn_similarity_passes
    assert d.clusters and all(c.thin for c in d.clusters)
    noise = [w for w in d.weaknesses if w.kind == "label_noise"]
    assert noise and noise[0].attribute == {"colour": "red"}
    wrong_ids = {r["id"] for r in rows if r["answer"] != r["short_answer"]}
    assert {s.id for s in noise[0].implicated} == wrong_ids
    assert d.train is not None and d.train.wrong_labels == len(wrong_ids)


def test_no_failures_means_no_weakness(tmp_path: Path) -> None:
    d = diagnose(write_run(tmp_path, 24, 0), tmp_path / "diag", NO_EMBED)
    assert d.failures == 0 and d.weaknesses == [] and d.accuracy == 1.0
    assert "No weakness" in (tmp_path / "diag" / "report.html").read_text()


def test_bad_runs(tmp_path: Path) -> None:
    with pytest.raises(DiagnosisError, match="not an evaluation run"):
        diagnose(tmp_path, tmp_path / "d")
    (tmp_path / "samples.jsonl").write_text("")
    with pytest.raises(DiagnosisError, match="no answers"):
        diagnose(tmp_path, tmp_path / "d")
    (tmp_path / "samples.jsonl").write_text('{"id": "a", "question": "q", "status": "error"}\n')
    with pytest.raises(DiagnosisError, match="no scored answers"):
        diagnose(tmp_path, tmp_path / "d")
    res = CliRunner().invoke(app, ["diagnose", str(tmp_path / "nope"), "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "not an evaluation run" in res.output
    assert not (tmp_path / "d").exists()


class _Silent(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose model always answers with nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_model_that_returns_nothing_while_probing(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"  # --endpoint without /v1 gets it
        run = write_run(tmp_path, 24, 0, blind_to("red"))
        args = ["diagnose", str(run), "--out", str(tmp_path / "d"), "--endpoint", url, "--model", "m"]
        res = CliRunner().invoke(app, [*args, "--scorer", "none", "-q"])
    finally:
        server.shutdown()
    assert res.exit_code == 3, res.output  # partial: written, but the failures stay unattributed
    assert "returned nothing usable" in res.output
    d = load_diagnosis(tmp_path / "d")
    assert not d.probed and d.probe_errors == d.failures > 0 and set(d.attribution) == {"wrong"}
    assert d.weaknesses[0].attribute == {"colour": "red"}


def test_images_held_inside_the_benchmark_file(tmp_path: Path) -> None:
    """An HF Parquet benchmark keeps its images as bytes and a run names them "<embedded>" (or by a
    path that is no file): diagnose takes them from the benchmark, for the report and the clusters."""
    run = write_run(tmp_path, 48, 0, blind_to("red"))
    bench_dir = tmp_path / "bench"
    items = [json.loads(x) for x in (bench_dir / "bench.jsonl").read_text().splitlines()]
    table = pa.table(
        {
            "id": [i["id"] for i in items],
            "question": [i["question"] for i in items],
            "answer": [i["answer"] for i in items],
            "category": [i["category"] for i in items],
            "image": [{"bytes": (bench_dir / i["image"]).read_bytes(), "path": None} for i in items],
        }
    )
    pq.write_table(table, tmp_path / "bench.parquet")
    shutil.rmtree(bench_dir)
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    for k, r in enumerate(rows):
        r["image"] = "<embedded>" if k % 2 else f"gone/{r['id']}.png"
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("summary.json", "config.json"):
        doc = json.loads((run / name).read_text())
        doc["bench"] = str(tmp_path / "bench.parquet")
        (run / name).write_text(json.dumps(doc))
    d = diagnose(run, tmp_path / "diag", DiagnoseOptions(progress=False))
    assert not any("could not" in w or "not found" in w for w in d.warnings), d.warnings
    assert all(f.image and Path(f.image).is_file() for f in d.failed)
    assert sum(c.size for c in d.clusters) == d.failures  # embeddings saw the images
    html = (tmp_path / "diag" / "report.html").read_text()
    assert html.count('<img src="images/') >= min(8, d.failures) and "no image" not in html
    # the benchmark gone as well: a warning, and the diagnosis still made
    (tmp_path / "bench.parquet").unlink()
    shutil.rmtree(tmp_path / "diag")
    d = diagnose(run, tmp_path / "diag", DiagnoseOptions(scorer=None, progress=False))
    assert d.weaknesses[0].attribute == {"colour": "red"}
    assert any("could not be re-read" in w for w in d.warnings)

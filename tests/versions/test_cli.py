"""`vlcurate version ...` end to end: instruction files, a real `vlcurate run` folder, a build export,
every subcommand's output, and the errors a user meets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.evals.test_paired import pattern, write_run
from tests.versions.conftest import png
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.synth.instruct_data import write_planted
from vlcurate.versions.store import open_store

RECIPE = """
source: {{input: {data}, kind: instruct, options: {{samples_per_shard: 1000}}}}
steps:
  - op: instruct_repetition
  - op: teacher_behaviour
    languages: [en]
  - op: answer_agreement
sink: {{out: {out}, instruct_format: llava}}
"""


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args), terminal_width=200)
    return r.exit_code, r.output


def test_instruct_file_then_filter_run_then_export(tmp_path: Path) -> None:
    data = tmp_path / "instruct"
    write_planted(data, 40, seed=1, fault_rate=0.5)
    store = str(tmp_path / "vs")
    code, out = invoke("version", "create", str(data / "data.json"), "--store", store, "-m", "raw")
    assert code == 0 and "40 samples (40 new content)" in out, out
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data / "data.json", out=tmp_path / "run"))
    code, out = invoke("run", str(recipe))
    assert code == 0, out
    dropped = [json.loads(x) for x in (tmp_path / "run" / "dropped.jsonl").read_text().splitlines()]
    code, out = invoke("version", "create", str(tmp_path / "run"), "--store", store, "-m", "text filters")
    assert code == 0 and f"{40 - len(dropped)} samples (0 new content)" in out, out
    vs = open_store(store)
    v1, v2 = (i.id for i in vs.list())
    assert vs.head("main") == v2 and vs.get(v2).parent == v1

    code, out = invoke("version", "diff", "main~1", "main", "--store", store, "--json")
    d = json.loads(out)
    assert code == 0 and d["removed"] == len(dropped) and d["added"] == d["changed"] == 0
    by_reason = {(r["op"], r["reason"]): r["n"] for r in d["by_reason"]}
    assert sum(by_reason.values()) == len(dropped)
    assert all(n > 0 for n in by_reason.values()) and all(op is not None for op, _ in by_reason)
    code, out = invoke("version", "diff", v1[:6], v2[:6], "--store", store)
    assert code == 0 and f"-{len(dropped)} removed" in out and "removed" in out

    gone = dropped[0]
    code, out = invoke("version", "lineage", gone["id"], "--store", store, "--json")
    h = json.loads(out)
    assert [e["presence"] for e in h["history"]] == ["added", "removed"]
    last = h["history"][1]["events"][-1]
    assert last["dropped"] and last["reason"] == gone["reason"]
    code, out = invoke("version", "lineage", gone["id"], "--store", store)
    assert code == 0 and "dropped" in out and gone["reason"] in out

    code, out = invoke("version", "list", "--store", store)
    assert code == 0 and v1[:12] in out and "main" in out and "text filters" in out
    code, out = invoke("version", "log", "--store", store)
    assert code == 0 and out.index(v2[:12]) < out.index(v1[:12])
    code, out = invoke("version", "show", "main", "--store", store)
    assert code == 0 and "all hashes match" in out

    code, out = invoke(
        "version", "export", "main", "--store", store, "--out", str(tmp_path / "exp"), "--format", "sharegpt"
    )
    assert code == 0 and "as sharegpt" in out
    recs = json.loads((tmp_path / "exp" / "data.json").read_text())
    assert len(recs) == 40 - len(dropped) and all((tmp_path / "exp" / r["images"][0]).is_file() for r in recs)

    # Damage is reported, not read: a deleted events file.
    (tmp_path / "vs" / "versions" / v2 / "events.parquet").unlink()
    code, out = invoke("version", "show", v2, "--store", store)
    assert code == 2 and "is damaged" in out and "events.parquet is missing" in out


def test_validate_stores_the_decision_and_refuses_bad_runs(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(png("red"))
    data = tmp_path / "d.jsonl"
    rec = {
        "id": "a",
        "image": "img.png",
        "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}],
    }
    data.write_text(json.dumps(rec) + "\n")
    store = str(tmp_path / "vs")
    assert invoke("version", "create", str(data), "--store", store)[0] == 0
    b_rows, n_rows = pattern("colour", 10, 0, 12, 8)
    sb, sn = pattern("shape", 20, 1, 1, 8)
    base = write_run(tmp_path / "base", b_rows + sb)
    new = write_run(tmp_path / "new", n_rows + sn)
    code, out = invoke(
        "version",
        "validate",
        "main",
        "--store",
        store,
        "--base-run",
        base.path,
        "--new-run",
        new.path,
        "--target",
        "colour",
        "--plot",
        str(tmp_path / "decision.png"),
    )
    assert code == 0 and "ACCEPTED" in out and "improved" in out, out
    assert (tmp_path / "decision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vs = open_store(store)
    vid = vs.head("main")
    assert vid is not None
    before = (tmp_path / "vs" / "versions" / vid / "version.json").read_bytes()
    att = vs.attachments(vid)["validation-mcnemar"]
    assert att.payload["accepted"] is True and att.payload["categories"]["colour"]["improvements"] == 12
    assert (tmp_path / "vs" / "versions" / vid / "version.json").read_bytes() == before and vs.verify(vid).ok
    # The reverse comparison regresses; with --fail-on-reject it exits 4; the same name cannot be reused.
    code, out = invoke(
        "version",
        "validate",
        "main",
        "--store",
        store,
        "--base-run",
        new.path,
        "--new-run",
        base.path,
        "--name",
        "reverse",
        "--fail-on-reject",
    )
    assert code == 4 and "REJECTED" in out and "colour regressed" in out
    code, out = invoke(
        "version", "validate", "main", "--store", store, "--base-run", new.path, "--new-run", base.path
    )
    assert code == 2 and "already has an attachment 'validation-mcnemar'" in out
    other = write_run(tmp_path / "other", n_rows + sn, bench="another.jsonl")
    code, out = invoke(
        "version",
        "validate",
        "main",
        "--store",
        store,
        "--base-run",
        base.path,
        "--new-run",
        other.path,
        "--name",
        "x",
    )
    assert code == 2 and "different benchmarks" in out
    code, out = invoke(
        "version",
        "validate",
        "main",
        "--store",
        store,
        "--base-run",
        str(tmp_path / "nope"),
        "--new-run",
        new.path,
        "--name",
        "y",
    )
    assert code == 2 and "not an evaluation run" in out
    code, out = invoke("version", "show", "main", "--store", store)
    assert "validation-mcnemar (accepted=True)" in out and "reverse (accepted=False)" in out
    shown = json.loads(invoke("version", "show", "main", "--store", store, "--json")[1])
    assert shown["verify"]["ok"] and shown["attachments"]["reverse"]["payload"]["accepted"] is False
    # A version on another parent than the branch head is stored, and the branch stays where it was.
    code, out = invoke("version", "create", str(data), "--store", store, "--root", "-m", "side")
    assert code == 0 and f"main not moved (at {vid[:12]})" in out and open_store(store).head("main") == vid


def test_build_export_and_user_errors(tmp_path: Path) -> None:
    ds = tmp_path / "pets" / "imagefolder"
    for split, cls, n in (("train", "cat", 2), ("train", "dog", 1), ("val", "cat", 1)):
        (ds / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (ds / split / cls / f"{cls}{i}.png").write_bytes(png("red" if cls == "cat" else "blue"))
    store = str(tmp_path / "vs")
    code, out = invoke("version", "create", str(ds), "--store", store, "-m", "pets")
    assert code == 0 and "4 samples" in out, out
    s = open_store(store).sample("train/dog0.png", "main")
    assert s is not None and s["labels"] == ["dog"] and s["split"] == "train"
    code, out = invoke("version", "export", "main", "--store", store, "--out", str(tmp_path / "e"))
    assert code == 2 and "no conversation" in out
    assert (
        invoke(
            "version", "export", "main", "--store", store, "--out", str(tmp_path / "e"), "--format", "jsonl"
        )[0]
        == 0
    )

    code, out = invoke("version", "show", "ffff", "--store", store)
    assert code == 2 and "no version 'ffff'" in out
    code, out = invoke("version", "list", "--store", str(tmp_path / "none"))
    assert code == 2 and "is not a version store" in out
    code, out = invoke("version", "lineage", "nobody", "--store", store)
    assert code == 2 and "never appears" in out
    code, out = invoke("version", "create", str(tmp_path / "missing.json"), "--store", store)
    assert code == 2 and "no such file" in out
    # A corrupt manifest (bytes replaced) is named on read.
    vid = open_store(store).head("main")
    assert vid is not None
    (tmp_path / "vs" / "versions" / vid / "manifest.parquet").write_bytes(b"PAR1 garbage PAR1")
    code, out = invoke(
        "version", "export", "main", "--store", store, "--out", str(tmp_path / "e2"), "--format", "jsonl"
    )
    assert code == 2 and "manifest.parquet was altered" in out
    shutil.rmtree(tmp_path / "vs" / "versions" / vid)
    code, out = invoke("version", "show", vid[:8], "--store", store)
    assert code == 2 and "no version" in out


def test_image_root_for_instruction_files_kept_apart_from_their_images(tmp_path: Path) -> None:
    """LLaVA's layout: the JSON in one place, images under an --image-folder elsewhere."""
    data = tmp_path / "instruct"
    write_planted(data, 12, seed=3)
    (tmp_path / "json").mkdir()
    moved = tmp_path / "json" / "data.json"
    shutil.move(str(data / "data.json"), moved)
    store = str(tmp_path / "vs")
    code, out = invoke("version", "create", str(moved), "--store", store, "--json")
    assert code != 0 or json.loads(out)["n_samples"] == 0, out  # every image missing: nothing stored
    code, out = invoke("version", "create", str(moved), "--store", store, "--image-root", str(data), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["n_samples"] == 12 and info["dropped"] == 0
    samples = list(open_store(store).iter_samples(info["id"]))
    images = [Path(img) for s in samples for img in s["images"]]
    assert len(samples) == 12 and all(p.is_relative_to(data.resolve()) and p.is_file() for p in images)
    code, out = invoke(
        "version", "create", str(moved), "--store", store, "--image-root", str(tmp_path / "no")
    )
    assert code != 0 and "no such folder" in out
    code, out = invoke(
        "version", "create", str(data), "--store", store, "--kind", "build", "--image-root", str(data)
    )
    assert code != 0 and "--image-root is for instruction files" in out

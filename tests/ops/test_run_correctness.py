"""`vlcurate run` is right on inputs users have and says so when it is not (issue 14): images by path
and URL are loaded, a changed recipe re-runs what changed, the report counts every shard after a
resume, model steps skip dropped rows, errors are one line found by --check, and exit codes tell."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import CocoPair
from typer.testing import CliRunner

from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.cli.main import app
from vlcurate.io.subset import read_subset
from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, ["run", *map(str, args)])


def _decisions(out: Path) -> list[dict[str, Any]]:
    return [r for f in sorted((out / "decisions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _kept(out: Path) -> np.ndarray:
    return np.sort(read_subset(out / "subset.npy"))


def _steps(out: Path) -> list[tuple[str, int, int, int]]:
    report = json.loads((out / "report.json").read_text())
    return [(s["op"], s["saw"], s["kept"], s["dropped"]) for s in report["steps"]]


def _csv(path: Path, pairs: list[CocoPair]) -> Path:
    """open_clip's training CSV: `filepath,title`, absolute local paths."""
    lines = ["filepath,title"] + [f'{p.path},"{p.caption}"' for p in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served by a real local HTTP server: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


IMAGE_RECIPE = """\
source: {{input: "{input}"}}
steps:
  - op: text_length
    min_words: 1
  - op: image_quality
    min_side: 50
sink: {{out: "{out}"}}
"""


def test_images_given_by_path_are_loaded(coco_pairs: list[CocoPair], tmp_path: Path) -> None:
    """Today's bug: '0 of N pairs kept, image missing_image: N'. A CSV of local paths loads every image."""
    pairs = coco_pairs[:12]
    manifest = _csv(tmp_path / "train.csv", pairs)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(IMAGE_RECIPE.format(input=manifest, out=tmp_path / "out"))
    r = _run(recipe)
    assert r.exit_code == 0, r.output
    assert "12 of 12 pairs kept" in r.stdout
    rows = _decisions(tmp_path / "out")
    assert [(r["width"], r["height"]) for r in rows] == [(p.width, p.height) for p in pairs]
    assert all(r["image_status"] == "ok" and r["keep"] for r in rows)


def test_input_flags_let_one_recipe_serve_a_dataset_with_other_column_names(
    coco_pairs: list[CocoPair], tmp_path: Path
) -> None:
    pairs = coco_pairs[:6]
    tsv = tmp_path / "other.tsv"
    tsv.write_text("photo\tdescription\n" + "".join(f"{p.path}\t{p.caption}\n" for p in pairs))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(IMAGE_RECIPE.format(input=tmp_path / "nowhere.csv", out=tmp_path / "unused"))
    args = [
        "--input",
        tsv,
        "--out",
        tmp_path / "out",
        "--image-column",
        "photo",
        "--text-column",
        "description",
    ]
    r = _run(recipe, *args)
    assert r.exit_code == 0, r.output
    assert "6 of 6 pairs kept" in r.stdout
    assert not (tmp_path / "unused").exists()
    wrong = _run(recipe, "--input", tsv, "--out", tmp_path / "out2", "--text-column", "nope")
    assert wrong.exit_code == EXIT_PARTIAL and "columns found" in wrong.output


def test_images_given_by_url_are_fetched_and_a_404_is_a_failed_pair(
    coco_pairs: list[CocoPair], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_root
    records = []
    for i, p in enumerate(coco_pairs[:6]):
        (root / f"{i}.jpg").write_bytes(p.path.read_bytes())
        records.append({"url": f"{base}/{i}.jpg", "caption": p.caption})
    records.append({"url": f"{base}/missing.jpg", "caption": "a photo that is not there"})
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(IMAGE_RECIPE.format(input=manifest, out=tmp_path / "out"))
    r = _run(recipe)
    assert r.exit_code == EXIT_PARTIAL, r.output  # a pair failed: not "all done"
    assert "6 of 7 pairs kept" in r.stdout and "1 pair(s) could not be loaded" in r.stderr
    rows = _decisions(tmp_path / "out")
    assert [r["width"] for r in rows[:6]] == [p.width for p in coco_pairs[:6]]
    bad = rows[6]
    assert not bad["keep"] and bad["dropped_by"] == "source"
    assert bad["reason"].startswith("fetch_error: HTTP 404")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failures"]["failed_pairs"] == 1
    assert _steps(tmp_path / "out")[0] == ("text_length", 6, 6, 0)  # the failed pair reached no step


def test_retry_failed_fetches_the_failed_pairs_again_and_reruns_what_depends_on_them(
    coco_pairs: list[CocoPair], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_root
    records = []
    for i, p in enumerate(coco_pairs[:5]):
        if i != 3:  # pair 3's image is not on the server yet: HTTP 404
            (root / f"{i}.jpg").write_bytes(p.path.read_bytes())
        records.append({"url": f"{base}/{i}.jpg", "caption": p.caption})
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = tmp_path / "r.yaml"
    text = IMAGE_RECIPE.format(input=manifest, out=tmp_path / "out")
    recipe.write_text(text)
    r = _run(recipe)
    assert r.exit_code == EXIT_PARTIAL and "4 of 5 pairs kept" in r.stdout
    (root / "3.jpg").write_bytes(coco_pairs[3].path.read_bytes())  # the server has it now
    again = _run(recipe)  # without the flag a finished shard is reused as it is
    assert again.exit_code == EXIT_PARTIAL and "4 of 5 pairs kept" in again.stdout
    retried = _run(recipe, "--retry-failed")
    assert retried.exit_code == 0, retried.output
    assert "5 of 5 pairs kept" in retried.stdout
    rows = _decisions(tmp_path / "out")
    assert rows[3]["keep"] and rows[3]["width"] == coco_pairs[3].width
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failures"]["failed_pairs"] == 0 and report["kept"] == 5


def _basic(tmp_path: Path, min_side: int) -> Path:
    """The shipped DataComp basic recipe with another min_side, source and sink as shipped."""
    text = (RECIPES / "datacomp_basic.yaml").read_text()
    assert "min_side: 200" in text
    path = tmp_path / f"basic_{min_side}.yaml"
    path.write_text(text.replace("min_side: 200", f"min_side: {min_side}"))
    return path


def test_a_changed_recipe_rerun_into_the_same_out_equals_a_fresh_run(
    coco_pairs: list[CocoPair], tmp_path: Path
) -> None:
    """Today's bug: min_side 200 then 500 into the same sink.out printed the 200 result with every
    step at 'saw 0'. `--input`/`--out` point the shipped recipe at this data."""
    manifest = _csv(tmp_path / "coco.csv", coco_pairs)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    r = _run(_basic(tmp_path, 200), "--input", manifest, "--out", out)
    assert r.exit_code == 0, r.output
    first = _kept(out)
    r = _run(_basic(tmp_path, 500), "--input", manifest, "--out", out)
    assert r.exit_code == 0, r.output
    assert "reused from an earlier run" not in r.stdout  # the one stage changed: it ran again
    r = _run(_basic(tmp_path, 500), "--input", manifest, "--out", fresh)
    assert r.exit_code == 0, r.output
    assert 0 < len(_kept(fresh)) < len(first)
    assert np.array_equal(_kept(out), _kept(fresh))
    assert _steps(out) == _steps(fresh) and _steps(out)[0][1] == len(coco_pairs)
    assert _decisions(out) == _decisions(fresh)

    spool = sorted((out / "stages").rglob("*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in spool]
    r = _run(_basic(tmp_path, 500), "--input", manifest, "--out", out)  # nothing changed: all reused
    assert r.exit_code == 0, r.output
    assert "reused from an earlier run (same input, steps, parameters and models): language" in r.stdout
    assert [p.stat().st_mtime_ns for p in spool] == mtimes
    assert _steps(out) == _steps(fresh)  # the counts of reused shards still count


TWO_STAGES = """\
source: {{input: "{pool}"}}
steps:
  - op: clip_score
    model: tiny-synth
    precision: fp32
  - op: top_fraction
    column: clip_score
    fraction: {fraction}
sink: {{out: "{out}"}}
"""


def test_what_did_not_change_is_reused_and_a_changed_shard_is_rerun(small_pool: Path, tmp_path: Path) -> None:
    """Changing the global step re-runs only its stage; touching one input shard re-runs that shard's
    first stage and the global stage (whose decision depends on every shard), nothing else."""
    pool = tmp_path / "pool"
    shutil.copytree(small_pool, pool)
    out = tmp_path / "out"

    def run(fraction: float, where: Path = out) -> Any:
        return run_recipe(
            load_recipe("r.yaml", text=TWO_STAGES.format(pool=pool, out=where, fraction=fraction))
        )

    run(0.5)
    scores = sorted((out / "stages" / "00").glob("*.parquet"))
    assert len(scores) == 3
    before = [p.stat().st_mtime_ns for p in scores]
    again = run(0.3)
    assert [p.stat().st_mtime_ns for p in scores] == before  # the model did not run again
    assert [(s.ran, s.reused) for s in again.stages] == [(0, 3), (3, 0)]
    fresh = run(0.3, tmp_path / "fresh")
    assert np.array_equal(_kept(out), _kept(tmp_path / "fresh")) and again.kept == fresh.kept == 90
    assert [(s.op, s.saw, s.kept, s.dropped) for s in again.steps] == [
        (s.op, s.saw, s.kept, s.dropped) for s in fresh.steps
    ]

    touched = pool / "00000001.tar"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = run(0.3)
    assert [(s.ran, s.reused) for s in third.stages] == [(1, 2), (3, 0)]
    assert [p.stat().st_mtime_ns == m for p, m in zip(scores, before, strict=True)] == [True, False, True]


def test_the_report_after_a_resume_counts_every_shard(
    small_pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's bug: after a resume the report counted only the shards of the last run."""
    from vlcurate.ops.text_ops import TextLength

    text = (
        f'source: {{input: "{small_pool}"}}\nsteps:\n  - op: text_length\n    min_words: 6\n'
        "  - op: image_quality\n    min_side: 8\n"
        "  - op: top_fraction\n    column: caption_words\n    fraction: 0.5\n"
        f'sink: {{out: "{tmp_path / "out"}"}}\n'
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    full = run_recipe(load_recipe("r.yaml", text=text.replace(str(tmp_path / "out"), str(tmp_path / "full"))))

    real = TextLength.process

    def interrupted(self: TextLength, batch: pa.Table) -> pa.Table:
        if batch.column("shard")[0].as_py() == "00000002":
            raise KeyboardInterrupt  # the user pressed ^C while the third shard ran
        return real(self, batch)

    monkeypatch.setattr(TextLength, "process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(recipe))
    assert len(list((tmp_path / "out" / "stages" / "00").glob("*.json"))) == 2  # two shards finished
    monkeypatch.setattr(TextLength, "process", real)
    r = _run(recipe)
    assert r.exit_code == 0, r.output
    assert "ran 1, reused 2 shards" in r.stdout
    want = [(s.op, s.saw, s.kept, s.dropped) for s in full.steps]
    assert _steps(tmp_path / "out") == want and want[0][1] == 300
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["rows"], report["kept"]) == (full.rows, full.kept)
    assert np.array_equal(_kept(tmp_path / "out"), _kept(tmp_path / "full"))


def _clip_recipe(pool: Path, out: Path, order: str, cut: str) -> str:
    steps = {
        "text": "  - op: text_length\n    min_words: 6\n",
        "clip": "  - op: clip_score\n    model: tiny-synth\n    precision: fp32\n",
    }
    body = "".join(steps[s] for s in order.split(","))
    return f'source: {{input: "{pool}"}}\nsteps:\n{body}{cut}sink: {{out: "{out}"}}\n'


@pytest.mark.parametrize(
    "cut",
    [
        "  - op: score_threshold\n    min: 0.1\n",
        "  - op: top_fraction\n    fraction: 0.3\n    among: kept\n",
        "  - op: top_fraction\n    fraction: 0.3\n    among: all\n",  # ranks every pair: all scored
    ],
    ids=["threshold", "top-kept", "top-all"],
)
def test_model_steps_skip_rows_an_earlier_step_dropped(small_pool: Path, tmp_path: Path, cut: str) -> None:
    late = run_recipe(load_recipe("r", text=_clip_recipe(small_pool, tmp_path / "late", "text,clip", cut)))
    early = run_recipe(load_recipe("r", text=_clip_recipe(small_pool, tmp_path / "early", "clip,text", cut)))
    assert np.array_equal(_kept(tmp_path / "late"), _kept(tmp_path / "early"))  # the kept set is the same
    assert 0 < late.kept == early.kept < late.rows == 300
    rows = _decisions(tmp_path / "late")
    dropped = [r for r in rows if r["dropped_by"] == "text_length"]
    assert dropped and all(r["reason"].startswith("words<") for r in dropped)
    scored = {r["uid"]: r["clip_score"] for r in _decisions(tmp_path / "early")}
    if "among: all" in cut:  # a later step reads the scores of dropped rows: nothing is skipped
        assert all(r["clip_score_status"] == "ok" for r in rows)
    else:
        assert all(np.isnan(r["clip_score"]) for r in dropped)
        assert {r["clip_score_status"] for r in dropped} == {"not scored: dropped by text_length"}
    for r in rows:
        if r["clip_score_status"] == "ok":
            assert abs(r["clip_score"] - scored[r["uid"]]) < 1e-5


def test_run_errors_are_one_line_and_check_finds_them_before_anything_runs(
    small_pool: Path, tmp_path: Path
) -> None:
    def recipe(name: str, steps: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f'source: {{input: "{small_pool}"}}\nsteps:\n{steps}sink: {{out: "{tmp_path / name}"}}\n'
        )
        return path

    def one_line(r: Any, *needles: str) -> None:
        """Exit 2 and one `error:` line, the last one (a progress bar may come before it)."""
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and "pairs kept" not in r.stdout
        lines = r.stderr.strip().splitlines()
        assert [ln for ln in lines if "error:" in ln] == lines[-1:], r.stderr
        assert all(n in lines[-1] for n in needles), lines[-1]

    weights = recipe(
        "weights", "  - op: text_length\n    min_words: 2\n  - op: clip_score\n    model: openai-b32\n"
    )
    one_line(_run(weights, "--check"), "step 2 (clip_score)", "vlcurate models download openai-b32")
    one_line(_run(weights), "step 2 (clip_score) failed to set up", "vlcurate models download openai-b32")
    assert not (tmp_path / "weights" / "stages" / "00").exists() or not any(
        (tmp_path / "weights" / "stages" / "00").iterdir()
    )

    head = recipe(
        "head",
        "  - op: clip_score\n    model: tiny-synth\n    embeddings: true\n"
        f"  - op: linear_head\n    weights: {tmp_path / 'nowhere.npz'}\n",
    )
    one_line(_run(head, "--check"), "step 2 (linear_head)", "head weights not found", "nowhere.npz")

    targets = recipe(
        "targets",
        "  - op: clip_score\n    model: tiny-synth\n    embeddings: true\n"
        f"  - op: image_cluster_filter\n    targets: {tmp_path / 'targets.npy'}\n    n_clusters: 4\n",
    )
    one_line(_run(targets, "--check"), "step 2 (image_cluster_filter)", "targets.npy")
    one_line(_run(targets), "step 2 (image_cluster_filter) failed to decide", "targets.npy")

    plugin = recipe(
        "plugin", "  - op: hallucination\n    field: text\n    mentions: no_such_module:extract\n"
    )
    one_line(_run(plugin, "--check"), "step 1 (hallucination)", "no_such_module")
    one_line(_run(plugin), "step 1 (hallucination)", "no_such_module")

    columns = tmp_path / "columns.csv"  # no column a caption could be in
    columns.write_text("picture,words\na.jpg,hello\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        f'source: {{input: "{columns}"}}\nsteps:\n  - op: text_length\n    min_words: 2\n'
        f'sink: {{out: "{tmp_path / "wrong"}"}}\n'
    )
    one_line(_run(wrong, "--check"), "source: shard columns", "caption column", "['picture', 'words']")

    good = recipe(
        "good", "  - op: text_length\n    min_words: 2\n  - op: clip_score\n    model: tiny-synth\n"
    )
    r = _run(good, "--check")
    assert r.exit_code == 0 and "valid (2 steps" in r.stdout
    assert not (tmp_path / "good").exists()  # --check ran nothing


def test_exit_codes(small_pool: Path, tmp_path: Path) -> None:
    """0 all done; EXIT_PARTIAL when a shard broke (its rows before the break are kept); 2 usage."""
    pool = tmp_path / "pool"
    shutil.copytree(small_pool, pool)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f'source: {{input: "{pool}"}}\nsteps:\n  - op: text_length\n    min_words: 2\n'
        f'sink: {{out: "{tmp_path / "out"}"}}\n'
    )
    assert _run(recipe).exit_code == 0
    broken = pool / "00000002.tar"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # cut short mid-member
    r = _run(recipe)
    assert r.exit_code == EXIT_PARTIAL, r.output
    assert "shard 00000002 failed" in r.stderr and "Traceback" not in r.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["failures"]["failed_shards"]) == ["00000002"] and 200 < report["rows"] < 300
    assert _run(recipe, "--engine", "spark").exit_code == 2
    assert _run(recipe, "--num-cpus", "2").exit_code == 2
    assert _run(tmp_path / "nowhere.yaml").exit_code == 2


CLIP_RECIPE = """\
source: {{input: "{input}"}}
steps:
  - op: clip_score
    model: tiny-synth
sink: {{out: "{out}"}}
"""


def test_tiny_synth_on_photos_warns_once_and_on_the_synthetic_world_not(
    coco_pairs: list[CocoPair], small_pool: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos.yaml"
    photos.write_text(CLIP_RECIPE.format(input=_csv(tmp_path / "p.csv", coco_pairs[:40]), out=tmp_path / "a"))
    r = _run(photos)
    assert r.exit_code == 0, r.output
    assert r.output.count("warning: clip_score: tiny-synth knows only") == 1
    scenes = tmp_path / "scenes.yaml"
    scenes.write_text(CLIP_RECIPE.format(input=small_pool, out=tmp_path / "b"))
    r = _run(scenes)
    assert r.exit_code == 0, r.output
    assert "tiny-synth knows only" not in r.output

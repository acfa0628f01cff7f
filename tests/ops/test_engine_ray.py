"""The Ray engine gives the local engine's outputs, runs on 2 CPUs without hanging, and fails clearly."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.io.subset import read_subset
from vlcurate.ops.engine_local import RunResult, run_recipe
from vlcurate.ops.recipe import load_recipe

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

from vlcurate.ops.engine_ray import RayEngineError, run_recipe_ray  # noqa: E402 - after the skip

STEPS = """\
  - op: clip_score
    model: tiny-synth
    precision: fp32
  - op: score_threshold
    column: clip_score
    min: -0.5
  - op: top_fraction
    column: clip_score
    fraction: 0.5
"""


def _recipe(pool: Path, out: Path, steps: str = STEPS) -> str:
    return f'source: {{input: "{pool}"}}\nsteps:\n{steps}sink: {{out: "{out}"}}\n'


@pytest.fixture(scope="module")
def ray_2cpu() -> Iterator[None]:
    """One local Ray instance with 2 CPUs for the module, as on the smallest machine we support."""
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _with_timeout(fn: Any, seconds: float) -> Any:
    """Run `fn` in a thread; fail (instead of hanging the suite) when it does not finish in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds:.0f} s (Ray Data hang?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def both_runs(
    ray_2cpu: None, small_pool: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, RunResult]:
    tmp = tmp_path_factory.mktemp("engines")
    local = run_recipe(load_recipe("r.yaml", text=_recipe(small_pool, tmp / "local")))
    remote = _with_timeout(
        lambda: run_recipe_ray(load_recipe("r.yaml", text=_recipe(small_pool, tmp / "ray")), progress=False),
        120,
    )
    return local, remote


def _decisions(run: Path) -> dict[str, Any]:
    return {f.name: pq.read_table(f) for f in sorted((run / "decisions").glob("*.parquet"))}


def _nan_as_text(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_nan_as_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_as_text(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Same columns, types, rows and values; NaN (a pair not scored) equals NaN, unlike `Table.equals`."""
    return bool(a.schema == b.schema and _nan_as_text(a.to_pylist()) == _nan_as_text(b.to_pylist()))


def test_ray_and_local_give_identical_kept_sets_and_decisions(both_runs: tuple[RunResult, RunResult]) -> None:
    local, remote = both_runs
    assert (remote.rows, remote.kept) == (local.rows, local.kept) == (300, 150)
    assert np.array_equal(read_subset(remote.subset), read_subset(local.subset))  # type: ignore[arg-type]
    ours, ref = _decisions(remote.out), _decisions(local.out)
    assert list(ours) == list(ref) and len(ref) == 3
    for name, table in ref.items():
        cols = ["uid", "keep", "reason"]
        assert ours[name].select(cols).to_pylist() == table.select(cols).to_pylist(), name
        assert _same(ours[name], table), name  # same rows, order, columns, types and scores
    counts = [(s.op, s.saw, s.kept, s.dropped) for s in local.steps]
    assert [(s.op, s.saw, s.kept, s.dropped) for s in remote.steps] == counts
    report = json.loads((remote.out / "report.json").read_text())
    assert report["kept"] == 150 and [s["op"] for s in report["steps"]] == [c[0] for c in counts]


def test_cli_engine_ray_resumes_a_finished_run(
    both_runs: tuple[RunResult, RunResult], small_pool: Path
) -> None:
    _, remote = both_runs
    spools = sorted((remote.out / "stages").rglob("*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in spools]
    recipe = remote.out.parent / "again.yaml"
    recipe.write_text(_recipe(small_pool, remote.out))
    r = CliRunner().invoke(app, ["run", str(recipe), "--engine", "ray"])
    assert r.exit_code == 0, r.output
    assert "150 of 300 pairs kept" in r.stdout
    assert [p.stat().st_mtime_ns for p in spools] == mtimes  # every stage and shard was done: reused


def test_model_actors_and_read_tasks_share_two_cpus_without_hanging(
    ray_2cpu: None, small_pool: Path, tmp_path: Path
) -> None:
    assert ray.cluster_resources()["CPU"] == 2
    steps = STEPS.split("  - op: top_fraction")[0]  # one stage: model actor pool + CPU task
    rec = load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "run", steps))
    result = _with_timeout(lambda: run_recipe_ray(rec, progress=False), 90)
    assert result.rows == 300 and result.steps[0].saw == 300


def test_a_failing_step_names_the_step_and_the_cause(
    ray_2cpu: None, small_pool: Path, tmp_path: Path
) -> None:
    bad = STEPS.replace("model: tiny-synth", "model: no-such-model")
    rec = load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "run", bad))
    with pytest.raises(RayEngineError) as info:
        _with_timeout(lambda: run_recipe_ray(rec, progress=False), 90)
    message = str(info.value)
    assert message.startswith("step 1 (clip_score) failed to set up: UnknownModelError: unknown model")
    assert "Traceback" not in message and "\n" not in message
    assert not (tmp_path / "run" / "subset.npy").exists()


def test_without_ray_installed_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, small_pool: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rec = load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "run"))
    with pytest.raises(RayEngineError, match=r"pip install 'ray\[data\]'"):
        run_recipe_ray(rec)
    r = CliRunner().invoke(app, ["run", str(_write(tmp_path / "r.yaml", rec)), "--engine", "ray"])
    assert r.exit_code == 2 and "needs Ray Data" in r.stderr


def _write(path: Path, rec: Any) -> Path:
    path.write_text(_recipe(Path(rec.source.input), Path(rec.sink.out)))
    return path


def test_rows_a_retried_task_sends_twice_are_written_and_counted_once(tmp_path: Path) -> None:
    """A worker killed mid-shard makes Ray repeat its task: the spool and the counts must not change."""
    import pyarrow as pa

    from vlcurate.io.shards import ShardRef
    from vlcurate.ops.engine import Stage
    from vlcurate.ops.engine_ray import _Collector, _tag
    from vlcurate.ops.registry import get_operator

    def batch(uids: list[str], keep: list[bool]) -> pa.Table:
        reasons = pa.array([None if k else "x" for k in keep], pa.string())
        return pa.table({"uid": uids, "keep": keep, "reason": reasons})

    first = _tag(batch(["a", "b"], [True, False]), 0, 0, 0, False, [0])
    second = _tag(batch(["c"], [True]), 0, 1, 2, True, [0], "cut short")
    stage = Stage(0, [(0, get_operator("text_length")())], "fp", tmp_path, shard_fps={"s": "fp-s"})
    c = _Collector(stage, [ShardRef("s.tar", "s", "wds")], [0])
    c.add(first)
    c.add(first)  # the repeat, before the shard is complete
    c.add(pa.concat_tables([first.slice(1), second]))  # part repeat, part new, in one block
    c.add(second)  # after the shard was written
    c.close([0], lambda shard: None)
    written = pq.read_table(tmp_path / "s.parquet")
    assert written.column("uid").to_pylist() == ["a", "b", "c"]
    assert not any(name.startswith("_vlc_") for name in written.column_names)
    marker = json.loads((tmp_path / "s.json").read_text())
    assert marker["fingerprint"] == "fp-s" and marker["error"] == "cut short" and marker["rows"] == 3
    st = marker["steps"][0]
    assert (st["op"], st["saw"], st["kept"], st["dropped"]) == ("text_length", 2, 2, 0)  # "b": dropped before


def test_a_worker_killed_mid_run_changes_nothing(ray_2cpu: None, tmp_path: Path) -> None:
    """SIGKILL the model actor after the first shard is written: Ray restarts it, and the kept set
    is still the local engine's."""
    import psutil

    from vlcurate.synth.pool import write_pool

    write_pool(tmp_path / "pool", 2400, corrupt_fraction=0.3, seed=3, shard_size=300)
    shards = tmp_path / "pool" / "shards"
    box: dict[str, Any] = {}
    out = tmp_path / "ray"
    t = threading.Thread(
        target=lambda: box.setdefault(
            "r", run_recipe_ray(load_recipe("r", text=_recipe(shards, out)), progress=False)
        )
    )
    t.start()
    killed = []
    deadline = time.monotonic() + 120
    while not killed and t.is_alive() and time.monotonic() < deadline:
        written = list((out / "stages" / "00").glob("*.parquet")) if (out / "stages" / "00").exists() else []
        if written:
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if cmd.startswith("ray::") and "_ModelActor" in cmd:
                    p.kill()
                    killed.append(cmd)
                    break
        time.sleep(0.2)
    t.join(300)
    assert killed, "the model actor was never seen running"
    assert not t.is_alive() and "r" in box
    local = run_recipe(load_recipe("r", text=_recipe(shards, tmp_path / "local")))
    assert np.array_equal(np.sort(read_subset(box["r"].subset)), np.sort(read_subset(local.subset)))
    assert box["r"].rows == local.rows == 2400


def test_cpu_steps_run_in_the_read_task_or_the_model_actor_before_them() -> None:
    """Every `map_batches` boundary copies rows through the object store: no stage gets more of them
    than one read plus one per model step."""
    from vlcurate.ops.engine_ray import _segments
    from vlcurate.ops.registry import get_operator

    def op(name: str, **params: Any) -> Any:
        cls = get_operator(name)
        return cls(cls.Params(**params))

    stage = list(
        enumerate(
            [
                op("text_length", min_words=2),
                op("clip_score", model="tiny-synth"),
                op("score_threshold", min=0.1),
                op("clip_score", model="tiny-synth", column="other"),
            ]
        )
    )
    lead, groups = _segments(stage)
    assert [i for i, _ in lead] == [0]
    assert [[i for i, _ in g] for g in groups] == [[1, 2], [3]]
    assert _segments(stage[:1]) == (stage[:1], [])


def test_cpu_steps_before_and_after_the_model_give_the_local_engines_decisions(
    ray_2cpu: None, small_pool: Path, tmp_path: Path
) -> None:
    steps = "  - op: text_length\n    min_words: 5\n" + STEPS.split("  - op: top_fraction")[0]
    local = run_recipe(load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "local", steps)))
    rec = load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "ray", steps))
    remote = _with_timeout(lambda: run_recipe_ray(rec, progress=False), 120)
    assert local.steps[0].dropped > 0 and 0 < local.kept < local.rows == remote.rows == 300
    ours, ref = _decisions(remote.out), _decisions(local.out)
    assert list(ours) == list(ref)
    for name, table in ref.items():
        assert _same(ours[name], table), name
    counts = [(s.op, s.saw, s.kept, s.dropped) for s in local.steps]
    assert [(s.op, s.saw, s.kept, s.dropped) for s in remote.steps] == counts
    status = [s for t in ours.values() for s in t.column("clip_score_status").to_pylist()]
    assert (
        status.count("not scored: dropped by text_length") == local.steps[0].dropped
    )  # the model skipped them


def test_read_tasks_ask_for_a_whole_cpu_beside_the_model_actor_on_two_cpus(ray_2cpu: None) -> None:
    from vlcurate.ops.engine_ray import _ACTOR_CPUS, _read_cpus

    assert _read_cpus(ray) == 1.0 and _read_cpus(ray) + _ACTOR_CPUS <= ray.cluster_resources()["CPU"]


def test_ray_loads_images_by_path_and_reports_failed_pairs_like_local(
    ray_2cpu: None, coco_pairs: list[Any], tmp_path: Path
) -> None:
    lines = ["filepath,title"] + [f'{p.path},"{p.caption}"' for p in coco_pairs[:10]]
    lines.append(f"{tmp_path / 'gone.jpg'},a photo that was deleted")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    steps = "  - op: text_length\n    min_words: 1\n  - op: image_quality\n    min_side: 50\n"
    local = run_recipe(load_recipe("r", text=_recipe(tmp_path / "m.csv", tmp_path / "local", steps)))
    rec = load_recipe("r", text=_recipe(tmp_path / "m.csv", tmp_path / "ray", steps))
    remote = _with_timeout(lambda: run_recipe_ray(rec, progress=False), 120)
    assert (
        (remote.rows, remote.kept, remote.failed_pairs)
        == (local.rows, local.kept, local.failed_pairs)
        == (
            11,
            10,
            1,
        )
    )
    ours, ref = _decisions(remote.out), _decisions(local.out)
    for name, table in ref.items():
        assert _same(ours[name], table), name
    assert ref["m.parquet"].column("reason").to_pylist()[-1].startswith("fetch_error: not found")


def test_ray_reruns_only_what_changed(ray_2cpu: None, small_pool: Path, tmp_path: Path) -> None:
    def steps(fraction: float) -> str:
        return STEPS.replace("fraction: 0.5", f"fraction: {fraction}")

    out = tmp_path / "ray"
    _with_timeout(
        lambda: run_recipe_ray(load_recipe("r", text=_recipe(small_pool, out, steps(0.5))), progress=False),
        120,
    )
    spool = sorted((out / "stages" / "00").glob("*.parquet"))
    before = [p.stat().st_mtime_ns for p in spool]
    again = _with_timeout(
        lambda: run_recipe_ray(load_recipe("r", text=_recipe(small_pool, out, steps(0.3))), progress=False),
        120,
    )
    assert [p.stat().st_mtime_ns for p in spool] == before
    assert [(s.ran, s.reused) for s in again.stages] == [(0, 3), (3, 0)]
    fresh = run_recipe(load_recipe("r", text=_recipe(small_pool, tmp_path / "local", steps(0.3))))
    assert np.array_equal(read_subset(again.subset), read_subset(fresh.subset))  # type: ignore[arg-type]
    assert [(s.op, s.saw, s.kept, s.dropped) for s in again.steps] == [
        (s.op, s.saw, s.kept, s.dropped) for s in fresh.steps
    ]


def test_broken_and_missing_shards_fail_alike_on_both_engines(
    ray_2cpu: None, small_pool: Path, tmp_path: Path
) -> None:
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(small_pool, pool)
    broken = pool / "00000002.tar"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    spec = f"{pool}/{{00000000..00000003}}.tar"  # 00000003 does not exist
    steps = "  - op: text_length\n    min_words: 2\n"
    local = run_recipe(load_recipe("r", text=_recipe(Path(spec), tmp_path / "local", steps)))
    rec = load_recipe("r", text=_recipe(Path(spec), tmp_path / "ray", steps))
    remote = _with_timeout(lambda: run_recipe_ray(rec, progress=False), 120)
    assert sorted(local.failed_shards) == sorted(remote.failed_shards) == ["00000002", "00000003"]
    assert remote.failed_shards == local.failed_shards and remote.partial
    assert (remote.rows, remote.kept) == (local.rows, local.kept) and 200 < local.rows < 300
    ours, ref = _decisions(remote.out), _decisions(local.out)
    assert list(ours) == list(ref)
    for name, table in ref.items():
        assert _same(ours[name], table), name

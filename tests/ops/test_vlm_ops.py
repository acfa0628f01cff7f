"""The model-based Data Metabolism operators against the real tiny-synth VLM server and scorer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.platform_live import free_port
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.ops.base import keep_mask
from vlcurate.ops.recipe import load_recipe
from vlcurate.ops.vlm_ops import (
    BlindAnswerable,
    BlindParams,
    CotParams,
    CotRewrite,
    Hallucination,
    HallucinationParams,
    QuestionRelevance,
    RelevanceParams,
    bare_question,
)
from vlcurate.synth.caption import Caption, Phrase
from vlcurate.synth.instruct_data import write_planted
from vlcurate.synth.instruct_eval import TARGETS, precision_recall
from vlcurate.synth.qa import _absent_pair
from vlcurate.synth.scene import scene_from_seed
from vlcurate.vlm.prompts import ANSWER_LINE, final_answer, normalize_answer

SEED = 3
STEPS_TARGETS = {**TARGETS, "blind_answerable": ("blind_answerable",), "hallucination": ("hallucination",)}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("instruct")
    write_planted(out, 110, seed=SEED, fault_rate=0.5)
    return out


@pytest.fixture(scope="module")
def vlm() -> Iterator[VLMServer]:
    with VLMServer() as server:
        yield server


def _recipe(data: Path, out: Path, steps: str) -> str:
    return (
        f"source: {{input: '{data / 'data.json'}', kind: instruct}}\n"
        f"steps:\n{steps}\n"
        f"sink: {{out: '{out}', instruct_format: llava}}\n"
    )


def _run(text: str, where: Path) -> list[dict[str, object]]:
    path = where / "recipe.yaml"
    path.write_text(text)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    out = Path(load_recipe(path).sink.out)
    return pa.concat_tables(
        [pq.read_table(p) for p in sorted((out / "decisions").glob("*.parquet"))]
    ).to_pylist()


def _truth(data: Path) -> dict[str, str | None]:
    return {r["uid"]: r["fault"] for r in map(json.loads, (data / "truth.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_full_chain_recipe_catches_each_planted_fault(data: Path, vlm: VLMServer, tmp_path: Path) -> None:
    server = f"{{base_url: '{vlm.base_url}', max_concurrency: 8}}"
    steps = (
        "  - op: instruct_repetition\n  - op: teacher_behaviour\n  - op: answer_agreement\n"
        f"  - op: blind_answerable\n    vlm: {server}\n"
        "  - op: hallucination\n    model: tiny-synth\n"
        f"  - op: cot_rewrite\n    vlm: {server}\n"
    )
    rows = _run(_recipe(data, tmp_path / "out", steps), tmp_path)
    truth = _truth(data)
    decisions = [
        {
            **r,
            "reason": str(r["reason"]).split(":")[0]
            if str(r["reason"]).startswith("hallucination:")
            else r["reason"],
        }
        for r in rows
    ]
    pr = precision_recall(decisions, truth, STEPS_TARGETS)
    for step in ("blind_answerable", "hallucination"):
        assert pr[step]["planted"] > 3, pr
        assert pr[step]["precision"] >= 0.9 and pr[step]["recall"] >= 0.9, (step, pr[step])
    statuses = [str(r["cot_status"]) for r in rows if r["cot_status"] is not None]
    assert statuses and {s.split(":")[0] for s in statuses} <= {"ok", "mismatch", "error"}
    ok = [r for r in rows if r["cot_status"] == "ok"]
    assert len(ok) >= len(statuses) // 2  # most rewrites agree with the short answer
    for r in ok:
        assert r["keep"]
        short = json.loads(str(r["meta"]))["short_answer"]
        cot = json.loads(str(r["messages_cot"]))
        assert final_answer(cot[1]["content"]) == short and cot[0] == json.loads(str(r["messages"]))[0]
    assert all(r["messages_cot"] is None for r in rows if r["cot_status"] != "ok")
    assert not any(str(r["cot_status"]).startswith("error") for r in rows if r["cot_status"])
    written = json.loads((tmp_path / "out" / "kept.json").read_text())  # the sink keeps both versions
    twins = [s for s in written if str(s["id"]).endswith("-cot")]
    assert len(twins) == len(ok) and len(written) == sum(bool(r["keep"]) for r in rows) + len(ok)


def _batch(data: Path, n: int = 40) -> pa.Table:
    """The first n samples as the instruct source gives them."""
    from vlcurate.io.sources import open_source
    from vlcurate.ops.engine import load_batches

    src = open_source(str(data / "data.json"), kind="instruct")
    return next(iter(load_batches(src, src.shards()[0], None))).slice(0, n)


def test_blind_answerable_keeps_samples_when_the_server_is_gone(data: Path) -> None:
    dead = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0, "timeout_s": 2}
    op = BlindAnswerable(BlindParams(vlm=dead, answer_in_question=False))  # type: ignore[arg-type]
    out = op.process(_batch(data))
    asked = [s for s in out.column("blind_status").to_pylist() if s is not None]
    assert asked and all(s.startswith("error:") for s in asked)
    assert keep_mask(out).all()  # a failed call never drops a sample


@pytest.mark.slow
def test_cot_rewrite_when_json_fails_or_answers_are_broken(data: Path, vlm: VLMServer) -> None:
    batch = _batch(data, 16)
    # JSON asked in the prompt of a server that only writes JSON for `response_format`: every answer
    # fails validation, and the operator asks again in plain text.
    no_json = {"base_url": vlm.base_url, "structured_output": "prompt", "max_answer_retries": 0}
    out = CotRewrite(CotParams(vlm=no_json)).process(batch)  # type: ignore[arg-type]
    assert "ok" in out.column("cot_status").to_pylist()
    plain = CotRewrite(CotParams(vlm={"base_url": vlm.base_url}, structured=False)).process(batch)  # type: ignore[arg-type]
    for s, cot in zip(
        plain.column("cot_status").to_pylist(), plain.column("messages_cot").to_pylist(), strict=True
    ):
        if s == "ok":
            assert json.loads(cot)[1]["content"].splitlines()[-1].startswith(ANSWER_LINE)
    with VLMServer(["--faults", "malformed=0.5,empty=0.5"]) as broken:
        params = CotParams(
            vlm={"base_url": broken.base_url, "max_retries": 1, "max_answer_retries": 0, "backoff_base_s": 0}
        )  # type: ignore[arg-type]
        bad = CotRewrite(params).process(batch)
    statuses = [s for s in bad.column("cot_status").to_pylist() if s is not None]
    assert statuses and all(s.startswith("error:") for s in statuses)
    assert bad.column("messages_cot").null_count == bad.num_rows and bad.num_rows == batch.num_rows


def test_hallucination_on_captions_finds_the_extra_object() -> None:
    images, texts, extra = [], [], []
    for i in range(30):
        scene = scene_from_seed(9, i)
        images.append(scene.encode("jpg"))
        if i % 2:
            c, s = _absent_pair(scene.layout, np.random.default_rng(i))
            phrase = Phrase(1, c, s)
            texts.append(Caption((*scene.caption.phrases, phrase), 0).text)
            extra.append(phrase.text)
        else:
            texts.append(scene.caption_text)
            extra.append(None)
    texts.append("a photo")  # no mention: kept, chair_i null
    images.append(images[0])
    extra.append(None)
    batch = pa.table(
        {"uid": [str(i) for i in range(31)], "text": texts, "image": pa.array(images, pa.binary())}
    )
    out = Hallucination(HallucinationParams(field="text")).process(batch)
    reasons = out.column("reason").to_pylist()
    found = sum(r == f"hallucination:{e}" for r, e in zip(reasons, extra, strict=True) if e)
    false_alarms = sum(r is not None for r, e in zip(reasons, extra, strict=True) if e is None)
    assert found >= 14 and false_alarms <= 1, (found, false_alarms)
    flagged = [h for h, e in zip(out.column("hallucinated").to_pylist(), extra, strict=True) if e]
    assert sum(len(h or []) for h in flagged) <= found + 2  # true neighbours are not blamed too
    assert out.column("chair_i").to_pylist()[-1] is None and reasons[-1] is None
    assert all(0 < c <= 1 for c, r in zip(out.column("chair_i").to_pylist(), reasons, strict=True) if r)
    with pytest.raises(ValueError, match="unknown mention extractor"):
        Hallucination(HallucinationParams(mentions="coco"))


def test_question_relevance_scores_questions_and_keeps_unscorable_rows(data: Path) -> None:
    batch = _batch(data, 20)
    out = QuestionRelevance(RelevanceParams(min_score=-1.0)).process(batch)
    scores = np.asarray(out.column("question_score").to_numpy(zero_copy_only=False))
    assert np.isfinite(scores).all() and keep_mask(out).all()
    strict = QuestionRelevance(RelevanceParams(min_score=1.0)).process(batch)
    assert set(strict.column("reason").to_pylist()) == {"question_unrelated"}
    broken = batch.set_column(
        batch.column_names.index("image"), "image", pa.array([b"junk"] * 20, pa.binary())
    )
    kept = QuestionRelevance(RelevanceParams(min_score=1.0)).process(broken)
    assert keep_mask(kept).all()  # no image to judge by: not dropped


def test_question_helpers() -> None:
    q = "<image>\nWhat shape is the pink object?\nA. triangle\nB. circle\nAnswer with the option's letter."
    assert bare_question(q) == "What shape is the pink object?"
    assert bare_question("How many? Answer the question using a single word or number.") == "How many?"
    assert normalize_answer("Three.") == "3"

"""What the tiny-synth VLM says is mostly true: captions, repairs, fusions, answers, abstentions, CoT."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from tests.offline_vlm.helpers import content, data_url
from tests.vlm_live import VLMServer

from vlcurate.synth import caption_is_true, corrupt, iter_scenes
from vlcurate.synth.parse import parse_caption
from vlcurate.vlm import prompts as vp

SCENES = list(iter_scenes(16, seed=2024))


def _true(scene: object, text: str) -> bool:
    cap = parse_caption(text)
    return cap is not None and caption_is_true(scene.layout, cap)  # type: ignore[attr-defined]


def test_captions_mostly_true_and_detailed_names_background(vlm_server: VLMServer) -> None:
    ok = 0
    for scene in SCENES:
        ok += _true(scene, content(vlm_server, vp.caption_prompt(), data_url(scene)))
    assert ok / len(SCENES) >= 0.5
    scene = SCENES[0]
    detailed = content(vlm_server, vp.caption_prompt("detailed"), data_url(scene))
    assert detailed.endswith(f"on a {scene.background} background")
    short = content(vlm_server, vp.caption_prompt("detailed", max_words=4), data_url(scene))
    assert len(short.split()) <= max(4, len(parse_caption(detailed).phrases[0].text.split()))  # type: ignore[union-attr]


def test_rewrite_repairs_one_fact_corruptions(vlm_server: VLMServer) -> None:
    fixed, n = 0, 0
    for i, scene in enumerate(SCENES):
        rng = np.random.default_rng(i)
        for kind in ("wrong_colour", "wrong_count", "wrong_shape"):
            bad = corrupt(kind, scene.caption, scene.layout, rng)
            out = content(vlm_server, vp.rewrite_prompt(bad.text, 0.5, "may be wrong"), data_url(scene))
            fixed += _true(scene, out)
            n += 1
    assert fixed / n >= 0.7


def test_fuse_drops_hallucinated_phrase_and_keeps_true(vlm_server: VLMServer) -> None:
    kept = 0
    for scene in SCENES[:8]:
        fake = "a green cross" if "cross" not in scene.caption_text else "a pink circle"
        out = content(vlm_server, vp.fuse_prompt(scene.caption_text, fake), data_url(scene))
        kept += _true(scene, out)
    assert kept >= 5


def test_qa_accuracy_per_kind(vlm_server: VLMServer) -> None:
    right, total = Counter[str](), Counter[str]()
    for scene in SCENES:
        for q in scene.qa:
            a = content(vlm_server, vp.question_prompt(q.question), data_url(scene))
            right[q.kind] += vp.normalize_answer(a) == q.answer
            total[q.kind] += 1
    acc = {k: right[k] / total[k] for k in total}
    assert acc["count"] >= 0.7 and acc["exists"] >= 0.75 and acc["colour"] >= 0.6 and acc["shape"] >= 0.5, acc


def test_multiple_choice_answers_with_a_letter(vlm_server: VLMServer) -> None:
    scene = SCENES[1]
    q = scene.qa[-1]  # background colour
    choices = ["black", "gray", "white"]
    letter = content(vlm_server, vp.question_prompt(q.question, choices), data_url(scene))
    assert letter == "ABC"[choices.index(q.answer)]


def test_blind_questions_abstain_unless_self_answering(vlm_server: VLMServer) -> None:
    for scene in SCENES[:4]:
        for q in scene.qa:
            assert content(vlm_server, vp.question_prompt(q.question)) == vp.CANNOT_TELL
    assert content(vlm_server, vp.question_prompt("What colour is the red star?")) == "red"
    assert content(vlm_server, vp.question_prompt("What colour is the blue circle?")) == "blue"
    assert content(vlm_server, vp.caption_prompt()) == vp.CANNOT_TELL


def test_cot_ends_with_the_models_own_answer(vlm_server: VLMServer) -> None:
    scene = SCENES[2]
    q = scene.qa[0]
    own = content(vlm_server, vp.question_prompt(q.question), data_url(scene))
    text = content(vlm_server, vp.cot_prompt(q.question, "7"), data_url(scene))  # a wrong short answer
    assert text.startswith("I see ") and vp.final_answer(text) == own
    fmt = {"type": "json_schema", "json_schema": {"name": "cot", "schema": vp.COT_SCHEMA, "strict": True}}
    out = json.loads(
        content(vlm_server, vp.cot_prompt(q.question, "7"), data_url(scene), response_format=fmt)
    )
    assert out["answer"] == own


def test_generic_prompt_gets_a_caption(vlm_server: VLMServer) -> None:
    scene = SCENES[0]
    generic = content(vlm_server, "Describe this picture please", data_url(scene))
    assert generic == content(vlm_server, vp.caption_prompt(), data_url(scene))

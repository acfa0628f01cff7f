"""Validated hard examples out: every untainted flag that independent players confirmed, as
instruction data for fine-tuning (image, question, corrected answer) and preference data (the
model's wrong answer as `rejected`, for DPO), with the author's reliability, the validation counts
and the origin (human or agent), split into train and eval so that no image, and no near-duplicate
of one (perceptual hash within `near_dup_bits`), is on both sides; and a dataset card.

Flags on tainted images are not exported: there the model was told to be wrong, so they measure the
players, not the model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from vlcurate.base.atomic import write_text_atomic
from vlcurate.base.images import hamming
from vlcurate.io.instruct.model import ImageData, InstructSample, Message
from vlcurate.io.instruct.writer import InstructWriter
from vlcurate.server import db
from vlcurate.server.game import judging
from vlcurate.server.game.pools import game_by_name

FORMATS = ("llava", "sharegpt", "openai")
_TYPES = (
    ("count", re.compile(r"\bhow many\b|\bcount\b|\bnumber of\b", re.I)),
    ("colour", re.compile(r"\bcolou?rs?\b", re.I)),
    ("shape", re.compile(r"\bshapes?\b", re.I)),
    ("position", re.compile(r"\b(left|right|above|below|top|bottom|where|behind|front)\b", re.I)),
    ("existence", re.compile(r"^\s*(is|are) there\b", re.I)),
    ("text", re.compile(r"\b(say|written|text|read|word|letters?)\b", re.I)),
    ("yes/no", re.compile(r"^\s*(is|are|does|do|can|has|have|was|were)\b", re.I)),
)


def question_type(question: str) -> str:
    for name, pattern in _TYPES:
        if pattern.search(question):
            return name
    return "other"


@dataclass
class Example:
    flag_id: str
    image_uid: str
    image: bytes
    ext: str | None
    phash: int
    question: str
    wrong_answer: str
    corrected: str | None
    origin: str
    detection: float
    false_alarm: float
    posterior: float | None
    votes_wrong: int
    votes_right: int
    question_type: str
    vlm_verdicts: list[dict[str, Any]] = field(default_factory=list)


def collect(conn: Connection, game_id: int) -> list[Example]:
    F, Q, SI, S, Im, P, R, J = (
        db.game_flags,
        db.game_questions,
        db.game_session_images,
        db.game_sessions,
        db.game_images,
        db.game_players,
        db.game_reliability,
        db.game_judgements,
    )
    rows = conn.execute(
        select(
            F.c.id,
            F.c.public_id,
            F.c.corrected,
            F.c.posterior,
            F.c.votes_wrong,
            F.c.votes_right,
            Q.c.text,
            Q.c.answer,
            Im.c.uid,
            Im.c.data,
            Im.c.ext,
            Im.c.phash,
            P.c.origin,
            R.c.a,
            R.c.b,
        )
        .join(Q, Q.c.id == F.c.question_id)
        .join(SI, SI.c.id == F.c.session_image_id)
        .join(S, S.c.id == SI.c.session_id)
        .join(Im, Im.c.id == SI.c.image_id)
        .join(P, P.c.id == F.c.player_id)
        .join(R, R.c.player_id == F.c.player_id)
        .where(S.c.game_id == game_id, F.c.state == "confirmed", F.c.tainted.is_(False))
        .order_by(F.c.id)
    ).all()
    out = []
    panel_verdicts = judging.model_verdicts(conn, [r.id for r in rows])
    for r in rows:
        corrected = r.corrected
        if not corrected:  # the judges' most common correction, when the author gave none
            fixes = Counter(
                c
                for (c,) in conn.execute(
                    select(J.c.corrected).where(
                        J.c.flag_id == r.id, J.c.model_wrong.is_(True), J.c.corrected.is_not(None)
                    )
                ).all()
            )
            corrected = fixes.most_common(1)[0][0] if fixes else None
        out.append(
            Example(
                flag_id=r.public_id,
                image_uid=r.uid,
                image=r.data,
                ext=r.ext,
                phash=int(r.phash, 16),
                question=r.text,
                wrong_answer=r.answer,
                corrected=corrected,
                origin=r.origin,
                detection=float(r.a),
                false_alarm=float(r.b),
                posterior=r.posterior,
                votes_wrong=r.votes_wrong,
                votes_right=r.votes_right,
                question_type=question_type(r.text),
                vlm_verdicts=panel_verdicts[r.id],
            )
        )
    return out


def image_groups(hashes: list[int], near_dup_bits: int) -> list[int]:
    """A group id per image: images within `near_dup_bits` of each other (transitively) share one."""
    n = len(hashes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h = np.asarray(hashes, dtype=np.uint64)
    for i in range(n):
        close = np.nonzero(hamming(h[i], h[i + 1 :]) <= near_dup_bits)[0]
        for j in close:
            parent[root(int(j) + i + 1)] = root(i)
    return [root(i) for i in range(n)]


def split(
    examples: list[Example], eval_fraction: float, near_dup_bits: int, seed: str
) -> dict[str, list[Example]]:
    """Train and eval, disjoint by image and by near-duplicate image: a whole group goes one way,
    chosen by a hash of the group's first image uid (stable across re-exports)."""
    groups = image_groups([e.phash for e in examples], near_dup_bits)
    key: dict[int, str] = {}
    for g, e in zip(groups, examples, strict=True):
        key.setdefault(g, e.image_uid)
    out: dict[str, list[Example]] = {"train": [], "eval": []}
    for g, e in zip(groups, examples, strict=True):
        u = (
            int.from_bytes(hashlib.blake2b(f"{seed}:{key[g]}".encode(), digest_size=8).digest(), "big")
            / 2**64
        )
        out["eval" if u < eval_fraction else "train"].append(e)
    return out


_VERDICT_KEYS = ("judge", "model", "model_wrong", "correction_ok", "error")


def _meta(e: Example) -> dict[str, Any]:
    return {
        "rejected": e.wrong_answer,
        "model_answer": e.wrong_answer,
        "question_type": e.question_type,
        "origin": e.origin,
        "reliability": {"detection": round(e.detection, 4), "false_alarm": round(e.false_alarm, 4)},
        "posterior_model_wrong": None if e.posterior is None else round(e.posterior, 4),
        "validations": {"model_wrong": e.votes_wrong, "model_right": e.votes_right},
        "vlm_judges": [{k: v[k] for k in _VERDICT_KEYS} for v in e.vlm_verdicts],
        "image_uid": e.image_uid,
    }


def _sample(e: Example) -> InstructSample:
    assert e.corrected is not None
    return InstructSample(
        id=f"gap-{e.flag_id}",
        images=[ImageData(path=f"{e.image_uid}.{e.ext or 'png'}")],
        messages=[
            Message(role="user", content=f"<image>\n{e.question}"),
            Message(role="assistant", content=e.corrected),
        ],
        meta=_meta(e),
    )


def export_game(
    engine: Engine,
    name: str,
    out: Path,
    *,
    eval_fraction: float = 0.2,
    near_dup_bits: int = 4,
    seed: str = "gap",
) -> dict[str, Any]:
    with engine.connect() as conn:
        game = game_by_name(conn, name)
        examples = collect(conn, game.id)
    usable = [e for e in examples if e.corrected]
    parts = split(usable, eval_fraction, near_dup_bits, seed)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for fmt in FORMATS:
        for part, items in parts.items():
            w = InstructWriter(out / fmt, fmt, name=part)
            for e in items:
                w.add(_sample(e), [e.image])
            files[f"{fmt}/{part}"] = str(w.close())
    for part, items in parts.items():  # LLaMA-Factory's ShareGPT preference layout (DPO)
        lines = [
            json.dumps(
                {
                    "id": f"gap-{e.flag_id}",
                    "conversations": [{"from": "human", "value": f"<image>\n{e.question}"}],
                    "chosen": {"from": "gpt", "value": e.corrected},
                    "rejected": {"from": "gpt", "value": e.wrong_answer},
                    "images": [f"../sharegpt/images/{e.image_uid}.{e.ext or 'png'}"],
                    **{k: v for k, v in _meta(e).items() if k not in ("rejected", "model_answer")},
                },
                ensure_ascii=False,
            )
            for e in items
        ]
        path = out / "dpo" / f"{part}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(line + "\n" for line in lines))
        files[f"dpo/{part}"] = str(path)
    summary = {
        "game": name,
        "confirmed": len(examples),
        "without_corrected_answer": len(examples) - len(usable),
        "train": len(parts["train"]),
        "eval": len(parts["eval"]),
        "train_images": len({e.image_uid for e in parts["train"]}),
        "eval_images": len({e.image_uid for e in parts["eval"]}),
        "shared_images": len({e.image_uid for e in parts["train"]} & {e.image_uid for e in parts["eval"]}),
        "question_types": {
            part: dict(Counter(e.question_type for e in items)) for part, items in parts.items()
        },
        "origins": {part: dict(Counter(e.origin for e in items)) for part, items in parts.items()},
        "files": files,
    }
    write_text_atomic(out / "dataset_card.md", card(summary, game, near_dup_bits, eval_fraction))
    write_text_atomic(out / "export.json", json.dumps(summary, indent=2) + "\n")
    return summary


def card(s: dict[str, Any], game: Any, near_dup_bits: int, eval_fraction: float) -> str:
    types = sorted(set(s["question_types"]["train"]) | set(s["question_types"]["eval"]))
    rows = "\n".join(
        f"| {t} | {s['question_types']['train'].get(t, 0)} | {s['question_types']['eval'].get(t, 0)} |"
        for t in types
    )
    origins = ", ".join(
        f"{part}: " + (", ".join(f"{k} {v}" for k, v in sorted(o.items())) or "none")
        for part, o in s["origins"].items()
    )
    return f"""# GAP hard examples: game `{s["game"]}`

Questions about images that the model `{game.model}` answered wrongly, found by players of the
gamified adversarial prompting game (GAP) and each confirmed by at least {game.judges_needed}
independent players (never the author, never an account linked to the author).

| | count |
|---|---|
| confirmed model errors | {s["confirmed"]} |
| without a corrected answer (not exported) | {s["without_corrected_answer"]} |
| train examples / images | {s["train"]} / {s["train_images"]} |
| eval examples / images | {s["eval"]} / {s["eval_images"]} |
| images in both splits | {s["shared_images"]} |

Split: about {eval_fraction:.0%} of image groups go to eval; a group is an image and every image within
{near_dup_bits} bits of its perceptual hash (transitively), so no image or near-duplicate is in both splits.

## Question types

| type | train | eval |
|---|---|---|
{rows}

Origin of the examples: {origins}.

## Files

- `llava/`, `sharegpt/`, `openai/`: `train.json` and `eval.json` with `images/`; each record holds the
  question and the corrected answer, and `rejected` (the model's wrong answer), `origin` (human or
  agent), `reliability` (the author's detection and false-alarm rates), `posterior_model_wrong` and
  `validations` (independent votes; the VLM panel, when the game has one, is one of them) and
  `vlm_judges` (each VLM judge's verdict on the model's answer and on the correction).
- `dpo/`: LLaMA-Factory's ShareGPT preference layout (`chosen` = corrected, `rejected` = the model's).
"""


def write_export_summary(summary: dict[str, Any]) -> str:
    return (
        f"exported {summary['train']} train and {summary['eval']} eval examples "
        f"({summary['confirmed']} confirmed, "
        f"{summary['without_corrected_answer']} without a corrected answer)"
    )

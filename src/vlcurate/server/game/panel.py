"""The optional panel of VLM judges: models that vote on a "model fooled" flag beside the players.

Each judge of the game's panel (`GameCreate.vlm_judges`) sees the image, the question, the model's
answer and the player's correction, in two steps that keep it from being anchored by the answer it
checks: it first answers the question itself, from the image, with no other answer in sight; then,
text only, it judges (`vlm.prompts.judge_prompt`, structured output) whether the model's answer and
whether the player's correction match its own. Its verdict is "the model was wrong" when the
model's answer does not match. A judge that fails (no answer, not JSON) gives no verdict; its error
is kept.

How the panel counts (`judging.tally`): its majority is ONE voice beside the players' voices (a
tie, or no verdict at all, is no voice), so a panel never settles a flag alone unless the game needs
a single voice. Every verdict is kept, with the panel's own disagreements, for the operator
(`vlcurate game audit`, `GET /api/v1/game/flags`) and in the export's metadata.

The panel runs in the background once a flag on an untainted image is stored (`schedule`), so the
player's "Wrong Answer" does not wait for models; `judge_missing` catches up on flags it missed.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import Counter
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from vlcurate.server import db
from vlcurate.server.game import judging
from vlcurate.server.game.asking import _SHARED
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.client import VLMRequest, VLMSettings

log = logging.getLogger(__name__)
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gap-panel")


def _settings(judge: dict[str, Any]) -> VLMSettings:
    return VLMSettings(
        base_url=judge["vlm_url"],
        model=judge["model"],
        timeout_s=float(judge.get("timeout_s", 30.0)),
        max_retries=1,
        max_answer_retries=1,
        backoff_base_s=0.2,
        backoff_max_s=1.0,
        max_concurrency=16,
        cache_dir=None,
    )


def _matches(settings: VLMSettings, question: str, own: str, answer: str) -> bool | None:
    """The judge's word on whether `answer` matches its own answer; None when it gave none."""
    req = VLMRequest(
        prompt=vp.judge_prompt(question, own, answer),
        json_schema=vp.JUDGE_SCHEMA,
        schema_name="judgement",
        max_tokens=200,
        use_cache=False,
    )
    res = _SHARED.complete(settings, req)
    obj = res.parsed[0] if res.ok and res.parsed else None
    return bool(obj["correct"]) if obj is not None and "correct" in obj else None


def verdict(
    judge: dict[str, Any], image: bytes, question: str, answer: str, corrected: str | None
) -> dict[str, Any]:
    """One judge's verdict row (without flag id): own answer, model_wrong, correction_ok, error."""
    settings = _settings(judge)
    own_res = _SHARED.complete(
        settings,
        VLMRequest(prompt=question, images=[image], max_tokens=200, temperature=0.0, use_cache=False),
    )
    own = own_res.text.strip() if own_res.ok else ""
    out: dict[str, Any] = {"judge": judge["name"], "model": judge["model"], "own_answer": own or None}
    if not own:
        return out | {"error": f"no answer of its own: {own_res.error or 'empty'}"[:1000]}
    same = _matches(settings, question, own, answer)
    if same is None:
        return out | {"error": "no verdict: the judgement was not valid JSON"}
    out["model_wrong"] = not same
    if corrected:
        out["correction_ok"] = _matches(settings, question, own, corrected)
    return out


def _context(conn: Connection, flag_id: int) -> Any:
    F, Q, SI, S, G, Im = (
        db.game_flags,
        db.game_questions,
        db.game_session_images,
        db.game_sessions,
        db.game_games,
        db.game_images,
    )
    return conn.execute(
        select(F.c.id, F.c.tainted, F.c.corrected, Q.c.text, Q.c.answer, Im.c.data, G.c.vlm_judges)
        .join(Q, Q.c.id == F.c.question_id)
        .join(SI, SI.c.id == F.c.session_image_id)
        .join(Im, Im.c.id == SI.c.image_id)
        .join(S, S.c.id == SI.c.session_id)
        .join(G, G.c.id == S.c.game_id)
        .where(F.c.id == flag_id)
    ).first()


def judge_flag(engine: Engine, flag_id: int) -> int:
    """Ask every judge of the flag's game that has not voted on it yet, store the verdicts, settle
    the flag again. Returns how many verdicts were stored."""
    V = db.game_model_verdicts
    with engine.connect() as conn:
        ctx = _context(conn, flag_id)
        if ctx is None or ctx.tainted or not ctx.vlm_judges:
            return 0
        done = {j for (j,) in conn.execute(select(V.c.judge).where(V.c.flag_id == flag_id)).all()}
    todo = [j for j in ctx.vlm_judges if j["name"] not in done]
    rows = [verdict(j, ctx.data, ctx.text, ctx.answer, ctx.corrected) for j in todo]
    if not rows:
        return 0
    stored = 0
    with db.begin_write(engine) as conn:
        for row in rows:
            try:
                with conn.begin_nested():
                    conn.execute(insert(V).values(flag_id=flag_id, created_at=db.utcnow(), **row))
                stored += 1
            except IntegrityError:  # judged meanwhile by another run
                continue
        judging.settle(conn, flag_id)
    return stored


def schedule(engine: Engine, flag_id: int) -> concurrent.futures.Future[int]:
    """Judge the flag in the background (a failure is logged; `judge_missing` retries it)."""

    def run() -> int:
        try:
            return judge_flag(engine, flag_id)
        except Exception:
            log.exception("the VLM judges could not judge flag %s", flag_id)
            raise

    return _POOL.submit(run)


def judge_missing(engine: Engine) -> int:
    """Judge every untainted flag of a game with a panel that lacks a judge's verdict."""
    F, V, SI, S, G = (
        db.game_flags,
        db.game_model_verdicts,
        db.game_session_images,
        db.game_sessions,
        db.game_games,
    )
    with engine.connect() as conn:
        rows = conn.execute(
            select(F.c.id, G.c.vlm_judges)
            .join(SI, SI.c.id == F.c.session_image_id)
            .join(S, S.c.id == SI.c.session_id)
            .join(G, G.c.id == S.c.game_id)
            .where(F.c.tainted.is_(False), G.c.vlm_judges.is_not(None))
            .order_by(F.c.id)
        ).all()
        have = Counter(fid for (fid,) in conn.execute(select(V.c.flag_id)).all())
    return sum(judge_flag(engine, fid) for fid, judges in rows if have[fid] < len(judges or []))

"""What the game's API answers (pydantic at the edge). A tainted and an untainted image are
answered with exactly the same fields: nothing a player receives while playing says which is which."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel


class LoginOut(BaseModel):
    player_id: int
    name: str
    kind: str
    origin: str
    token: str


class QuestionOut(BaseModel):
    question_id: str
    question: str
    answer: str
    asked_at: dt.datetime
    replayed: bool = False


class ImageOut(BaseModel):
    image_id: str
    position: int
    url: str
    started_at: dt.datetime
    deadline: dt.datetime
    seconds_left: float
    state: Literal["active", "done"]
    flagged: bool
    questions: list[QuestionOut]


class ReliabilityOut(BaseModel):
    detection: float
    detection_sd: float
    false_alarm: float
    false_alarm_sd: float
    check_images: int
    earning: bool
    reason: str


class SummaryOut(BaseModel):
    session_id: str
    images: int
    questions: int
    flagged: int
    points_credited: float
    flags_awaiting_confirmation: int
    reliability: ReliabilityOut
    total_points: float


class SessionOut(BaseModel):
    session_id: str
    game: str
    state: Literal["active", "finished", "abandoned"]
    n_images: int
    position: int
    seconds_per_image: int
    max_question_chars: int
    image: ImageOut | None
    summary: SummaryOut | None


class FlagOut(BaseModel):
    flag_id: str
    question_id: str
    corrected: str | None
    state: Literal["recorded"] = "recorded"
    replayed: bool = False


class JudgeTaskOut(BaseModel):
    task_id: str
    image_url: str
    question: str
    answer: str
    corrected: str | None


class JudgeResultOut(BaseModel):
    task_id: str
    recorded: bool
    replayed: bool = False


class LeaderRow(BaseModel):
    rank: int
    name: str
    points: float


class LeaderboardOut(BaseModel):
    period: Literal["daily", "weekly", "all"]
    since: dt.datetime | None
    entries: list[LeaderRow]


class MeOut(BaseModel):
    player_id: int
    name: str
    kind: str
    origin: str
    points: float
    reliability: ReliabilityOut
    judging: str = ""  # whether this player's verdicts as a judge count, and why


class VLMVerdictOut(BaseModel):
    """One VLM judge's verdict: its own answer, whether the model's answer was wrong and whether the
    player's correction was right by it (None: no verdict; `error` says why)."""

    judge: str
    model: str
    own_answer: str | None
    model_wrong: bool | None
    correction_ok: bool | None
    error: str | None


class FlagAdminOut(BaseModel):
    """A flag as the operator sees it: the model's answer, the votes, and whether they disagreed."""

    flag_id: str
    player: str
    origin: str
    tainted: bool
    state: str
    question: str
    answer: str
    corrected: str | None
    posterior: float | None
    votes_wrong: int
    votes_right: int
    disputed: bool
    created_at: dt.datetime
    settled_at: dt.datetime | None
    vlm_verdicts: list[VLMVerdictOut] = []

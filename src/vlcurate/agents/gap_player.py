"""An agent that plays GAP through the game's public API, like a person with a phone would.

A prober VLM (any OpenAI-compatible model, ideally stronger than the one being probed) proposes
questions for each image; the agent asks them in the game, asks the prober the same question
honestly, and presses "Wrong Answer" (with the prober's answer as the correction) when the two
disagree. Between sessions it judges other players' flags the same way. It logs in with a platform
agent token and `origin: agent`, so its flags go through the same reliability, validation and
ledger rules as people's, and the export marks its examples as made by an agent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from vlcurate.vlm import prompts as vp
from vlcurate.vlm.client import VLMRequest, VLMSettings, run_many

PROPOSE_PROMPT = (
    "List {n} short questions about this image that have a one-word or one-number answer and that a "
    "small vision model is likely to get wrong (counts, colours, shapes, positions). One question per line."
)
FALLBACK_QUESTIONS = (
    "How many objects are there?",
    "What colour is the background?",
)


@dataclass
class PlayStats:
    sessions: int = 0
    questions: int = 0
    flags: int = 0
    judgements: int = 0
    points: float = 0.0
    reasons: list[str] = field(default_factory=list)


class GapAgent:
    """Plays sessions and judges flags with a prober VLM; `server` is the platform's base URL."""

    def __init__(
        self, server: str, agent_token: str, prober: VLMSettings, *, questions_per_image: int = 3
    ) -> None:
        self.http = httpx.Client(base_url=server.rstrip("/"), timeout=120)
        self.prober = prober
        self.per_image = questions_per_image
        r = self.http.post("/api/v1/game/login/token", json={"token": agent_token, "origin": "agent"})
        self._check(r)
        self.http.headers["Authorization"] = f"Bearer {r.json()['token']}"
        self.player = r.json()

    @staticmethod
    def _check(r: httpx.Response) -> None:
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:200]
            raise RuntimeError(f"{r.request.method} {r.request.url.path}: HTTP {r.status_code}: {detail}")

    def _ask_prober(self, image: bytes, prompt: str) -> str:
        res = run_many(
            self.prober, [VLMRequest(prompt=prompt, images=[image], max_tokens=200, temperature=0.0)]
        )[0]
        return (res.text or "").strip() if res.ok else ""

    def propose(self, image: bytes) -> list[str]:
        text = self._ask_prober(image, PROPOSE_PROMPT.format(n=self.per_image))
        found = [line.strip(" -*0123456789.").strip() for line in text.splitlines()]
        questions = [q for q in found if q.endswith("?") and 5 < len(q) < 200]
        for q in FALLBACK_QUESTIONS:  # a prober that does not follow the request still plays
            if len(questions) >= self.per_image:
                break
            if q not in questions:
                questions.append(q)
        return questions[: self.per_image]

    def reference(self, image: bytes, question: str) -> str:
        return self._ask_prober(image, vp.question_prompt(question))

    def play_session(self, game: str, stats: PlayStats) -> dict[str, Any]:
        r = self.http.post("/api/v1/game/sessions", json={"game": game})
        self._check(r)
        body = r.json()
        sid = body["session_id"]
        while body["state"] == "active":
            im = body["image"]
            image = self.http.get(im["url"])
            self._check(image)
            for q in self.propose(image.content):
                a = self.http.post(
                    f"/api/v1/game/sessions/{sid}/images/{im['image_id']}/questions",
                    json={"question": q, "client_key": uuid.uuid4().hex},
                )
                if a.status_code == 409:  # the image's time ran out
                    break
                self._check(a)
                stats.questions += 1
                ref = self.reference(image.content, q)
                if ref and vp.normalize_answer(ref) != vp.normalize_answer(a.json()["answer"]):
                    f = self.http.post(
                        f"/api/v1/game/sessions/{sid}/images/{im['image_id']}/flag",
                        json={"question_id": a.json()["question_id"], "corrected": ref},
                    )
                    self._check(f)
                    stats.flags += 1
                    break
            n = self.http.post(f"/api/v1/game/sessions/{sid}/next", json={"position": im["position"]})
            self._check(n)
            body = n.json()
        stats.sessions += 1
        summary = body.get("summary") or {}
        stats.points += float(summary.get("points_credited", 0.0))
        reason = (summary.get("reliability") or {}).get("reason")
        if reason:
            stats.reasons.append(reason)
        return body

    def judge_all(self, stats: PlayStats, limit: int = 50) -> None:
        for _ in range(limit):
            t = self.http.post("/api/v1/game/judgements/next")
            if t.status_code in (204, 403):
                return
            self._check(t)
            task = t.json()
            image = self.http.get(task["image_url"])
            self._check(image)
            ref = self.reference(image.content, task["question"])
            wrong = bool(ref) and vp.normalize_answer(ref) != vp.normalize_answer(task["answer"])
            r = self.http.post(
                f"/api/v1/game/judgements/{task['task_id']}",
                json={"model_wrong": wrong, "corrected": ref if wrong else None},
            )
            self._check(r)
            stats.judgements += 1

    def close(self) -> None:
        self.http.close()

"""The recaption loop over a chunk of pairs: sample, fuse, rewrite with feedback, choose.

Requests of one step go out together for every pair of the chunk (the client bounds concurrency),
and every candidate is scored in batches. A pair stops rewriting when a round raises its best
score by less than `min_gain`; the weakest pairs (lowest best score) get the request budget first.
A failed request is recorded on its pair, which keeps its original: no pair is ever lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vlcurate.recaption.candidates import (
    Candidate,
    Origin,
    feedback_sentence,
    fuse_request,
    rewrite_request,
    sample_request,
    single_sample_requests,
    texts_of,
)
from vlcurate.recaption.choose import best_candidate, choose
from vlcurate.recaption.config import RecaptionConfig
from vlcurate.recaption.mentions import MentionExtractor, leave_one_out
from vlcurate.recaption.scoring import CaptionScorer
from vlcurate.vlm.client import VLMRequest, VLMResult

Send = Callable[[list[VLMRequest]], list[VLMResult]]
# Statuses that a re-run should try again (the shard gets no completion marker while any remain).
RETRY_STATUSES = frozenset({"vlm_error", "partial", "budget"})


@dataclass
class Budget:
    """VLM requests this run may still send (None: no limit)."""

    limit: int | None
    used: int = 0

    def take(self, wanted: int) -> int:
        """Reserve up to `wanted` requests; returns how many were granted."""
        granted = wanted if self.limit is None else max(0, min(wanted, self.limit - self.used))
        self.used += granted
        return granted

    @property
    def spent(self) -> bool:
        return self.limit is not None and self.used >= self.limit


@dataclass
class Usage:
    """What the VLM calls of a run cost."""

    requests: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, results: Sequence[VLMResult]) -> None:
        for r in results:
            self.requests += 1
            self.cached += int(bool(r.cached))
            self.failed += int(not r.ok)
            self.prompt_tokens += int(r.prompt_tokens or 0)
            self.completion_tokens += int(r.completion_tokens or 0)
            self.cost += float(r.cost or 0.0)

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


@dataclass
class PairState:
    uid: str
    image: bytes | None
    original: str
    original_score: float = math.nan
    status: str = "ok"
    errors: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    active: bool = True
    requests: int = 0
    chain: tuple[str, float] | None = None  # the caption rewriting improves, round after round

    def add(self, text: str, score: float, rnd: int, origin: Origin) -> Candidate | None:
        """Add a candidate unless the pair already has that text; returns it when added."""
        seen = {c.text.lower() for c in self.candidates} | {self.original.strip().lower()}
        if text.lower() in seen:
            return None
        c = Candidate(text, float(score), rnd, origin)
        self.candidates.append(c)
        return c

    def fail(self, step: str, error: str | None) -> None:
        self.errors.append(f"{step}: {error or 'unknown error'}")
        self.status = "partial" if self.candidates else "vlm_error"
        self.active = False

    def start_chain(self) -> None:
        """What rewriting improves: the original when there is one, else the best sample."""
        best = best_candidate(self.candidates)
        if self.original and math.isfinite(self.original_score):
            self.chain = (self.original, self.original_score)
        elif best is not None:
            self.chain = (best.text, best.score)


@dataclass(frozen=True)
class PairOutcome:
    uid: str
    original: str
    original_score: float
    candidates: list[Candidate]
    chosen: str
    chosen_score: float
    chosen_origin: str
    why: str
    status: str
    error: str | None
    requests: int


class Recaptioner:
    """Improves the captions of chunks of pairs with one VLM and one scorer."""

    def __init__(
        self,
        cfg: RecaptionConfig,
        scorer: CaptionScorer,
        send: Send,
        budget: Budget,
        extractor: MentionExtractor | None = None,
    ) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.send = send
        self.budget = budget
        self.extractor = extractor
        self.usage = Usage()
        self.emb = np.zeros((0, 0), dtype=np.float32)  # image embeddings of the chunk being worked on
        self.budget_stops = 0  # pairs whose rewriting the budget cut short

    # ----- the loop -------------------------------------------------------------------------
    def run(
        self,
        uids: Sequence[str],
        images: Sequence[bytes | None],
        texts: Sequence[str | None],
        statuses: Sequence[tuple[str, str | None]] | None = None,
    ) -> list[PairOutcome]:
        """One outcome per input pair, in order. `statuses`: a reader's failure per pair, if any."""
        pairs = [PairState(u, im, (t or "").strip()) for u, im, t in zip(uids, images, texts, strict=True)]
        emb = self.scorer.embed_images(images)
        self.emb = emb.emb
        for i, p in enumerate(pairs):
            bad = statuses[i] if statuses is not None else ("ok", None)
            if bad[0] != "ok":
                p.status, p.active = bad[0], False
                p.errors.append(bad[1] or bad[0])
            elif not emb.ok(i):
                p.status, p.active = emb.status[i], False
                p.errors.append(emb.error[i] or emb.status[i])
        self._score_originals(pairs)
        live = [i for i, p in enumerate(pairs) if p.active]
        self._sample(pairs, live)
        if self.cfg.fuse:
            self._fuse(
                pairs, [i for i in live if pairs[i].active and pairs[i].original and pairs[i].candidates]
            )
        for i in live:
            pairs[i].start_chain()
        for rnd in range(1, self.cfg.rounds + 1):
            todo = [i for i in live if pairs[i].active and pairs[i].chain is not None]
            if not todo:
                break
            self._rewrite(pairs, todo, rnd)
        return [self._outcome(p) for p in pairs]

    # ----- steps ----------------------------------------------------------------------------
    def _score_originals(self, pairs: list[PairState]) -> None:
        rows = [i for i, p in enumerate(pairs) if p.original and p.status == "ok"]
        for i, s in zip(
            rows, self.scorer.score(self.emb[rows], [pairs[i].original for i in rows]), strict=True
        ):
            pairs[i].original_score = float(s)

    def _call(self, pairs: list[PairState], rows: list[int], reqs: list[VLMRequest]) -> list[VLMResult]:
        if not reqs:
            return []
        results = self.send(reqs)
        if len(results) != len(reqs):
            raise RuntimeError(f"the VLM client returned {len(results)} results for {len(reqs)} requests")
        self.usage.add(results)
        for i in rows:
            pairs[i].requests += 1
        return results

    def _add_scored(
        self, pairs: list[PairState], items: list[tuple[int, str]], rnd: int, origin: Origin
    ) -> None:
        """Score (pair, text) items in one batch and add them as candidates."""
        if not items:
            return
        scores = self.scorer.score(self.emb[[i for i, _ in items]], [t for _, t in items])
        for (i, text), s in zip(items, scores, strict=True):
            pairs[i].add(text, float(s), rnd, origin)

    def _sample(self, pairs: list[PairState], live: list[int]) -> None:
        granted = self.budget.take(len(live))
        for i in live[granted:]:
            pairs[i].status, pairs[i].active = "budget", False
            pairs[i].errors.append("request budget spent before this pair")
        rows = live[:granted]
        results = self._call(
            pairs, rows, [sample_request(pairs[i].image or b"", pairs[i].uid, self.cfg) for i in rows]
        )
        items: list[tuple[int, str]] = []
        short: list[tuple[int, int]] = []  # (pair, missing choices): the server gave fewer than n
        for i, r in zip(rows, results, strict=True):
            if not r.ok:
                pairs[i].fail("sample", r.error)
                continue
            items += [(i, t) for t in texts_of(r)]
            if len(r.texts) < self.cfg.k:
                short.append((i, self.cfg.k - len(r.texts)))
        if short:
            reqs: list[VLMRequest] = []
            owners: list[int] = []
            for i, missing in short:
                got = self.budget.take(missing)
                for req in single_sample_requests(pairs[i].image or b"", pairs[i].uid, self.cfg, got):
                    reqs.append(req)
                    owners.append(i)
            results = self._call(pairs, owners, reqs) if reqs else []
            for i, r in zip(owners, results, strict=True):
                items += [(i, t) for t in texts_of(r)]
        self._add_scored(pairs, items, 0, "sample")
        for i in rows:
            p = pairs[i]
            if p.status == "ok" and not p.candidates:  # an answer, just not a usable one: final
                p.errors.append("sample: the model returned no usable caption (empty output)")
                p.status, p.active = "no_caption", False

    def _fuse(self, pairs: list[PairState], rows: list[int]) -> None:
        rows = rows[: self.budget.take(len(rows))]
        reqs = []
        for i in rows:
            best = best_candidate(pairs[i].candidates)
            assert best is not None
            reqs.append(
                fuse_request(pairs[i].image or b"", pairs[i].uid, pairs[i].original, best.text, self.cfg)
            )
        results = self._call(pairs, rows, reqs)
        items: list[tuple[int, str]] = []
        for i, r in zip(rows, results, strict=True):
            if not r.ok:
                pairs[i].errors.append(f"fuse: {r.error or 'unknown error'}")
                pairs[i].status = "partial"
                continue
            items += [(i, t) for t in texts_of(r)[:1]]
        self._add_scored(pairs, items, 0, "fuse")

    def _rewrite(self, pairs: list[PairState], rows: list[int], rnd: int) -> None:
        chains = {i: c for i in rows if (c := pairs[i].chain) is not None}
        rows = sorted(chains, key=lambda i: chains[i][1])  # weakest first
        granted = self.budget.take(len(rows))
        for i in rows[granted:]:
            pairs[i].active = False
            self.budget_stops += 1
        rows = rows[:granted]
        if not rows:
            return
        current = [chains[i] for i in rows]
        weakest = self._weakest_mentions(rows, [c[0] for c in current])
        reqs = [
            rewrite_request(
                pairs[i].image or b"",
                pairs[i].uid,
                cap,
                score,
                feedback_sentence(score, weak),
                rnd,
                self.cfg,
            )
            for i, (cap, score), weak in zip(rows, current, weakest, strict=True)
        ]
        results = self._call(pairs, rows, reqs)
        items: list[tuple[int, str]] = []
        for i, r in zip(rows, results, strict=True):
            if not r.ok:
                pairs[i].fail(f"rewrite round {rnd}", r.error)
                continue
            items += [(i, t) for t in texts_of(r)[:1]]
        scores = self.scorer.score(self.emb[[i for i, _ in items]], [t for _, t in items])
        improved: set[int] = set()
        for (i, text), s in zip(items, scores, strict=True):
            p, chain = pairs[i], chains[i]
            p.add(text, float(s), rnd, "rewrite")
            if text.lower() != chain[0].lower() and float(s) > chain[1] + self.cfg.min_gain:
                p.chain = (text, float(s))
                improved.add(i)
        for i in rows:
            if i not in improved:
                pairs[i].active = False  # this round did not help: stop rewriting this pair

    def _weakest_mentions(self, rows: list[int], captions: list[str]) -> list[str | None]:
        """Per caption, the mention whose removal raises its score the most (None when none does)."""
        if self.extractor is None:
            return [None] * len(rows)
        mentions = [self.extractor(c) for c in captions]
        deltas = leave_one_out(self.scorer, self.emb[rows], mentions)
        out: list[str | None] = []
        for ms, d in zip(mentions, deltas, strict=True):
            j = int(np.argmax(d)) if len(d) else -1
            out.append(ms[j] if j >= 0 and d[j] > 0 else None)
        return out

    def _outcome(self, p: PairState) -> PairOutcome:
        error = "; ".join(p.errors) or None
        if p.status not in ("ok", "partial"):
            why = {"budget": "kept original: request budget spent"}.get(p.status, f"kept original: {error}")
            return PairOutcome(
                p.uid,
                p.original,
                p.original_score,
                p.candidates,
                p.original,
                p.original_score,
                "original",
                why,
                p.status,
                error,
                p.requests,
            )
        c = choose(p.original, p.original_score, p.candidates, self.cfg.margin)
        return PairOutcome(
            p.uid,
            p.original,
            p.original_score,
            p.candidates,
            c.text,
            c.score,
            c.origin,
            c.why,
            p.status,
            error,
            p.requests,
        )

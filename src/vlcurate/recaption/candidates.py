"""Candidate captions: the requests that make them (sample, fuse, rewrite) and what comes back.

Sampling asks once with n=K at temperature > 0; a server that returns fewer choices than asked
(llama.cpp, some proxies) gets the missing ones as single requests with other seeds. Fusing and
rewriting are deterministic (temperature 0): each call has one job and one best answer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from vlcurate.recaption.config import RecaptionConfig
from vlcurate.vlm.client import VLMRequest, VLMResult
from vlcurate.vlm.prompts import caption_prompt, fuse_prompt, rewrite_prompt

Origin = Literal["original", "sample", "fuse", "rewrite"]
_LEADING_LABEL = re.compile(r"^\s*(caption|new caption|improved caption|merged caption)\s*:\s*", re.I)


@dataclass
class Candidate:
    """One caption for a pair with its score, the round that made it (0: sampling) and how."""

    text: str
    score: float
    round: int
    origin: Origin

    def as_row(self) -> dict[str, object]:
        return {"text": self.text, "score": self.score, "round": self.round, "origin": self.origin}


def seed_of(uid: str, salt: int = 0) -> int:
    """A stable per-pair seed, so a re-run asks exactly the same questions (and hits the cache)."""
    return (int(hashlib.blake2b(uid.encode(), digest_size=4).digest().hex(), 16) + salt) & 0x7FFFFFFF


def clean_caption(text: str | None) -> str:
    """The caption in a model's answer: first non-empty line, no 'Caption:' label, no quotes."""
    for line in (text or "").splitlines():
        line = _LEADING_LABEL.sub("", line.strip()).strip().strip('"').strip("'").strip()
        if line:
            return " ".join(line.split())
    return ""


def sample_request(image: bytes | str, uid: str, cfg: RecaptionConfig) -> VLMRequest:
    return VLMRequest(
        prompt=caption_prompt(cfg.style, cfg.max_words),
        images=[image],
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        n=cfg.k,
        seed=seed_of(uid),
    )


def single_sample_requests(
    image: bytes | str, uid: str, cfg: RecaptionConfig, count: int
) -> list[VLMRequest]:
    """The fallback: `count` one-choice requests with distinct seeds."""
    return [
        VLMRequest(
            prompt=caption_prompt(cfg.style, cfg.max_words),
            images=[image],
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            n=1,
            seed=seed_of(uid, 1 + j),
        )
        for j in range(count)
    ]


def fuse_request(image: bytes | str, uid: str, original: str, best: str, cfg: RecaptionConfig) -> VLMRequest:
    return VLMRequest(
        prompt=fuse_prompt(original, best),
        images=[image],
        max_tokens=cfg.max_tokens,
        temperature=0.0,
        n=1,
        seed=seed_of(uid, 100),
    )


def rewrite_request(
    image: bytes | str, uid: str, caption: str, score: float, feedback: str, rnd: int, cfg: RecaptionConfig
) -> VLMRequest:
    return VLMRequest(
        prompt=rewrite_prompt(caption, score, feedback),
        images=[image],
        max_tokens=cfg.max_tokens,
        temperature=0.0,
        n=1,
        seed=seed_of(uid, 200 + rnd),
    )


def texts_of(result: VLMResult) -> list[str]:
    """The non-empty cleaned captions of a result (none when it failed)."""
    if not result.ok:
        return []
    return [t for t in (clean_caption(x) for x in result.texts) if t]


def feedback_sentence(score: float, weakest: str | None) -> str:
    """What a rewrite is told: the score, and the phrase that fits the image least (when one does)."""
    parts = [f"The caption scores {score:.3f} against the image."]
    if weakest:
        parts.append(
            f"The phrase '{weakest}' fits the image least: check its count, colour and shape, "
            "or remove it if the object is not there."
        )
    else:
        parts.append("Correct any wrong count, colour or shape, and remove anything the image does not show.")
    parts.append("Name every visible object.")
    return " ".join(parts)

"""The tiny-synth "VLM": captions, rewrites, fusions, answers and reasoning from a CLIP-style model.

Everything is decided by comparing whole-caption scores of the bundled dual encoder: the best
caption comes from `search.build`, a repair from `search.ascend`, an answer from scoring the
model's own best caption edited to agree with each possible answer. Image embeddings are cached
by the image's hash and text embeddings by their text, and every model call holds one lock, so
the brain is safe to call from worker threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlcurate.models.scorer import ClipScorer
from vlcurate.synth.caption import TEMPLATES, Caption, Phrase
from vlcurate.synth.offline_vlm import search
from vlcurate.synth.offline_vlm.questions import Question, parse_question
from vlcurate.synth.offline_vlm.search import Phrases
from vlcurate.synth.offline_vlm.weakness import Weaknesses
from vlcurate.synth.parse import mentioned_phrases, parse_caption
from vlcurate.synth.vocab import BACKGROUND_NAMES, COLOUR_NAMES, MAX_COUNT, MAX_OBJECTS, PLURALS, SHAPES
from vlcurate.vlm import prompts as vlm_prompts

_BG_TEMPLATE = TEMPLATES.index("{objects} on a {background} background")
_SHORT_TEMPLATES = tuple(i for i in range(len(TEMPLATES)) if i != _BG_TEMPLATE)
WRONG_KINDS: tuple[str, ...] = ("count", "exists", "colour", "shape")


@dataclass(frozen=True)
class Answer:
    """An answer with the scores of every option it was chosen from (best first)."""

    text: str
    kind: str | None
    ranked: tuple[tuple[str, float], ...] = ()
    wrong_on_purpose: bool = False


def _unit(seed_text: str) -> float:
    """A deterministic number in [0, 1) from a string (for the adversarial mode)."""
    return int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big") / 2**64


class _LRU(OrderedDict[str, np.ndarray]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: np.ndarray) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Brain:
    """tiny-synth behind the tasks the VLM prompts ask for."""

    def __init__(
        self,
        scorer: ClipScorer,
        *,
        wrong_rate: float = 0.0,
        wrong_kinds: Sequence[str] = WRONG_KINDS,
        image_cache: int = 4096,
        text_cache: int = 200_000,
    ) -> None:
        self.scorer = scorer
        self.wrong_rate = wrong_rate
        self.wrong_kinds = frozenset(wrong_kinds)
        self.image_size = scorer.preprocessing.image_size
        self._lock = threading.RLock()
        self._images = _LRU(image_cache)
        self._texts = _LRU(text_cache)
        self._best: OrderedDict[str, Phrases] = OrderedDict()
        self.weakness: Weaknesses | None = None  # planted weaknesses (`vlm serve --weakness`), set by the app

    # ---- model calls (cached) -------------------------------------------------------------
    def embed_images(self, arrays: Sequence[np.ndarray], keys: Sequence[str]) -> list[np.ndarray]:
        """Image embeddings for model-ready uint8 HWC arrays; cached by `keys` (image hashes)."""
        with self._lock:
            missing = [i for i, k in enumerate(keys) if k not in self._images]
            if missing:
                emb = self.scorer.encode_images(np.stack([arrays[i] for i in missing])).cpu().numpy()
                for row, i in enumerate(missing):
                    self._images.put(keys[i], emb[row])
            return [self._images[k] for k in keys]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised text embeddings (n, dim), encoding only the texts not seen before, in one batch."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
            for start in range(0, len(missing), 512):
                chunk = missing[start : start + 512]
                emb = self.scorer.encode_texts(chunk).cpu().numpy()
                for t, e in zip(chunk, emb, strict=True):
                    self._texts.put(t, e)
            return np.stack([self._texts[t] for t in texts])

    def _scorer_for(self, image: np.ndarray) -> search.ScoreFn:
        def score(captions: Sequence[Caption]) -> np.ndarray:
            return np.asarray(self.embed_texts([c.text for c in captions]) @ image, dtype=np.float32)

        return score

    def image(self, array: np.ndarray, key: str) -> np.ndarray:
        return self.embed_images([array], [key])[0]

    # ---- captions -----------------------------------------------------------------------
    def best_phrases(self, image: np.ndarray, key: str) -> Phrases:
        """The deterministic best caption's phrases for this image (cached by image hash)."""
        with self._lock:
            if key in self._best:
                self._best.move_to_end(key)
                return self._best[key]
        phrases, _ = search.build(self._scorer_for(image))
        with self._lock:
            self._best[key] = phrases
            while len(self._best) > self._images.size:
                self._best.popitem(last=False)
        return phrases

    def share_caches(self, other: Brain) -> None:
        """Use `other`'s lock and caches (image and text embeddings, best captions): brains over the
        same scorer compute them identically, so several servers in one process (tests, benchmarks
        with differently weakened models) compute each only once. Weaknesses stay per brain."""
        if other.scorer is not self.scorer:
            raise ValueError("only brains over the same scorer can share caches")
        self._lock, self._images, self._texts, self._best = (
            other._lock,
            other._images,
            other._texts,
            other._best,
        )

    def _seen(self, phrases: Phrases) -> Phrases:
        """The phrases as a weakened model reports them (unchanged without weaknesses)."""
        return self.weakness.seen(phrases) if self.weakness is not None else phrases

    def background(self, image: np.ndarray, phrases: Phrases) -> str:
        """The background colour whose template-1 caption scores best."""
        caps = [Caption(phrases, _BG_TEMPLATE, bg) for bg in BACKGROUND_NAMES]
        return BACKGROUND_NAMES[int(np.argmax(self._scorer_for(image)(caps)))]

    def _finish(
        self, image: np.ndarray, phrases: Phrases, style: str, template: int | None, max_words: int | None
    ) -> Caption:
        """Choose the template (background named for `detailed`) and fit within `max_words`."""
        if template is None:
            template = _BG_TEMPLATE if style == "detailed" else 0
        bg = self.background(image, phrases) if template == _BG_TEMPLATE else None
        cap = Caption(phrases, template, bg)
        if max_words is None:
            return cap
        score = self._scorer_for(image)
        while len(cap.text.split()) > max_words:
            if cap.template != 0:
                cap = Caption(cap.phrases, 0)
                continue
            if len(cap.phrases) == 1:
                break
            # Drop the phrase whose loss costs the least.
            options = [cap.phrases[:i] + cap.phrases[i + 1 :] for i in range(len(cap.phrases))]
            s = score([Caption(o, 0) for o in options])
            cap = Caption(options[int(np.argmax(s))], 0)
        return cap

    def caption(
        self,
        image: np.ndarray,
        key: str,
        *,
        style: str = "short",
        max_words: int | None = None,
        n: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[str]:
        """n captions; the first is the best one, the others (temperature > 0) are sampled variants."""
        honest = self.best_phrases(image, key)
        best = self._seen(honest)
        if not best:  # a weakened model that sees none of the objects
            return [f"an empty {self.background(image, honest)} background"] * n
        out = [self._finish(image, best, style, None, max_words).text]
        rng = np.random.default_rng([seed, int(key[:8], 16)])
        for i in range(1, n):
            if temperature <= 0:
                out.append(out[0])
                continue
            phrases, _ = search.build(self._scorer_for(image), rng=rng, temperature=temperature)
            phrases = self._seen(phrases) or best
            templates = (_BG_TEMPLATE,) if style == "detailed" else _SHORT_TEMPLATES
            template = int(templates[int(rng.integers(len(templates)))]) if i % 2 else None
            perm = tuple(phrases[int(j)] for j in rng.permutation(len(phrases)))
            out.append(self._finish(image, perm, style, template, max_words).text)
        return out

    def _start_phrases(self, text: str) -> tuple[Phrases, int]:
        parsed = parse_caption(text)
        if parsed is not None:
            return parsed.phrases, parsed.template
        found = mentioned_phrases(text)
        keyed: dict[tuple[str, str], Phrase] = {}
        for p in found:
            keyed.setdefault((p.colour, p.shape), p)
        return tuple(keyed.values()), 0

    def rewrite(self, image: np.ndarray, key: str, caption: str, feedback: str = "") -> str:
        """Coordinate ascent from the given caption (its template kept): repairs one-fact errors."""
        start, template = self._start_phrases(caption)
        if not start:
            phrases = self.best_phrases(image, key)
        else:
            phrases, _ = search.ascend(start, self._scorer_for(image))
        return self._finish(image, phrases, "short", template, None).text

    def fuse(self, image: np.ndarray, key: str, original: str, candidate: str) -> str:
        """Union of both captions' phrases, minus those leave-one-out rejects, then ascent."""
        a, template = self._start_phrases(original)
        b, _ = self._start_phrases(candidate)
        score = self._scorer_for(image)
        merged: dict[tuple[str, str], Phrase] = {}
        for p in (*a, *b):
            k = (p.colour, p.shape)
            q = search.core(p)
            if k in merged and merged[k] != q:
                s = score([search.plain((merged[k],)), search.plain((q,))])
                q = q if s[1] > s[0] else merged[k]
            merged[k] = q
        phrases = tuple(merged.values())
        while True:
            bad = search.unsupported(phrases, score)
            if not bad:
                break
            worst = bad[0]
            phrases = phrases[:worst] + phrases[worst + 1 :]
        if not phrases:
            phrases = self.best_phrases(image, key)
        phrases, _ = search.ascend(phrases, score)
        return self._finish(image, phrases, "short", template, None).text

    # ---- answers ------------------------------------------------------------------------
    def _ranked(self, image: np.ndarray, key: str, q: Question) -> list[tuple[str, float]]:
        best = self.best_phrases(image, key)
        score = self._scorer_for(image)
        if q.form == "count_all":
            total = min(sum(p.count for p in best), MAX_OBJECTS)  # scenes hold at most 4 objects
            return [(str(total), 1.0)] + [(o, 0.0) for o in q.options if o != str(total)]
        if q.form == "background":
            caps = [Caption(best, _BG_TEMPLATE, bg) for bg in BACKGROUND_NAMES]
            s = score(caps)
            return sorted(zip(BACKGROUND_NAMES, s.tolist(), strict=True), key=lambda t: -t[1])
        assert q.form in ("count", "exists", "colour_of", "shape_of")
        if q.form in ("count", "exists"):
            assert q.colour and q.shape
            base = tuple(p for p in best if (p.colour, p.shape) != (q.colour, q.shape))
            wanted = {str(k): Phrase(k, q.colour, q.shape) for k in range(1, MAX_COUNT + 1)}
            keep = base
        elif q.form == "colour_of":
            assert q.shape
            keep = tuple(p for p in best if p.shape != q.shape)
            wanted = {c: Phrase(1, c, q.shape) for c in COLOUR_NAMES}
            base = best
        else:
            assert q.colour
            keep = tuple(p for p in best if p.colour != q.colour)
            wanted = {sh: Phrase(1, q.colour, sh) for sh in SHAPES}
            base = best
        # The caption most consistent with each option: the option's phrase added to what else the
        # model sees, or put in place of any one phrase it saw (which may be the misread object).
        variants: list[tuple[str, Phrases]] = []
        for option, phrase in wanted.items():
            variants.append((option, (*keep, phrase)))
            for j in range(len(base)):
                variants.append((option, (*tuple(p for k, p in enumerate(base) if k != j), phrase)))
        if q.form == "count" or q.form == "exists":
            variants.append(("0", base) if base else ("0", ()))
        valid = [(o, v) for o, v in variants if v]
        s = score([search.plain(v) for _, v in valid])
        by: dict[str, float] = {}
        for (o, _), v in zip(valid, s.tolist(), strict=True):
            by[o] = max(by.get(o, -1.0), v)
        if q.form == "exists":
            yes = max(v for k, v in by.items() if k != "0")
            return sorted([("yes", yes), ("no", by.get("0", -1.0))], key=lambda t: -t[1])
        return sorted(by.items(), key=lambda t: -t[1])

    def answer(
        self,
        image: np.ndarray,
        key: str,
        question: str,
        choices: Sequence[str] | None = None,
        *,
        tainted: bool = False,
    ) -> Answer:
        """Zero-shot answer to a scene question (the option letter when `choices` are given).

        `tainted` (GAP: the system prompt asked for wrong answers) makes every parsed question's
        answer its most plausible wrong option, whatever `wrong_rate` and `wrong_kinds` say."""
        q = parse_question(question)
        if q is None:
            if choices:  # no known form: the choice that reads best as a caption of the image
                emb = self.embed_texts(list(choices)) @ image
                return Answer(_letter(int(np.argmax(emb))), None)
            return Answer(self.caption(image, key)[0], None)
        ranked = self._ranked(image, key, q)
        chosen = ranked[0][0]
        wrong = False
        if self.weakness is not None:
            o = self.weakness.adjust(q, chosen, ranked, lambda other: self._ranked(image, key, other))
            if o is not None and o.text is not None:
                return Answer(o.text, q.kind, tuple(ranked), True)
            if o is not None and o.option is not None:
                chosen, wrong = o.option, True
        if tainted or (
            q.kind in self.wrong_kinds and _unit(f"{key}\x00{question.strip().lower()}") < self.wrong_rate
        ):
            chosen = _wrong_answer(q, chosen, ranked)
            wrong = True
        if not choices:
            return Answer(chosen, q.kind, tuple(ranked), wrong)
        norm = [vlm_prompts.normalize_answer(c) for c in choices]
        honest = ranked[0][0]
        order = [chosen] + [o for o, _ in ranked if o != chosen and not (wrong and o == honest)] + [honest]
        for option in order:
            if option in norm:
                return Answer(_letter(norm.index(option)), q.kind, tuple(ranked), wrong)
        return Answer(_letter(0), q.kind, tuple(ranked), wrong)

    # ---- blind answers and reasoning -------------------------------------------------------
    def blind_answer(self, question: str, choices: Sequence[str] | None = None, margin: float = 0.09) -> str:
        """Text only: answer when the question's own words decide it, else `CANNOT_TELL`."""
        q = parse_question(question)
        options = list(choices) if choices else (list(q.options) if q else [])
        if len(options) < 2:
            return vlm_prompts.CANNOT_TELL
        qe = self.embed_texts([question.strip().lower()])[0]
        s = self.embed_texts([o.lower() for o in options]) @ qe
        order = np.argsort(-s)
        if s[order[0]] - s[order[1]] < margin:
            return vlm_prompts.CANNOT_TELL
        best = int(order[0])
        return _letter(best) if choices else options[best]

    def describe(self, image: np.ndarray, key: str) -> str:
        """What the model sees, as a sentence: 'two red circles and a blue star on a gray background'."""
        honest = self.best_phrases(image, key)
        best = self._seen(honest)
        if not best:  # a weakened model that sees none of the objects
            return f"nothing on a {self.background(image, honest)} background"
        return Caption(best, _BG_TEMPLATE, self.background(image, best)).text

    def cot(self, image: np.ndarray, key: str, question: str) -> tuple[str, str]:
        """(reasoning, own short answer): reasoning from what the model sees, ending in its answer."""
        seen = self.describe(image, key)
        q = parse_question(question)
        ans = self.answer(image, key, question)
        lines = [f"I see {seen}.", f"The question asks: {question.strip()}"]
        if q is not None:
            lines.append(_because(q, ans.text))
        return " ".join(lines), ans.text


def _letter(i: int) -> str:
    return "ABCDEFGHIJ"[i]


def _wrong_answer(q: Question, right: str, ranked: list[tuple[str, float]]) -> str:
    """A plausible wrong answer: the runner-up option, or a neighbouring count: one more or one fewer
    (a per-image coin, so that wrong counts average what right ones do and a count's value does not
    tell a tainted answer from an honest one)."""
    if q.form == "count_all":
        k = int(right)
        up = k <= 1 or (k < MAX_COUNT and _unit(repr(ranked)) < 0.5)
        return str(k + 1 if up else k - 1)
    for option, _ in ranked:
        if option != right:
            return option
    return right  # pragma: no cover - every form has at least two options


def _because(q: Question, answer: str) -> str:
    noun = PLURALS.get(q.shape or "", "objects")
    if q.form == "count_all":
        return f"Counting every object gives {answer}."
    if q.form == "count":
        return f"Counting the {q.colour} {noun} gives {answer}."
    if q.form == "exists":
        verb = "is" if answer == "yes" else "is no"
        return f"There {verb} {q.colour} {q.shape} in the image, so the answer is {answer}."
    if q.form == "colour_of":
        return f"The {q.shape} is {answer}."
    if q.form == "shape_of":
        return f"The {q.colour} object is a {answer}."
    return f"The background is {answer}."


def with_answer_line(reasoning: str, answer: str) -> str:
    return f"{reasoning}\n{vlm_prompts.ANSWER_LINE} {answer}"

"""Synthetic instruction data with planted faults, for measuring the Data Metabolism filters.

Every sample comes from a synthetic scene (`synth.scene`), so its truth is exact: QA samples ask a
scene question (`synth.qa`) and answer it with the short answer, a sentence that ends with it, or
an option letter; description samples answer "Describe the image." with the true caption. A share
of the samples (`fault_rate`) carries exactly one planted fault, recorded in the truth table:

    repetition        a looping answer, or one cut off mid-sentence (finish_reason "length")
    refusal           "I'm sorry, but I can't help with that." and variants
    wrong_language    the right answer in French, German, Spanish or Chinese
    wrong_format      an option letter that does not exist, or a count answered without a number
    wrong_answer      an answer that disagrees with the short answer
    blind_answerable  a question that contains its answer ("What colour is the red star?"), true
                      by the layout (exactly one star, and it is red)
    hallucination     a description naming every object plus one that is not in the image

Deterministic: sample `i` of seed `s` depends only on (s, i).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlcurate.base.atomic import atomic_open
from vlcurate.io.instruct.columns import CHOICES, FINISH_REASON, KIND, OPTION_LETTERS, SHORT_ANSWER
from vlcurate.io.instruct.model import IMAGE_TOKEN, ImageData, InstructSample, Message
from vlcurate.io.instruct.writer import InstructWriter
from vlcurate.synth.caption import Caption, Phrase
from vlcurate.synth.qa import QA, _absent_pair
from vlcurate.synth.scene import Scene, scene_from_seed
from vlcurate.synth.vocab import BACKGROUND_NAMES, COLOUR_NAMES, PLURALS, SHAPES
from vlcurate.vlm.prompts import question_prompt

FAULTS: tuple[str, ...] = (
    "repetition",
    "refusal",
    "wrong_language",
    "wrong_format",
    "wrong_answer",
    "blind_answerable",
    "hallucination",
)
DESCRIBE_PROMPTS = ("Describe the image.", "Describe this image briefly.", "What is shown in this picture?")
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot determine that from the image.",
    "I apologize, but I am unable to answer this question.",
    "As an AI language model, I cannot see images.",
    "Unfortunately, I can't assist with that request.",
    "I'm not able to help with this request.",
    "Sorry, I cannot provide an answer to that.",
)
VAGUE_COUNTS = (
    "There are several objects in the image.",
    "It looks like there are a few of them.",
    "Quite a lot of them, scattered around the picture.",
    "It is hard to say exactly how many there are.",
)
_WORDS = {
    "fr": {
        "red": "rouge",
        "green": "vert",
        "blue": "bleu",
        "yellow": "jaune",
        "orange": "orange",
        "purple": "violet",
        "pink": "rose",
        "cyan": "cyan",
        "black": "noir",
        "gray": "gris",
        "white": "blanc",
        "circle": "cercle",
        "square": "carré",
        "triangle": "triangle",
        "star": "étoile",
        "cross": "croix",
    },
    "de": {
        "red": "rot",
        "green": "grün",
        "blue": "blau",
        "yellow": "gelb",
        "orange": "orange",
        "purple": "lila",
        "pink": "rosa",
        "cyan": "türkis",
        "black": "schwarz",
        "gray": "grau",
        "white": "weiß",
        "circle": "Kreis",
        "square": "Quadrat",
        "triangle": "Dreieck",
        "star": "Stern",
        "cross": "Kreuz",
    },
    "es": {
        "red": "rojo",
        "green": "verde",
        "blue": "azul",
        "yellow": "amarillo",
        "orange": "naranja",
        "purple": "morado",
        "pink": "rosa",
        "cyan": "cian",
        "black": "negro",
        "gray": "gris",
        "white": "blanco",
        "circle": "círculo",
        "square": "cuadrado",
        "triangle": "triángulo",
        "star": "estrella",
        "cross": "cruz",
    },
    "zh": {
        "red": "红色",
        "green": "绿色",
        "blue": "蓝色",
        "yellow": "黄色",
        "orange": "橙色",
        "purple": "紫色",
        "pink": "粉色",
        "cyan": "青色",
        "black": "黑色",
        "gray": "灰色",
        "white": "白色",
        "circle": "圆形",
        "square": "正方形",
        "triangle": "三角形",
        "star": "星形",
        "cross": "十字形",
    },
}
_TEMPLATES = {
    "fr": {
        "count": "Il y a {x} objets dans cette image.",
        "colour": "La couleur de cet objet est {x}.",
        "shape": "La forme de cet objet est un {x}.",
        "yes": "Oui, il y a bien un tel objet dans l'image.",
        "no": "Non, il n'y a pas un tel objet dans l'image.",
        "description": "L'image montre {n} formes géométriques colorées sur un fond {x}.",
    },
    "de": {
        "count": "Auf diesem Bild sind {x} Objekte zu sehen.",
        "colour": "Die Farbe dieses Objekts ist {x}.",
        "shape": "Die Form dieses Objekts ist ein {x}.",
        "yes": "Ja, es gibt ein solches Objekt im Bild.",
        "no": "Nein, es gibt kein solches Objekt im Bild.",
        "description": "Das Bild zeigt {n} bunte geometrische Formen vor einem Hintergrund in {x}.",
    },
    "es": {
        "count": "Hay {x} objetos en esta imagen.",
        "colour": "El color de este objeto es {x}.",
        "shape": "La forma de este objeto es un {x}.",
        "yes": "Sí, hay un objeto así en la imagen.",
        "no": "No, no hay ningún objeto así en la imagen.",
        "description": "La imagen muestra {n} formas geométricas de colores sobre un fondo {x}.",
    },
    "zh": {
        "count": "这张图片里有{x}个物体。",
        "colour": "这个物体的颜色是{x}。",
        "shape": "这个物体的形状是{x}。",
        "yes": "是的，图片中有这样的物体。",
        "no": "不，图片中没有这样的物体。",
        "description": "图片中有{n}个彩色的几何图形，背景是{x}。",
    },
}
_NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_SINGULAR = {v: k for k, v in PLURALS.items()}


@dataclass(frozen=True)
class Planted:
    """One synthetic sample, its image (PNG bytes) and what was planted in it (None: clean)."""

    sample: InstructSample
    image: bytes
    fault: str | None
    detail: str | None


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _count_sentence(question: str, n: int, rng: np.random.Generator) -> str:
    """'How many red stars are there?' -> 'There are 3 red stars in the image.' (digits or words)."""
    noun = question.removeprefix("How many ").removesuffix(" are there?")
    value = str(n) if rng.random() < 0.5 else _NUMBER_WORDS[n]
    if n == 1:
        words = noun.split()
        words[-1] = _SINGULAR.get(words[-1], words[-1].removesuffix("s"))
        return f"There is {value} {' '.join(words)} in the image."
    return f"There are {value} {noun} in the image."


def answer_sentence(qa: QA, answer: str, rng: np.random.Generator) -> str:
    """A full-sentence answer to a scene question that states `answer` (true or not)."""
    q = qa.question
    if qa.kind == "count":
        return _count_sentence(q, int(answer), rng)
    if qa.kind == "exists":
        thing = q.removeprefix("Is there ").removesuffix("?")
        return (
            f"Yes, there is {thing} in the image."
            if answer == "yes"
            else f"No, there is no {thing.split(' ', 1)[1]} in the image."
        )
    if qa.kind == "colour":
        subject = q.removeprefix("What colour is ").removesuffix("?")
        return f"{subject[0].upper()}{subject[1:]} is {answer}."
    subject = q.removeprefix("What shape is ").removesuffix("?")
    article = "an" if answer[0] in "aeiou" else "a"
    return f"{subject[0].upper()}{subject[1:]} is {article} {answer}."


def _wrong_value(qa: QA, rng: np.random.Generator) -> str:
    if qa.kind == "count":
        n = int(qa.answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    if qa.kind == "exists":
        return "no" if qa.answer == "yes" else "yes"
    pool = (
        SHAPES if qa.kind == "shape" else (BACKGROUND_NAMES if "background" in qa.question else COLOUR_NAMES)
    )
    return _pick(rng, [v for v in pool if v != qa.answer])


def _choices(qa: QA, rng: np.random.Generator) -> list[str]:
    pool = (
        SHAPES if qa.kind == "shape" else (BACKGROUND_NAMES if "background" in qa.question else COLOUR_NAMES)
    )
    others = [v for v in pool if v != qa.answer]
    picked = [others[int(i)] for i in rng.permutation(len(others))[: min(3, len(others))]]
    options = [qa.answer, *picked]
    return [options[int(i)] for i in rng.permutation(len(options))]


def _blind_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    """A question whose answer is in its own words, true by the layout, or None when the scene has none."""
    objs = scene.layout.objects
    found: list[QA] = []
    for s in SHAPES:
        same = [o for o in objs if o.shape == s]
        if len(same) == 1:
            found.append(QA(f"What colour is the {same[0].colour} {s}?", same[0].colour, "colour"))
    for c in COLOUR_NAMES:
        same = [o for o in objs if o.colour == c]
        if len(same) == 1:
            found.append(QA(f"What shape is the {c} {same[0].shape}?", same[0].shape, "shape"))
    return found[int(rng.integers(len(found)))] if found else None


def _description(scene: Scene, rng: np.random.Generator, extra: Phrase | None = None) -> str:
    cap = scene.caption
    if extra is not None:
        phrases = list(cap.phrases)
        phrases.insert(int(rng.integers(len(phrases) + 1)), extra)
        cap = Caption(tuple(phrases), cap.template, cap.background)
    return _sentence(cap.text)


def _loop(base: str, rng: np.random.Generator) -> str:
    """A generation stuck in a loop: a phrase of the answer repeated many times."""
    words = base.rstrip(".").split()
    start = int(rng.integers(max(1, len(words) - 3)))
    span = " ".join(words[start : start + int(rng.integers(2, 5))])
    times = int(rng.integers(6, 16))
    if rng.random() < 0.5:
        return base + " " + " ".join([base] * (times // 2))
    return " ".join(words) + " " + " ".join([f"and {span}"] * times)


def _truncate(base: str, rng: np.random.Generator) -> str:
    cut = int(len(base) * rng.uniform(0.4, 0.75))
    return base[:cut].rstrip(" ,")


def _foreign(scene: Scene, qa: QA | None, rng: np.random.Generator) -> tuple[str, str]:
    lang = _pick(rng, ("fr", "de", "es", "zh"))
    words, tpl = _WORDS[lang], _TEMPLATES[lang]
    if qa is None:
        return lang, tpl["description"].format(n=scene.n_objects, x=words[scene.background])
    if qa.kind == "count":
        return lang, tpl["count"].format(x=qa.answer)
    if qa.kind == "exists":
        return lang, tpl[qa.answer]
    return lang, tpl[qa.kind].format(x=words[qa.answer])


def make_planted(index: int, seed: int = 0, fault_rate: float = 0.5) -> Planted:
    """Sample `index` of stream `seed`: a clean or faulty QA or description sample."""
    scene = scene_from_seed(seed, index)
    rng = np.random.default_rng([seed, index, 7])
    fault: str | None = _pick(rng, FAULTS) if rng.random() < fault_rate else None
    detail: str | None = None
    qa: QA | None = None
    if fault == "blind_answerable":
        qa = _blind_question(scene, rng)
        if qa is None:
            fault = "wrong_answer"  # no object with a unique shape or colour: plant another fault
    describe = fault == "hallucination" or (
        fault in (None, "repetition", "refusal", "wrong_language") and rng.random() < 0.3
    )
    if not describe and qa is None:
        candidates = scene.qa
        if fault == "wrong_format":
            candidates = tuple(q for q in scene.qa if q.kind in ("count", "colour", "shape"))
        qa = candidates[int(rng.integers(len(candidates)))]
    meta: dict[str, object] = {FINISH_REASON: "stop"}
    if describe:
        question = _pick(rng, DESCRIBE_PROMPTS)
        meta[KIND] = "description"
        extra = None
        if fault == "hallucination":
            colour, shape = _absent_pair(scene.layout, rng)
            extra = Phrase(1, colour, shape)
            detail = f"names {extra.text!r}, which is not in the image"
        answer = _description(scene, rng, extra)
    else:
        assert qa is not None
        meta[KIND] = qa.kind
        meta[SHORT_ANSWER] = qa.answer
        if fault == "blind_answerable":
            detail = f"the question names its answer {qa.answer!r}"
        mc = qa.kind in ("colour", "shape") and (
            rng.random() < 0.3 or (fault == "wrong_format" and qa.kind != "count")
        )
        if mc and fault not in ("wrong_language", "repetition", "blind_answerable"):
            choices = _choices(qa, rng)
            letter = OPTION_LETTERS[choices.index(qa.answer)]
            meta[CHOICES], meta[SHORT_ANSWER] = choices, letter
            question = question_prompt(qa.question, choices)
            shown = letter
            if fault == "wrong_answer":
                shown = _pick(
                    rng, [OPTION_LETTERS[i] for i in range(len(choices)) if OPTION_LETTERS[i] != letter]
                )
                detail = f"answered {shown}, the right option is {letter}"
            elif fault == "wrong_format":
                shown = OPTION_LETTERS[len(choices) + int(rng.integers(3))]
                detail = f"answered option {shown}, only A-{OPTION_LETTERS[len(choices) - 1]} exist"
            answer = (
                shown
                if rng.random() < 0.7 or fault == "wrong_format"
                else f"{shown}. {choices[OPTION_LETTERS.index(shown)]}"
            )
        elif rng.random() < 0.5 and fault not in ("repetition", "wrong_language"):
            question = question_prompt(qa.question)
            value = qa.answer
            if fault == "wrong_answer":
                value = _wrong_value(qa, rng)
                detail = f"answered {value!r}, the short answer is {qa.answer!r}"
            answer = value[0].upper() + value[1:]
        else:
            question = qa.question
            value = qa.answer
            if fault == "wrong_answer":
                value = _wrong_value(qa, rng)
                detail = f"answered {value!r}, the short answer is {qa.answer!r}"
            answer = answer_sentence(qa, value, rng)
        if fault == "wrong_format" and qa.kind == "count":
            answer = _pick(rng, VAGUE_COUNTS)
            detail = "a count question answered without a number"
    if fault == "repetition":
        if rng.random() < 0.5:
            answer = _loop(answer, rng)
            meta[FINISH_REASON] = "length" if rng.random() < 0.5 else "stop"
            detail = "looping answer"
        else:
            answer = _truncate(answer, rng)
            meta[FINISH_REASON] = "length"
            detail = "cut off by the length limit"
    elif fault == "refusal":
        answer = _pick(rng, REFUSALS)
        detail = "refusal"
    elif fault == "wrong_language":
        lang, answer = _foreign(scene, None if describe else qa, rng)
        detail = f"answered in {lang}"
    sample = InstructSample(
        id=f"synth-{seed}-{index:07d}",
        images=[ImageData(path=f"{index:07d}.png")],
        messages=[
            Message(role="user", content=f"{IMAGE_TOKEN}\n{question}"),
            Message(role="assistant", content=answer),
        ],
        meta=meta,
    )
    return Planted(sample, scene.encode("png"), fault, detail)


def iter_planted(n: int, seed: int = 0, fault_rate: float = 0.5, start: int = 0) -> Iterator[Planted]:
    """Samples `start` .. `start + n - 1` of stream `seed`."""
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
    for i in range(start, start + n):
        yield make_planted(i, seed, fault_rate)


def write_planted(
    out: Path, n: int, *, seed: int = 0, fault_rate: float = 0.5, fmt: str = "llava"
) -> dict[str, int]:
    """Write `n` samples as `out/data.json` (or `data.parquet` for hf) with images, and `out/truth.jsonl`.

    Returns the count of each fault (and `clean`)."""
    out.mkdir(parents=True, exist_ok=True)
    writer = InstructWriter(out, fmt, name="data")
    counts: dict[str, int] = {}
    with atomic_open(out / "truth.jsonl") as truth:
        for p in iter_planted(n, seed, fault_rate):
            writer.add(p.sample, [p.image])
            row = {"uid": p.sample.uid, "id": p.sample.id, "fault": p.fault, "detail": p.detail}
            truth.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[p.fault or "clean"] = counts.get(p.fault or "clean", 0) + 1
    writer.close()
    return counts

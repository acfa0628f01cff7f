"""A synthetic benchmark with known answers, and training samples to fix what it finds.

`make_benchmark(out, n, seed)` writes `out/bench.jsonl` and `out/images/*.png`: questions about
synthetic scenes (`synth.scene`), every answer exact, one JSON object a line in the format
`vlcurate eval` reads:

    {"id": "b0-000003", "image": "images/000000.png", "question": "What colour is the star?",
     "type": "mc", "choices": ["blue", "red", "pink", "cyan"], "answer": "red", "category": "colour",
     "meta": {"form": "colour_of", "shape": "star", "colour": "red"},
     "description": "a red star and two blue circles on a gray background"}

Categories: `count` (short numeric answers), `exists` (yes/no), `colour` and `shape` (multiple choice
or short), `background` (multiple choice), `caption` (a detailed caption scored against the true
one). `meta` names the attributes a question is about (colour, shape, and the question form), so a
diagnosis can find failures that gather on one attribute (colour=red); `description` is the true
detailed caption, for answering from a description.

`make_training_samples(out, n, seed, focus)` writes instruction data (`vlcurate.io.instruct`,
LLaVA JSON by default) about other scenes of the same world (a disjoint scene stream, so training
never shows a benchmark image), optionally only about one attribute: `focus={"colour": "red"}`,
`{"shape": "circle"}`, `{"category": "count"}` (keys: colour, shape, category, form). This is what
a plan's "collect more data about X" turns into offline, and what the weakened offline VLM
remembers (`vlcurate vlm serve --memory`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlcurate.base.atomic import atomic_open
from vlcurate.io.instruct.columns import CHOICES, KIND, SHORT_ANSWER
from vlcurate.io.instruct.model import IMAGE_TOKEN, ImageData, InstructSample, Message
from vlcurate.io.instruct.writer import InstructWriter
from vlcurate.synth.caption import Caption, Phrase, group_objects
from vlcurate.synth.qa import _absent_pair
from vlcurate.synth.scene import Scene, scene_from_seed
from vlcurate.synth.vocab import BACKGROUND_NAMES, COLOUR_NAMES, PLURALS, SHAPES
from vlcurate.vlm import prompts as vp

CATEGORIES: tuple[str, ...] = ("count", "exists", "colour", "shape", "background", "caption")
FOCUS_KEYS: tuple[str, ...] = ("colour", "shape", "category", "form")
TRAIN_STREAM = 1_000_000  # training scenes are scene_from_seed(seed, TRAIN_STREAM + i): never a bench image
_BG_TEMPLATE = 1  # "{objects} on a {background} background"


@dataclass(frozen=True)
class Item:
    """One question about one scene, with everything known about it."""

    question: str
    type: str  # mc, short, yesno, caption
    answer: str
    category: str
    meta: dict[str, Any]
    choices: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def detailed_caption(scene: Scene) -> str:
    """Every object group (count, colour, shape) and the background: the reference for caption items
    and descriptions, in the words the offline VLM's detailed captions use."""
    groups = group_objects(scene.layout.objects)
    phrases = tuple(Phrase(len(objs), c, s) for (c, s), objs in groups.items())
    return Caption(phrases, _BG_TEMPLATE, scene.background).text


def _choices(answer: str, pool: tuple[str, ...], rng: np.random.Generator, k: int = 4) -> list[str]:
    others = [v for v in pool if v != answer]
    picked = [others[int(i)] for i in rng.permutation(len(others))[: k - 1]]
    options = [answer, *picked]
    return [options[int(i)] for i in rng.permutation(len(options))]


def scene_items(
    scene: Scene, rng: np.random.Generator, categories: tuple[str, ...] = CATEGORIES
) -> list[Item]:
    """The benchmark questions of one scene, at most one per category, in `CATEGORIES` order."""
    objs = scene.layout.objects
    groups = group_objects(objs)
    out: list[Item] = []
    if "count" in categories:
        if rng.random() < 0.25:
            out.append(
                Item("How many objects are there?", "short", str(len(objs)), "count", {"form": "count_all"})
            )
        else:
            present = rng.random() < 0.6
            keys = list(groups)
            c, s = keys[int(rng.integers(len(keys)))] if present else _absent_pair(scene.layout, rng)
            n = len(groups.get((c, s), []))
            meta = {"form": "count", "colour": c, "shape": s, "present": n > 0}
            out.append(Item(f"How many {c} {PLURALS[s]} are there?", "short", str(n), "count", meta))
    if "exists" in categories:
        present = rng.random() < 0.5
        keys = list(groups)
        c, s = keys[int(rng.integers(len(keys)))] if present else _absent_pair(scene.layout, rng)
        meta = {"form": "exists", "colour": c, "shape": s, "present": present}
        out.append(Item(f"Is there a {c} {s}?", "yesno", "yes" if present else "no", "exists", meta))
    mc = rng.random() < 0.5
    if "colour" in categories:
        unique = [s for s in SHAPES if sum(o.shape == s for o in objs) == 1]
        if unique:
            s = unique[int(rng.integers(len(unique)))]
            c = next(o.colour for o in objs if o.shape == s)
            meta = {"form": "colour_of", "shape": s, "colour": c}
            choices = _choices(c, COLOUR_NAMES, rng) if mc else None
            out.append(Item(f"What colour is the {s}?", "mc" if mc else "short", c, "colour", meta, choices))
    if "shape" in categories:
        unique_c = [c for c in COLOUR_NAMES if sum(o.colour == c for o in objs) == 1]
        if unique_c:
            c = unique_c[int(rng.integers(len(unique_c)))]
            s = next(o.shape for o in objs if o.colour == c)
            meta = {"form": "shape_of", "colour": c, "shape": s}
            choices = _choices(s, SHAPES, rng) if not mc else None
            out.append(
                Item(f"What shape is the {c} object?", "short" if mc else "mc", s, "shape", meta, choices)
            )
    if "background" in categories:
        bg = scene.background
        meta = {"form": "background", "background": bg}
        out.append(
            Item(
                "What colour is the background?",
                "mc",
                bg,
                "background",
                meta,
                _choices(bg, BACKGROUND_NAMES, rng, 3),
            )
        )
    if "caption" in categories:
        meta = {"form": "caption", "n_objects": len(objs)}
        out.append(Item(vp.caption_prompt("detailed"), "caption", detailed_caption(scene), "caption", meta))
    return out


def _check_categories(categories: tuple[str, ...]) -> None:
    bad = [c for c in categories if c not in CATEGORIES]
    if bad or not categories:
        raise ValueError(f"unknown categories {bad}; choose from {', '.join(CATEGORIES)}")


def iter_benchmark(
    n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES
) -> Iterator[tuple[int, Scene, Item]]:
    """(scene index, scene, item) for the first `n` items of stream `seed`."""
    _check_categories(categories)
    made = 0
    index = 0
    while made < n:
        scene = scene_from_seed(seed, index)
        for item in scene_items(scene, np.random.default_rng([seed, index, 19]), categories):
            if made >= n:
                break
            yield index, scene, item
            made += 1
        index += 1


def make_benchmark(out: Path, n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> Path:
    """Write `out/bench.jsonl` (n items) and the PNG of every scene they ask about; returns the JSONL path."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "bench.jsonl"
    written: set[int] = set()
    with atomic_open(path) as fh:
        for k, (index, scene, item) in enumerate(iter_benchmark(n, seed, categories)):
            image = f"images/{index:06d}.png"
            if index not in written:
                (out / image).write_bytes(scene.encode("png"))
                written.add(index)
            row = {
                "id": f"b{seed}-{k:06d}",
                "image": image,
                "question": item.question,
                "type": item.type,
                "choices": item.choices,
                "answer": item.answer,
                "category": item.category,
                "meta": {**item.meta, "scene": index},
                "description": detailed_caption(scene),
            }
            fh.write(json.dumps(row) + "\n")
    return path


def _matches(item: Item, focus: Mapping[str, str]) -> bool:
    for key, want in focus.items():
        have = item.category if key == "category" else item.meta.get(key)
        if have != want:
            return False
    return True


def _check_focus(focus: Mapping[str, str]) -> None:
    known = {"colour": COLOUR_NAMES, "shape": SHAPES, "category": CATEGORIES}
    for key, value in focus.items():
        if key not in FOCUS_KEYS:
            raise ValueError(f"unknown focus key {key!r}; expected some of {', '.join(FOCUS_KEYS)}")
        if key in known and value not in known[key]:
            raise ValueError(
                f"focus {key}={value!r} is not in the world; expected one of {', '.join(known[key])}"
            )


def training_sample(scene_index: int, k: int, seed: int, item: Item) -> InstructSample:
    """One item as an instruction sample (short answers; multiple choice answered with the letter)."""
    meta: dict[str, Any] = {KIND: item.category, "category": item.category, "attributes": item.meta}
    if item.type == "caption":
        question, answer = item.question, item.answer[0].upper() + item.answer[1:] + "."
        meta[KIND] = "description"
    elif item.choices:
        question = vp.question_prompt(item.question, item.choices)
        answer = "ABCDEFGHIJ"[item.choices.index(item.answer)]
        meta[CHOICES] = item.choices
        meta[SHORT_ANSWER] = answer
    else:
        question, answer = vp.question_prompt(item.question), item.answer
        meta[SHORT_ANSWER] = answer
    return InstructSample(
        id=f"train-{seed}-{scene_index:07d}-{k}",
        images=[ImageData(path=f"{scene_index:07d}.png")],
        messages=[
            Message(role="user", content=f"{IMAGE_TOKEN}\n{question}"),
            Message(role="assistant", content=answer),
        ],
        meta=meta,
    )


def iter_training_samples(
    n: int, seed: int = 0, focus: Mapping[str, str] | None = None, max_scenes: int | None = None
) -> Iterator[tuple[InstructSample, bytes]]:
    """`n` samples (and their PNG bytes) about training scenes; only items matching `focus` when given."""
    focus = dict(focus or {})
    _check_focus(focus)
    limit = max_scenes if max_scenes is not None else max(1000, 200 * n)
    made = 0
    for i in range(limit):
        if made >= n:
            return
        index = TRAIN_STREAM + i
        scene = scene_from_seed(seed, index)
        items = [
            it for it in scene_items(scene, np.random.default_rng([seed, index, 23])) if _matches(it, focus)
        ]
        png = scene.encode("png") if items else b""
        for k, item in enumerate(items):
            if made >= n:
                return
            yield training_sample(index, k, seed, item), png
            made += 1
    raise ValueError(f"only {made} of {n} training samples match focus {focus} in {limit} scenes")


def make_training_samples(
    out: Path, n: int, seed: int = 0, focus: Mapping[str, str] | None = None, *, fmt: str = "llava"
) -> Path:
    """Write `n` training samples as `out/data.json` (data.parquet for hf) with images; returns the file."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    out = Path(out)
    writer = InstructWriter(out, fmt, name="data")
    try:
        for sample, png in iter_training_samples(n, seed, focus):
            writer.add(sample, [png])
    finally:
        path = writer.close()
    return path

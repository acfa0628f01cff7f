"""The training pool a diagnosis compares failures with: instruction samples as question, answer,
short answer and image, read from an instruction-data file or from rows of a dataset version.

Only what diagnosis needs is kept; a label is "wrong" when the sample's own answer disagrees with
its ground-truth short answer (`ops.instruct_ops.answers_agree`, the `answer_agreement` rule).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcurate.io.instruct.columns import CHOICES, SHORT_ANSWER, parse_messages
from vlcurate.io.instruct.model import ASSISTANT, USER, strip_placeholders
from vlcurate.io.instruct.reader import iter_instruct_samples, plan_instruct
from vlcurate.ops.instruct_ops import answers_agree
from vlcurate.vlm.prompts import SHORT_ANSWER_SUFFIX

INSTRUCT_SUFFIXES = (".json", ".jsonl", ".parquet")
_NOT_META = ("id", "image", "images", "messages", "conversations", "question", "answer", "meta")


@dataclass
class TrainItem:
    id: str
    question: str
    answer: str
    short_answer: str | None = None
    choices: list[str] | None = None
    image: bytes | str | None = None  # bytes, or a readable path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def wrong_label(self) -> bool:
        if not self.short_answer or not self.answer:
            return False
        return not answers_agree(self.answer, self.short_answer, self.choices)

    @property
    def text(self) -> str:
        return f"{self.question} {self.answer} {self.short_answer or ''}".lower()


def clean_question(text: str) -> str:
    """The question itself: no image placeholder, no answer-format instructions, no option list."""
    t = strip_placeholders(text).replace(SHORT_ANSWER_SUFFIX, "").strip()
    return t.split("\nA. ")[0].strip()


def instruct_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir() if p.suffix in INSTRUCT_SUFFIXES and p.stem != "truth")
        if found:
            return found
    raise FileNotFoundError(f"{path}: no instruction data (.json, .jsonl or .parquet) there")


def read_instruct_pool(path: str | Path) -> list[TrainItem]:
    """Every readable sample of an instruction-data file or folder (as `vlcurate run` reads them)."""
    files = instruct_files(Path(path))
    refs, plan = plan_instruct(files)
    items: list[TrainItem] = []
    for ref in refs:
        for s in iter_instruct_samples(ref, plan[ref.name]):
            if s.error is not None:
                continue
            meta = json.loads(s.meta["meta"]) if s.meta.get("meta") else {}
            msgs = parse_messages(s.meta.get("messages"))
            items.append(_item(s.key, [(m.role, m.content) for m in msgs], meta, s.image))
    return items


def _item(
    sid: str, turns: list[tuple[str, str]], meta: Mapping[str, Any], image: bytes | str | None
) -> TrainItem:
    q = next((c for r, c in turns if r == USER), "")
    a = next((c for r, c in turns if r == ASSISTANT), "")
    choices = meta.get(CHOICES)
    short = meta.get(SHORT_ANSWER)
    return TrainItem(
        id=sid,
        question=clean_question(q),
        answer=a.strip(),
        short_answer=str(short) if short is not None else None,
        choices=list(choices) if isinstance(choices, list) else None,
        image=image,
        meta=dict(meta),
    )


def items_from_rows(rows: Iterable[Mapping[str, Any]], image_root: Path | None = None) -> list[TrainItem]:
    """Training items from version rows or dicts: `messages`/`conversations` (lists or JSON) or
    `question`/`answer`, `meta` (dict or JSON), and `image` (a path, relative to `image_root`)."""
    out: list[TrainItem] = []
    for row in rows:
        meta = row.get("meta") or {}
        if isinstance(meta, str):
            meta = json.loads(meta) if meta.strip() else {}
        flat = {k: v for k, v in row.items() if k not in _NOT_META}  # a stored version keeps meta flat
        meta = {**flat, **meta}
        turns = _turns(row)
        img = row.get("image") or row.get("images")
        if isinstance(img, list):
            img = img[0] if img else None
        if isinstance(img, str) and image_root is not None and not Path(img).is_absolute():
            img = str(image_root / img)
        out.append(_item(str(row.get("id")), turns, meta, img if isinstance(img, bytes | str) else None))
    return out


def _turns(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    for key in ("messages", "conversations"):
        conv = row.get(key)
        if isinstance(conv, str) and conv.strip():
            conv = json.loads(conv)
        if isinstance(conv, list) and conv:
            turns = []
            for m in conv:
                role = m.get("role") or {"human": USER, "gpt": ASSISTANT}.get(
                    m.get("from", ""), m.get("from")
                )
                turns.append((str(role), str(m.get("content") or m.get("value") or "")))
            return turns
    return [(USER, str(row.get("question") or "")), (ASSISTANT, str(row.get("answer") or ""))]


def split_version_ref(spec: str) -> tuple[Path, str | None] | None:
    """`STORE@VERSION` or a store folder (its `main`), else None (an instruction-data path)."""
    root, _, ref = spec.partition("@")
    if (Path(root) / "store.json").is_file():
        return Path(root), ref or None
    return None


def load_train_pool(spec: str) -> list[TrainItem]:
    """The training pool named on the command line: a version store (STORE or STORE@VERSION) or an
    instruction-data file or folder."""
    found = split_version_ref(spec)
    if found is None:
        return read_instruct_pool(spec)
    from vlcurate.versions.store import VersionStore

    root, ref = found
    store = VersionStore(root)
    ref = ref or store.head("main")
    if ref is None:
        raise ValueError(f"{root}: the store has no `main` version; name one as {root}@VERSION")
    return items_from_rows(store.iter_samples(ref))

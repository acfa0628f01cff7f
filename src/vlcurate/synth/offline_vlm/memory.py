"""The weakened server's retrieval memory: which attributes the training data it was given covers.

`vlcurate vlm serve --memory PATH` (and `POST /admin/memory`) reads instruction samples (LLaVA /
ShareGPT / OpenAI JSON or JSONL, HF Parquet, or a folder of them such as a `vlcurate version export`)
and counts, per attribute, the samples that teach it: a QA turn about a red object counts for
`colour=red`, a counting question answered with a number for `kind=count`. A refusal teaches
nothing and is not counted, so only data that answers the weak questions cures a weakness.
Images are not read: the memory stands in for "the model was trained on this", not a lookup.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcurate.io.instruct.columns import CHOICES, OPTION_LETTERS, turns
from vlcurate.io.instruct.formats import SampleError, parse_record
from vlcurate.io.instruct.hf import iter_hf_rows
from vlcurate.io.instruct.model import InstructSample
from vlcurate.synth.offline_vlm.questions import parse_question
from vlcurate.synth.vocab import COLOUR_NAMES, SHAPES
from vlcurate.vlm.prompts import is_refusal, normalize_answer

Attribute = tuple[str, str]  # ("colour", "red"), ("shape", "circle"), ("kind", "count")
MEMORY_SUFFIXES = (".json", ".jsonl", ".parquet")
_NUMBER = re.compile(r"\b(\d+|zero|none|one|two|three|four|five)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")


class MemoryLoadError(ValueError):
    """A memory path that cannot be read (missing, not instruction data)."""


@dataclass
class Memory:
    """Per-attribute counts of the samples that teach it, and where they came from."""

    counts: Counter[Attribute] = field(default_factory=Counter)
    samples: int = 0
    skipped: int = 0  # records that are not instruction samples
    files: list[str] = field(default_factory=list)

    def count(self, attribute: Attribute) -> int:
        return self.counts.get(attribute, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "skipped": self.skipped,
            "files": self.files,
            "coverage": {f"{k}={v}": n for (k, v), n in sorted(self.counts.items())},
        }


def sample_attributes(sample: InstructSample) -> set[Attribute]:
    """The attributes one training sample teaches (empty for refusals and unrelated samples)."""
    out: set[Attribute] = set()
    choices = sample.meta.get(CHOICES)
    for question, answer in turns(list(sample.messages)):
        if not answer.strip() or is_refusal(answer):
            continue
        q = parse_question(question)
        words = set(_WORD.findall(answer.lower()))
        short = normalize_answer(answer)
        if isinstance(choices, list) and len(short) == 1 and short.upper() in OPTION_LETTERS:
            k = OPTION_LETTERS.index(short.upper())
            if k < len(choices):
                words |= set(_WORD.findall(str(choices[k]).lower()))
        if q is not None:
            if q.kind == "count" and not _NUMBER.search(answer):
                continue  # a counting question answered without a number teaches no counting
            out.add(("kind", q.kind))
            if q.colour:
                out.add(("colour", q.colour))
            if q.shape:
                out.add(("shape", q.shape))
        out |= {("colour", c) for c in COLOUR_NAMES if c in words}
        out |= {("shape", s) for s in SHAPES if s in words or f"{s}s" in words or f"{s}es" in words}
    return out


def _records(path: Path) -> Iterator[InstructSample | SampleError]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        for _, item in iter_hf_rows(str(path), None, 0):
            yield item
        return
    text = path.read_text(encoding="utf-8")
    if name.endswith(".jsonl"):
        records: list[Any] = []
        for no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise MemoryLoadError(f"{path}:{no}: not JSON: {exc}") from None
    else:
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise MemoryLoadError(f"{path}: not a JSON file: {exc}") from None
        records = loaded if isinstance(loaded, list) else [loaded]
    for i, rec in enumerate(records):
        try:
            yield parse_record(rec, source=str(path), index=i, fmt="auto")
        except SampleError as exc:
            yield exc


def memory_files(path: Path) -> list[Path]:
    """The instruction files under `path` (the file itself, or every JSON/JSONL/Parquet below a folder)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEMORY_SUFFIXES)
        skip = ("truth", "manifest", "summary", "config", "version", "missing")  # bookkeeping beside the data
        found = [p for p in found if not p.name.startswith(skip)]
        if not found:
            raise MemoryLoadError(f"memory folder {path} holds no .json, .jsonl or .parquet instruction file")
        return found
    raise MemoryLoadError(f"memory path not found: {path}")


def load_memory(path: str | Path) -> Memory:
    """Read every instruction sample under `path` and count the attributes each teaches."""
    mem = Memory()
    for file in memory_files(Path(path)):
        mem.files.append(str(file))
        for item in _records(file):
            if isinstance(item, SampleError):
                mem.skipped += 1
                continue
            mem.samples += 1
            for attribute in sample_attributes(item):
                mem.counts[attribute] += 1
    return mem

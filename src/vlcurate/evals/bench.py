"""Benchmark files as `BenchItem`s: JSONL, JSON, CSV/TSV and Parquet, plus the instruction formats.

One record per question. Field names are matched loosely, so common layouts read as they are:

    id        id | question_id | index                      (default: the line or row number)
    question  question | prompt | query                      (caption items may leave it out)
    choices   choices | options (list, or {"A": .., "B": ..}), or columns A, B, C, ... (MMBench TSV)
    answer    answer | label | gt_answer | ground_truth | answers | captions | references (a list:
              several accepted answers, or caption references)
    type      mc | short | yesno | caption (default: mc with choices, yesno for yes/no answers,
              caption when captions are given, else short)
    category  category | kind | task                         (default "all")
    image     image | image_path | img | file_name: a path (relative to the benchmark file), an
              http(s)/data URL, embedded bytes ({bytes, path} in HF Parquet), or the image itself
              in base64 (VLMEvalKit/MMBench TSV; there a short value naming another row's index
              means that row's image)
              image_1 or images when there is no image field; a list (or VLMEvalKit's list of
              base64 strings as text) is several images, as are image_2, image_3, ... (MMMU)
    hint      hint | context: put before the question as "Hint: ..." (MMBench, ScienceQA)
    description  a text description of the image (for `image_mode=description`, `description_from=bench`)
    meta      an object; every other field is added to it

Records in an instruction format (LLaVA `conversations`, OpenAI `messages`, as written by
`vlcurate.io.instruct`) become items too: the first user turn is the question (a trailing option
list or "answer with a single word" instruction is taken back off), the `short_answer` meta or the
first assistant turn the answer, `choices` meta the options.

A file that cannot be read as a benchmark (bad JSON, a record that is not an object, no question,
repeated ids) raises `BenchFileError` naming the file and line (row for Parquet) of the first
problems. A missing answer or image is not a file error: the item is kept and the run marks it.
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from vlcurate.base.images import sniff_image_ext
from vlcurate.evals.extract import LETTERS, normalize
from vlcurate.evals.results import DEFAULT_CATEGORY, QuestionType
from vlcurate.io.instruct.formats import SampleError, parse_record
from vlcurate.io.instruct.model import USER, strip_placeholders
from vlcurate.io.json_reader import default_image_root, load_json_object
from vlcurate.io.jsonscan import JsonScanError, array_elements
from vlcurate.io.shards import ShardReadError
from vlcurate.vlm import prompts as vp

BENCH_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
_ID = ("id", "question_id", "index")
_QUESTION = ("question", "prompt", "query", "text")  # text: POPE, LLaVA-Bench
_CHOICES = ("choices", "options")
_ANSWER = ("answer", "label", "gt_answer", "ground_truth")
_ANSWERS = ("answers", "captions", "references")
_CATEGORY = ("category", "kind", "task")
_IMAGE = ("image", "image_path", "img", "file_name", "image_file", "imagename", "image_1", "images")
_MORE_IMAGES = re.compile(r"^image_([2-9]|[1-9][0-9])$")  # MMMU: image_1 .. image_7
_HINT = ("hint", "context")
_KNOWN = {
    *_ID,
    *_QUESTION,
    *_CHOICES,
    *_ANSWER,
    *_ANSWERS,
    *_CATEGORY,
    *_IMAGE,
    *_HINT,
    "type",
    "meta",
    "description",
}
_MAX_LISTED = 5
_B64_MIN = 64  # VLMEvalKit: an image value of at most 64 characters names another row, longer is base64
_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")
CSV_FIELD_LIMIT = 1 << 30  # a base64 image in a TSV cell is far over csv's default 128 KiB
NEWLINE = b"\n"


class BenchFileError(ValueError):
    """A benchmark file that cannot be read; the message names the file and the lines at fault."""


class ItemImage(BaseModel):
    """One more image of an item: as written, resolved path or URL, embedded bytes."""

    image: str | None = None
    image_ref: str | None = None
    image_bytes: bytes | None = Field(default=None, repr=False)


class BenchItem(BaseModel):
    """One benchmark question, with its image as given and resolved."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    type: QuestionType
    choices: list[str] | None = None
    answers: list[str] = Field(default_factory=list)  # accepted answers / caption references; [] = missing
    category: str = DEFAULT_CATEGORY
    image: str | None = None  # as written (for the run log)
    image_ref: str | None = None  # local path resolved against the file, or a URL
    image_bytes: bytes | None = Field(default=None, repr=False)
    more_images: list[ItemImage] = Field(default_factory=list)  # image_2, image_3, ... in order
    description: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    where: str = ""  # file:line, for messages

    @property
    def answer(self) -> str | None:
        return self.answers[0] if self.answers else None


def _first(rec: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if n in rec and rec[n] is not None and rec[n] != "":
            return rec[n]
    return None


def _text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, dict | list)
        else str(value)
    )


def _choices(rec: dict[str, Any], where: str) -> list[str] | None:
    value = _first(rec, _CHOICES)
    if value is None:
        for names in (
            LETTERS,
            [f"choice_{x.lower()}" for x in LETTERS],
            [f"option_{x.lower()}" for x in LETTERS],
        ):
            cols = [rec.get(k) for k in names]  # MMBench's A, B, ...; SEED-Bench's choice_a, ...
            found = [str(c) for c in cols if c is not None and str(c).strip() not in ("", "nan", "None")]
            if found:
                return found
        return None
    if isinstance(value, str):
        parsed = _literal(value)
        if parsed is None:
            raise BenchFileError(f"{where}: choices must be a list, got the text {value[:60]!r}")
        value = parsed
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value)]
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    raise BenchFileError(f"{where}: choices must be a non-empty list or an object of lettered options")


def _literal(text: str) -> list[Any] | dict[str, Any] | None:
    """A list or object written as text: JSON, or a Python literal (MMMU's options are
    "['a', 'b']", as pandas wrote them); None when it is neither."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        return value if isinstance(value, list | dict) else None
    if text[:1] not in "[{":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list | dict) else None


def _answers(rec: dict[str, Any], choices: list[str] | None) -> list[str]:
    value = _first(rec, _ANSWER)
    if value is None:
        value = _first(rec, _ANSWERS)
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool) and choices and 0 <= value < len(choices):
        return [LETTERS[value]]  # ScienceQA, AI2D: the answer is the option's index
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        value = _literal(value) or value
    items = value if isinstance(value, list) else [value]
    # VQAv2 / VizWiz: [{"answer": ..., "answer_confidence": ...}, ...]
    items = [v.get("answer") if isinstance(v, dict) else v for v in items]
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def _image(value: Any, base: Path) -> tuple[str | None, str | None, bytes | None]:
    """(as written, resolved path or URL, embedded bytes)."""
    if value is None:
        return None, None, None
    if isinstance(value, bytes):
        return "<embedded>", None, value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return str(path or "<embedded>"), None, bytes(data)
        value = path
        if not value:
            return None, None, None
    ref = str(value).strip()
    data = _base64_image(ref)  # first: a JPEG's base64 starts "/9j/", which reads as an absolute path
    if data is not None:
        return "<base64>", None, data
    if ref.startswith(("http://", "https://", "data:")) or Path(ref).is_absolute():
        return ref, ref, None
    return ref, str(base / ref), None


def _image_list(value: Any) -> tuple[Any, list[Any]]:
    """(the first image, the rest) of an image field that holds several: a list of paths or bytes,
    or VLMEvalKit's multi-image cell, a list of base64 strings written as text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        parsed = _literal(value)
        if isinstance(parsed, list):
            value = parsed
    if isinstance(value, list | tuple):
        return (value[0], list(value[1:])) if value else (None, [])
    return value, []


def _base64_image(text: str) -> bytes | None:
    """The bytes of an image written inline in base64, or None when `text` is not one (a path)."""
    if len(text) <= _B64_MIN or not _B64.fullmatch(text[:4096]):
        return None
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if sniff_image_ext(data[:16]) else None


def _infer_type(
    rec_type: Any, choices: list[str] | None, answers: list[str], rec: dict[str, Any], where: str
) -> str:
    if rec_type is not None:
        t = str(rec_type).strip().lower()
        aliases = {"multiple_choice": "mc", "multiple-choice": "mc", "yes_no": "yesno", "yes/no": "yesno"}
        t = aliases.get(t, t)
        if t not in ("mc", "short", "yesno", "caption"):
            raise BenchFileError(f"{where}: type must be mc, short, yesno or caption, got {rec_type!r}")
        if t == "mc" and not choices:
            raise BenchFileError(f"{where}: a multiple-choice item needs choices")
        return t
    if choices:
        return "mc"
    if _first(rec, ("captions", "references")) is not None:
        return "caption"
    if answers and all(normalize(a) in ("yes", "no") for a in answers):
        return "yesno"
    return "short"


def _split_prompt(text: str) -> tuple[str, list[str] | None]:
    """A question prompt made by `vlm.prompts.question_prompt`, taken back apart."""
    t = text.strip()
    if t.endswith(vp.SHORT_ANSWER_SUFFIX):
        return t[: -len(vp.SHORT_ANSWER_SUFFIX)].strip(), None
    suffix = "Answer with the option's letter."
    if t.endswith(suffix):
        lines = t[: -len(suffix)].rstrip().splitlines()
        choices: list[str] = []
        while lines and len(lines[-1]) > 3 and lines[-1][0] in LETTERS and lines[-1][1:3] == ". ":
            choices.insert(0, lines.pop()[3:].strip())
        return "\n".join(lines).strip(), choices or None
    return t, None


def _from_instruct(rec: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    """An instruction-format record as a plain benchmark record (HF Parquet rows: `meta` is JSON text)."""
    if isinstance(rec.get("meta"), str):
        with contextlib.suppress(ValueError):
            extra = json.loads(rec["meta"])
            if isinstance(extra, dict):
                rec = {**extra, **{k: v for k, v in rec.items() if k != "meta" and v is not None}}
    try:
        sample = parse_record(rec, source=where, index=index)
    except SampleError as exc:
        raise BenchFileError(str(exc)) from None
    users = [m for m in sample.messages if m.role == USER]
    answers = [m.content for m in sample.messages if m.role != USER and m.role != "system"]
    question, choices = _split_prompt(strip_placeholders(users[0].content)) if users else ("", None)
    meta = dict(sample.meta)
    choices = meta.pop("choices", None) or choices
    short = meta.pop("short_answer", None)
    kind = meta.get("category") or meta.get("kind")
    out: dict[str, Any] = {
        "id": sample.id,
        "question": question,
        "choices": choices,
        "answer": short if short is not None else (answers[0] if answers else None),
        "category": kind or DEFAULT_CATEGORY,
        "meta": meta,
    }
    if kind == "description":
        out["type"] = "caption"
    if sample.images:
        img = sample.images[0]
        out["image"] = {"bytes": img.data, "path": img.path} if img.data else img.path
    return out


def parse_item(rec: Any, *, base: Path, where: str, index: int) -> BenchItem:
    """One record as an item; raises `BenchFileError` naming `where` when it is no benchmark item."""
    if not isinstance(rec, dict):
        raise BenchFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "conversations" in rec or "messages" in rec:
        rec = _from_instruct(rec, where, index)
    choices = _choices(rec, where)
    answers = _answers(rec, choices)
    type_ = _infer_type(rec.get("type"), choices, answers, rec, where)
    question = _first(rec, _QUESTION)
    if question is None:
        if type_ != "caption":
            raise BenchFileError(f"{where}: no question (expected one of {', '.join(_QUESTION)})")
        question = vp.caption_prompt("detailed")
    hint = _first(rec, _HINT)
    if hint is not None and str(hint).strip() not in ("", "nan", "None"):
        question = f"Hint: {_text(hint).strip()}\n{_text(question)}"
    rid = _first(rec, _ID)
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    extra = {
        k: v
        for k, v in rec.items()
        if k not in _KNOWN and not _option_column(k) and not _MORE_IMAGES.match(k)
    }
    first, listed = _image_list(_first(rec, _IMAGE))
    written, ref, data = _image(first, base)
    numbered = sorted((int(m.group(1)), v) for k, v in rec.items() if (m := _MORE_IMAGES.match(k)))
    more = listed + [v for _, v in numbered]
    more_images = [
        ItemImage(image=w, image_ref=r, image_bytes=d)
        for w, r, d in (_image(v, base) for v in more if v not in (None, ""))
    ]
    desc = rec.get("description")
    return BenchItem(
        id=str(rid) if rid is not None else str(index),
        question=_text(question),
        type=type_,
        choices=choices if type_ == "mc" else None,
        answers=answers,
        category=str(_first(rec, _CATEGORY) or DEFAULT_CATEGORY),
        image=written,
        image_ref=ref,
        image_bytes=data,
        more_images=[m for m in more_images if m.image is not None],
        description=str(desc) if desc else None,
        meta={**{k: _plain(v) for k, v in extra.items()}, **meta},
        where=where,
    )


def _option_column(name: str) -> bool:
    """A column that holds one option of a multiple-choice item (A, choice_a, option_a)."""
    letter = name[-1:].upper()
    return letter in LETTERS and name in (letter, f"choice_{letter.lower()}", f"option_{letter.lower()}")


def _plain(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v


def _records(path: Path, image_root: str | Path | None = None) -> Iterator[tuple[str, int, Any]]:
    """(where, index, record) for every record; decoding errors are yielded as BenchFileError."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        with path.open("rb") as fh:
            index = 0
            for no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{no}"
                try:
                    yield where, index, json.loads(line)
                except ValueError as exc:
                    yield where, index, BenchFileError(f"{where}: invalid JSON: {exc}")
                index += 1
        return
    if name.endswith(".json"):
        buf = path.read_bytes()
        if buf.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
            yield from _object_records(path, buf, image_root)
            return
        try:
            spans = list(array_elements(buf))
        except JsonScanError as exc:
            raise BenchFileError(f"{path}: not a JSON array of items: {exc}") from None
        if not buf.rstrip().endswith(b"]"):
            raise BenchFileError(f"{path}: not a JSON array of items: it ends before its closing ']'")
        for index, (s, e) in enumerate(spans):
            where = f"{path}:{buf.count(NEWLINE, 0, s) + 1}"
            try:
                yield where, index, json.loads(buf[s:e])
            except ValueError as exc:
                yield where, index, BenchFileError(f"{where}: invalid JSON: {exc}")
        return
    if name.endswith((".csv", ".tsv")):
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if name.endswith(".tsv") else ",")
            try:
                for index, row in enumerate(reader):
                    where = f"{path}:{reader.line_num}"
                    yield (
                        where,
                        index,
                        {k: v for k, v in row.items() if k is not None and v not in (None, "")},
                    )
            except UnicodeDecodeError as exc:
                raise BenchFileError(
                    f"{path}: not UTF-8 text near line {reader.line_num + 1} ({exc.reason}); convert it, "
                    "e.g. `iconv -f latin1 -t utf-8`"
                ) from None
            except csv.Error as exc:
                raise BenchFileError(f"{path}:{reader.line_num}: {exc}") from None
        return
    if name.endswith(".parquet"):
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise BenchFileError(f"{path}: not a readable Parquet file: {exc}") from None
        for index, row in enumerate(table.to_pylist()):
            yield f"{path} row {index}", index, row
        return
    raise BenchFileError(f"{path}: unknown benchmark format; expected one of {', '.join(BENCH_SUFFIXES)}")


def _object_records(
    path: Path, buf: bytes, image_root: str | Path | None = None
) -> Iterator[tuple[str, int, Any]]:
    """A JSON object holding the items: a list under one of `_ITEM_LISTS` (TextVQA's `data`,
    SEED-Bench's `questions`), or one item per key (MM-Vet: {"v1_0": {...}}, the key is the id)."""
    try:
        doc = json.loads(buf)
    except ValueError as exc:
        raise BenchFileError(f"{path}: invalid JSON: {exc}") from None
    if isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list):
        yield from _coco_caption_items(path, image_root)
        return
    for key in _ITEM_LISTS:
        if isinstance(doc.get(key), list):
            for index, rec in enumerate(doc[key]):
                yield f"{path} {key}[{index}]", index, rec
            return
    if doc and all(isinstance(v, dict) for v in doc.values()):
        for index, (key, rec) in enumerate(doc.items()):
            yield f"{path} [{key!r}]", index, rec if _first(rec, _ID) is not None else {"id": key, **rec}
        return
    lists = ", ".join(_ITEM_LISTS)
    raise BenchFileError(
        f"{path}: a JSON object that is no benchmark: expected a list of items under one of {lists}, "
        "or an object of items keyed by id"
    )


def _coco_caption_items(path: Path, image_root: str | Path | None = None) -> Iterator[tuple[str, int, Any]]:
    """COCO captions (`images` + `annotations`, read by the same reader as `vlcurate score`): one
    caption item per image, its captions the references. Images are looked for beside the file,
    in the split's folder (`annotations/captions_val2017.json` -> `val2017/`), else at `coco_url`."""
    try:
        coco = load_json_object(str(path))
    except ShardReadError as exc:
        raise BenchFileError(str(exc)) from None
    root = str(image_root) if image_root is not None else default_image_root(str(path))
    for index, im in enumerate(coco.images):
        name, url = im.get("file_name"), im.get("coco_url")
        local = [Path(root) / name] if root and name else []
        local += [path.parent / name] if name else []
        image = next((str(p.resolve()) for p in local if p.is_file()), None) or url or name
        refs = [c for _, c in coco.captions.get(im.get("id"), []) if c.strip()]
        rec = {"id": im.get("id", index), "type": "caption", "captions": refs, "image": image}
        yield f"{path} images[{index}]", index, rec


_ITEM_LISTS = ("data", "questions", "items", "annotations", "samples")
_BOOKKEEPING = ("version", "missing", "truth", "config", "summary", "report")


def bench_file(path: str | Path) -> Path:
    """The benchmark file: `path` itself, or inside a folder its one bench.* file, else its one data file
    (a version export's data.json / samples.jsonl / data.parquet; bookkeeping files are not counted)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in BENCH_SUFFIXES)
        found = [q for q in files if q.name.startswith("bench")]
        found = found or [q for q in files if not q.name.startswith(_BOOKKEEPING)]
        if len(found) != 1:
            names = ", ".join(q.name for q in found) or "none"
            raise BenchFileError(
                f"{p}: a benchmark folder needs exactly one bench.jsonl/json/csv/tsv/parquet file "
                f"(or one data file); found {names}"
            )
        return found[0]
    if not p.is_file():
        raise FileNotFoundError(f"benchmark not found: {p}")
    return p


def read_benchmark(path: str | Path, *, image_root: str | Path | None = None) -> list[BenchItem]:
    """Every item of a benchmark file; `BenchFileError` lists the first bad lines (and how many).
    Relative image paths are under `image_root` (POPE's COCO val2014 folder), else beside the file."""
    file = bench_file(path)
    if image_root is not None and not Path(image_root).is_dir():
        raise BenchFileError(f"image root {image_root}: no such folder")
    base = Path(image_root).resolve() if image_root is not None else file.resolve().parent
    items: list[BenchItem] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for where, index, rec in _records(file, image_root):
        try:
            if isinstance(rec, BenchFileError):
                raise rec
            item = parse_item(rec, base=base, where=where, index=index)
        except BenchFileError as exc:
            problems.append(str(exc))
            continue
        if item.id in seen:
            problems.append(f"{where}: id {item.id!r} repeats the item at {seen[item.id]}")
            continue
        seen[item.id] = where
        items.append(item)
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        head = "; ".join(problems[:_MAX_LISTED])
        raise BenchFileError(f"{len(problems)} bad benchmark record(s): {head}{more}")
    if not items:
        raise BenchFileError(f"{file}: the benchmark holds no items")
    _share_images(items)
    return items


def _share_images(items: list[BenchItem]) -> None:
    """VLMEvalKit writes each image once: a row whose image is a short value naming another row's
    index (and no file of that name exists) shows that row's image."""
    inline = {it.id: it.image_bytes for it in items if it.image == "<base64>" and it.image_bytes}
    if not inline:
        return
    for it in items:
        if (
            it.image_bytes is None
            and it.image in inline
            and it.image_ref is not None
            and not Path(it.image_ref).exists()
        ):
            it.image_bytes, it.image_ref = inline[it.image], None

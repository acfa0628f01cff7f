"""Re-ask failed items to tell perception from reasoning (the paper's Figure 3A decomposition).

For each wrong answer the model is asked to describe the image, then to answer the question from
that description alone, and to answer it without the image at all:
- its own description lets it answer right: it saw what mattered and failed at answering (reasoning);
- its description does not: it did not see it (perception);
- right without the image: the question is answerable from language alone (recorded as evidence).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from pathlib import Path

from vlcurate.base.atomic import write_bytes_atomic
from vlcurate.base.images import sniff_image_ext
from vlcurate.evals.bench import read_benchmark
from vlcurate.evals.extract import score_reply
from vlcurate.evals.results import SampleResult
from vlcurate.metabolism.diagnosis import Probe
from vlcurate.vlm.client import VLMRequest, VLMResult, VLMSettings, run_many
from vlcurate.vlm.prompts import DESCRIBE_PROMPT, from_description_prompt, question_prompt


def is_correct(row: SampleResult, text: str | None) -> bool:
    """Whether a reply states the row's reference, scored exactly as `vlcurate eval` scores
    (`evals.extract.score_reply`: option letters, yes/no, numbers, short answers)."""
    if not text or row.answer is None:
        return False
    refs = [row.answer, *[str(a) for a in (row.model_extra or {}).get("answers", []) or []]]
    return bool(score_reply(row.type, text, refs, row.choices).correct)


def probe_failures(
    rows: Sequence[SampleResult],
    images: Sequence[str | None],
    settings: VLMSettings,
    *,
    progress: bool = True,
) -> list[Probe]:
    """One Probe per row: three requests each (describe, answer from it, answer blind)."""
    first: list[VLMRequest] = []
    for r, img in zip(rows, images, strict=True):
        first.append(VLMRequest(prompt=DESCRIBE_PROMPT, images=[img] if img else [], max_tokens=256))
        first.append(VLMRequest(prompt=question_prompt(r.question, r.choices), max_tokens=64))
    res1 = run_many(settings, first, progress="probing" if progress else False)
    second: list[VLMRequest] = []
    for k, r in enumerate(rows):
        desc = res1[2 * k]
        text = desc.text.strip() if desc.ok else ""
        second.append(VLMRequest(prompt=from_description_prompt(text or "(none)", r.question, r.choices)))
    res2 = run_many(settings, second, progress="answering from descriptions" if progress else False)
    return [_probe(r, res1[2 * k], res1[2 * k + 1], res2[k]) for k, r in enumerate(rows)]


def _probe(row: SampleResult, desc: VLMResult, blind: VLMResult, from_desc: VLMResult) -> Probe:
    errors = [
        f"{what}: {res.error or 'empty answer'}"
        for what, res in (("describe", desc), ("blind", blind), ("from description", from_desc))
        if not res.ok or not res.text.strip()
    ]
    d_text = desc.text.strip() if desc.ok and desc.text.strip() else None
    fd = from_desc.text.strip() if from_desc.ok and from_desc.text.strip() and d_text else None
    bl = blind.text.strip() if blind.ok and blind.text.strip() else None
    return Probe(
        description=d_text,
        from_description=fd,
        from_description_correct=is_correct(row, fd) if fd is not None else None,
        blind=bl,
        blind_correct=is_correct(row, bl) if bl is not None else None,
        error="; ".join(errors) or None,
    )


def resolve_image(
    ref: str | None, run_dir: Path, bench: str | None, image_root: str | None = None
) -> str | None:
    """The image of a run's row as a readable path or URL (paths are relative to the run's
    `image_root`, else to the benchmark file)."""
    if not ref:
        return None
    if ref.startswith(("http://", "https://", "data:")):
        return ref
    p = Path(ref)
    tries = [p] if p.is_absolute() else []
    if image_root:
        tries.append(Path(image_root) / ref)
    if bench:
        b = Path(bench)
        tries.append((b if b.is_dir() else b.parent) / ref)
    tries += [run_dir / ref, Path.cwd() / ref]
    for t in tries:
        if t.is_file():
            return str(t.resolve())
    return None


def embedded_images(
    bench: str, ids: Collection[str], dest: Path, image_root: str | None = None
) -> dict[str, str]:
    """Images a benchmark holds inside its file (HF Parquet bytes, VLMEvalKit base64), which a run
    names only as "<embedded>": written once each under `dest` (named by content), as item id ->
    path. Raises `BenchFileError` or OSError when the benchmark can no longer be read."""
    wanted = set(ids)
    out: dict[str, str] = {}
    for item in read_benchmark(bench, image_root=image_root):
        if item.id not in wanted or not item.image_bytes:
            continue
        ext = sniff_image_ext(item.image_bytes[:16]) or "img"
        path = dest / f"{hashlib.sha256(item.image_bytes).hexdigest()[:20]}.{ext}"
        if not path.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, item.image_bytes)
        out[item.id] = str(path.resolve())
    return out

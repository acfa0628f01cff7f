"""Write instruction samples out in a trainer format, images included.

Used by the `vlcurate run` sink (`ops.sink`, `instruct_format`) and by `vlcurate synth instruct`. JSON formats
go to `NAME.json` with images copied under `images/` (references relative to the JSON file, so it
re-reads with the default `image_root`); `hf` goes to `NAME.parquet` with the image bytes
embedded. Files are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO, Any

from vlcurate.base.atomic import commit_file
from vlcurate.base.images import sniff_image_ext
from vlcurate.io.instruct.columns import parse_messages
from vlcurate.io.instruct.formats import FORMATS, to_record
from vlcurate.io.instruct.hf import HFWriter, hf_row
from vlcurate.io.instruct.model import ImageData, InstructSample
from vlcurate.io.paths import has_protocol

COT_SUFFIX = "-cot"
_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def image_name(ref: str | None, key: str, i: int, data: bytes) -> str:
    """Where an image goes under `images/`: its relative path as written when that is safe, else KEY_I.EXT."""
    if ref and not has_protocol(ref) and not ref.startswith("/") and ".." not in ref.split("/"):
        clean = _UNSAFE.sub("_", ref).lstrip("/").removeprefix("images/")
        if clean and not clean.endswith("/"):
            return clean
    ext = sniff_image_ext(data) or "img"
    return f"{_UNSAFE.sub('_', key).replace('/', '_')}_{i}.{ext}"


class InstructWriter:
    """Streams samples into `out/NAME.json` (+ `out/images/`) or `out/NAME.parquet`."""

    def __init__(self, out: Path, fmt: str, name: str = "kept") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown instruct format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.out, self.fmt = out, fmt
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / (f"{name}.parquet" if fmt == "hf" else f"{name}.json")
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._written_images: set[str] = set()
        self._count = 0
        self._hf: HFWriter | None = None
        self._fh: IO[str] | None = None
        if fmt == "hf":
            self._hf = HFWriter(self._tmp)
        else:
            self._fh = self._tmp.open("w", encoding="utf-8")
            self._fh.write("[")

    @property
    def count(self) -> int:
        return self._count

    def add(self, sample: InstructSample, images: list[bytes | None]) -> None:
        """Write one sample; `images` are the bytes of `sample.images` in order (None: not available)."""
        if self._hf is not None:
            pairs = zip(sample.images, images, strict=True)
            embedded = [
                (b, image_name(i.path, sample.id, k, b or b"").rsplit("/", 1)[-1])
                for k, (i, b) in enumerate(pairs)
            ]
            self._hf.add(hf_row(sample, embedded))
        else:
            refs: list[str] = []
            for k, (img, data) in enumerate(zip(sample.images, images, strict=True)):
                if data is None:
                    refs.append(img.path or "")
                    continue
                name = image_name(img.path, sample.id, k, data)
                if name not in self._written_images:
                    target = self.out / "images" / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    self._written_images.add(name)
                refs.append(f"images/{name}")
            assert self._fh is not None
            rec = to_record(sample, self.fmt, refs)
            self._fh.write(("\n" if self._count == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
        self._count += 1

    def close(self) -> Path:
        if self._hf is not None:
            self._hf.close()
        elif self._fh is not None:
            self._fh.write("\n]\n")
            self._fh.close()
        commit_file(self._tmp, self.path)
        return self.path


def sample_from_row(
    row: dict[str, Any], messages_column: str = "messages"
) -> tuple[InstructSample, list[bytes | None]]:
    """A kept batch row (instruct source columns) back as a sample and its image bytes."""
    paths = json.loads(row.get("image_paths") or "[]")
    data: list[bytes | None] = [row.get("image"), *(row.get("extra_images") or [])]
    data = (data + [None] * len(paths))[: len(paths)]
    meta = json.loads(row.get("meta") or "{}")
    sample = InstructSample(
        id=str(row["key"]),
        images=[ImageData(path=p) for p in paths],
        messages=parse_messages(row.get(messages_column)),
        meta=meta if isinstance(meta, dict) else {},
    )
    return sample, data

"""Fixtures: small instruction files with real PNG images, and the planted-fault synthetic set."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlcurate.synth.instruct_data import write_planted


def png(colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def llava(
    i: int, image: str | list[str] | None = "a.png", answer: str = "Red.", **extra: Any
) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": f"s{i}"}
    if image is not None:
        rec["image"] = image
    n = 0 if image is None else (len(image) if isinstance(image, list) else 1)
    rec["conversations"] = [
        {"from": "human", "value": "<image>\n" * n + "What colour is it?"},
        {"from": "gpt", "value": answer},
    ]
    return {**rec, **extra}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder with a.png, b.png and nothing else."""
    (tmp_path / "a.png").write_bytes(png("red"))
    (tmp_path / "b.png").write_bytes(png("blue"))
    return tmp_path


def write_json(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 synthetic samples (half with a planted fault) as LLaVA JSON, with truth.jsonl."""
    out = tmp_path_factory.mktemp("planted")
    write_planted(out, 2000, seed=0, fault_rate=0.5, fmt="llava")
    return out

"""Fixtures: small instruction data with real PNG images, and a store with a few versions."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def sample(i: int, image: str, answer: str = "Red.", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"s{i:03d}",
        "images": [image],
        "messages": [
            {"role": "user", "content": "<image>\nWhat colour is it?"},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    """Absolute paths of a red and a blue PNG."""
    folder = tmp_path / "img"
    folder.mkdir()
    out = {}
    for colour in ("red", "blue"):
        path = folder / f"{colour}.png"
        path.write_bytes(png(colour))
        out[colour] = str(path)
    return out


@pytest.fixture
def llava_file(tmp_path: Path) -> Path:
    """data/train.json in LLaVA format: 6 samples, relative image paths, one with a missing image, one
    record that is not a sample."""
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(png("red"))
    (folder / "images" / "b.png").write_bytes(png("blue"))
    recs: list[Any] = []
    for i in range(5):
        recs.append(
            {
                "id": f"q{i}",
                "image": "images/a.png" if i % 2 == 0 else "images/b.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is it?"},
                    {"from": "gpt", "value": "Red." if i % 2 == 0 else "Blue."},
                ],
                "kind": "colour",
            }
        )
    recs.append(
        {
            "id": "gone",
            "image": "images/nope.png",
            "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}],
        }
    )
    recs.append({"id": "broken", "conversations": "not a list"})
    path = folder / "train.json"
    path.write_text(json.dumps(recs))
    return path

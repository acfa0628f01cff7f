"""Shared fixtures: the real COCO-mini photos and captions beside the checkout."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLCURATE_SHARED", REPO_ROOT.parent / "shared"))
COCO_DIR = SHARED / "data" / "coco-mini"


@dataclass(frozen=True)
class CocoPair:
    """One real COCO photo with one of its human captions."""

    path: Path
    caption: str
    width: int
    height: int


def load_coco_pairs(split: str = "val2017") -> list[CocoPair]:
    """One (photo, first caption) pair per image of a COCO-mini split, sorted by file name."""
    ann = json.loads((COCO_DIR / "annotations" / f"captions_{split}.json").read_text())
    first: dict[int, str] = {}
    for a in ann["annotations"]:
        first.setdefault(a["image_id"], a["caption"].strip())
    pairs = [
        CocoPair(COCO_DIR / split / im["file_name"], first[im["id"]], im["width"], im["height"])
        for im in ann["images"]
        if im["id"] in first and (COCO_DIR / split / im["file_name"]).exists()
    ]
    return sorted(pairs, key=lambda p: p.path.name)


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    if not COCO_DIR.exists():
        pytest.fail(f"COCO-mini not found at {COCO_DIR}; set VLCURATE_SHARED to the shared folder")
    return COCO_DIR


@pytest.fixture(scope="session")
def coco_pairs(coco_dir: Path) -> list[CocoPair]:
    return load_coco_pairs("val2017")

"""Shared fixtures: the real COCO-mini photos and captions beside the checkout."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def make_tiny_open_clip_dir(path: Path, seed: int = 0) -> Path:
    """A randomly initialised, very small open_clip model saved as a local-dir folder (fast to run)."""
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": cfg,
                "preprocess_cfg": {
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.25, 0.25, 0.25],
                    "interpolation": "bicubic",
                    "resize_mode": "shortest",
                },
            }
        )
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors")
    )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random open_clip folder; use as model name `local-dir:PATH`."""
    return make_tiny_open_clip_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(params=["sqlite", "postgresql"])
def platform_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh platform database: a SQLite file, then a PostgreSQL schema (skipped if none runs)."""
    from tests.platform_live import pg_available, pg_schema

    if request.param == "sqlite":
        yield str(tmp_path / "platform.db")
        return
    if not pg_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432 (database test)")
    with pg_schema() as url:
        yield url


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-pair synthetic pool (30% corrupted captions) as WebDataset shards of 100."""
    from vlcurate.synth.pool import write_pool

    out = tmp_path_factory.mktemp("platform-pool")
    write_pool(out, 300, corrupt_fraction=0.3, seed=7, shard_size=100)
    return out / "shards"


@pytest.fixture
def live_platform(platform_db: str) -> Iterator[Any]:
    """A real uvicorn server running the platform app on `platform_db` (SQLite, then PostgreSQL)."""
    from tests.platform_live import InThreadServer

    with InThreadServer(platform_db, sweep_seconds=0.2) as server:
        yield server

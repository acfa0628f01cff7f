"""Synthetic pools whose truth is known: scene files named by their index in stream SEED."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlcurate.builder.formats import Ann, Item
from vlcurate.synth.scene import Scene, generate_scene, scene_rng
from vlcurate.synth.vocab import SHAPES

SEED = 42
ALL_SHAPES = "circles, squares, triangles, stars and crosses"


def scene_of(path: str | Path, single: bool) -> Scene:
    """The scene a pool file was drawn from (its name is its index)."""
    return generate_scene(scene_rng(SEED, int(Path(path).stem)), n_objects=1 if single else None)


def write_scene_pool(folder: Path, n: int, single: bool, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (folder / f"{i:05d}.png").write_bytes(scene_of(f"{i}", single).encode("png"))
    return folder


def labelled_scenes(start: int, n: int) -> list[Item]:
    """n one-object scenes (indices start..start+n, none of them in a pool written from 0) with their
    true class and box: a labelled set to expand or trust."""
    items = []
    for i in range(start, start + n):
        s = scene_of(f"{i}", True)
        ann = [Ann(SHAPES[s.objects[0].label], s.objects[0].bbox)]
        items.append(Item(f"{i}.png", "train", 64, 64, ann, s.encode("png")))
    return items


def true_class(path: str, single: bool) -> str:
    return SHAPES[scene_of(path, single).objects[0].label]


@pytest.fixture(scope="session")
def single_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scene_pool(tmp_path_factory.mktemp("single") / "pool", 260, single=True)


@pytest.fixture(scope="session")
def multi_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scene_pool(tmp_path_factory.mktemp("multi") / "pool", 140, single=False)

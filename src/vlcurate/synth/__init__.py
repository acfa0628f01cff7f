"""The synthetic scene world: images of simple objects with exact ground truth.

Real weights and data are not reachable where vlcurate is tested; these scenes give data whose
truth is known (captions, QA pairs, boxes, masks, labels) plus captions that are wrong on
purpose, so filtering and scoring can be measured, not guessed.
"""

from __future__ import annotations

from vlcurate.synth.caption import Caption, Phrase, caption_is_true, describe
from vlcurate.synth.corrupt import CORRUPTIONS, KINDS, corrupt
from vlcurate.synth.layout import Layout, ObjectSpec, sample_layout
from vlcurate.synth.qa import QA
from vlcurate.synth.scene import Scene, SceneObject, generate_scene, iter_scenes, scene_from_seed

__all__ = [
    "CORRUPTIONS",
    "KINDS",
    "QA",
    "Caption",
    "Layout",
    "ObjectSpec",
    "Phrase",
    "Scene",
    "SceneObject",
    "caption_is_true",
    "corrupt",
    "describe",
    "generate_scene",
    "iter_scenes",
    "sample_layout",
    "scene_from_seed",
]

"""Every corruption kind really changes the meaning of the caption for that scene."""

from __future__ import annotations

import numpy as np
import pytest

from vlcurate.synth.caption import caption_is_true, phrase_is_true
from vlcurate.synth.corrupt import KINDS, corrupt
from vlcurate.synth.scene import iter_scenes

SCENES = list(iter_scenes(400, seed=21))


def _changed(before: tuple, after: tuple) -> list[int]:  # type: ignore[type-arg]
    return [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]


def test_kinds() -> None:
    assert set(KINDS) == {"wrong_colour", "wrong_count", "wrong_shape", "unrelated"}


@pytest.mark.parametrize("kind", KINDS)
def test_corrupted_caption_is_false_and_text_differs(kind: str) -> None:
    for i, s in enumerate(SCENES):
        bad = corrupt(kind, s.caption, s.layout, np.random.default_rng(i))
        assert not caption_is_true(s.layout, bad)
        assert bad.text != s.caption_text


def test_wrong_colour_names_a_colour_no_object_of_that_shape_has() -> None:
    for i, s in enumerate(SCENES):
        bad = corrupt("wrong_colour", s.caption, s.layout, np.random.default_rng(i))
        (j,) = _changed(s.caption.phrases, bad.phrases)
        old, new = s.caption.phrases[j], bad.phrases[j]
        assert (new.count, new.shape, new.size, new.position) == (
            old.count,
            old.shape,
            old.size,
            old.position,
        )
        assert new.colour not in {o.colour for o in s.objects if o.shape == new.shape}
        assert f"{new.colour} {new.shape}" in bad.text or new.colour + " " in bad.text


def test_wrong_shape_names_a_shape_no_object_of_that_colour_has() -> None:
    for i, s in enumerate(SCENES):
        bad = corrupt("wrong_shape", s.caption, s.layout, np.random.default_rng(i))
        (j,) = _changed(s.caption.phrases, bad.phrases)
        old, new = s.caption.phrases[j], bad.phrases[j]
        assert (new.count, new.colour) == (old.count, old.colour)
        assert new.shape not in {o.shape for o in s.objects if o.colour == new.colour}


def test_wrong_count_states_a_different_number() -> None:
    for i, s in enumerate(SCENES):
        bad = corrupt("wrong_count", s.caption, s.layout, np.random.default_rng(i))
        (j,) = _changed(s.caption.phrases, bad.phrases)
        old, new = s.caption.phrases[j], bad.phrases[j]
        assert (new.colour, new.shape) == (old.colour, old.shape)
        actual = sum(o.colour == new.colour and o.shape == new.shape for o in s.objects)
        assert new.count != actual == old.count
        assert not phrase_is_true(s.layout, new)


def test_unrelated_describes_another_scene() -> None:
    differs = 0
    for i, s in enumerate(SCENES):
        bad = corrupt("unrelated", s.caption, s.layout, np.random.default_rng(i))
        described = sorted((p.colour, p.shape, p.count) for p in bad.phrases)
        actual = sorted((p.colour, p.shape, p.count) for p in s.caption.phrases)
        differs += described != actual
    assert differs >= len(SCENES) * 0.97


def test_corruption_is_deterministic_and_unknown_kind_fails() -> None:
    s = SCENES[0]
    a = corrupt("wrong_colour", s.caption, s.layout, np.random.default_rng(5))
    b = corrupt("wrong_colour", s.caption, s.layout, np.random.default_rng(5))
    assert a == b
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt("wrong_texture", s.caption, s.layout, np.random.default_rng(0))

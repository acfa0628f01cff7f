"""Scenes: determinism, ground truth consistent with the pixels, true captions and QA answers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vlcurate.synth.caption import Caption, Phrase, caption_is_true
from vlcurate.synth.layout import object_positions, sample_layout
from vlcurate.synth.rle import mask_to_rle, rle_to_mask
from vlcurate.synth.scene import generate_scene, iter_scenes, scene_from_seed
from vlcurate.synth.vocab import BACKGROUNDS, COLOURS, MAX_OBJECTS, PLURALS, SHAPES

SCENES = list(iter_scenes(300, seed=11))


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    a = [s.encode("png") for s in iter_scenes(20, seed=3)]
    b = [s.encode("png") for s in iter_scenes(20, seed=3)]
    c = [s.encode("png") for s in iter_scenes(20, seed=4)]
    assert a == b
    assert a != c
    s1, s2 = scene_from_seed(3, 7), scene_from_seed(3, 7)
    assert s1.caption_text == s2.caption_text and s1.qa == s2.qa
    assert np.array_equal(s1.masks, s2.masks)
    assert s1.encode("jpg") == s2.encode("jpg")


def test_scene_shape_and_object_counts() -> None:
    counts = {s.n_objects for s in SCENES}
    assert counts == set(range(1, MAX_OBJECTS + 1))
    for s in SCENES:
        assert s.image.size == (64, 64) and s.image.mode == "RGB"
        assert s.masks.shape == (s.n_objects, 64, 64)
        assert len(s.boxes) == len(s.labels) == s.n_objects == len(s.layout.objects)
        assert s.labels == [SHAPES.index(o.shape) for o in s.objects]
    # Every shape, colour and background actually occurs.
    assert {o.shape for s in SCENES for o in s.objects} == set(SHAPES)
    assert {o.colour for s in SCENES for o in s.objects} == set(COLOURS)
    assert {s.background for s in SCENES} == set(BACKGROUNDS)


def test_boxes_are_tight_around_masks_and_masks_are_disjoint() -> None:
    for s in SCENES:
        assert not (s.masks.sum(axis=0) > 1).any(), "objects overlap"
        for mask, (x0, y0, x1, y1) in zip(s.masks, s.boxes, strict=True):
            ys, xs = np.nonzero(mask)
            assert xs.size > 50  # even a small star covers real area
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)


def test_mask_pixels_carry_the_object_colour_and_the_rest_is_background() -> None:
    for s in SCENES[:100]:
        pix = np.asarray(s.image).astype(int)
        for obj, mask in zip(s.objects, s.masks, strict=True):
            mean = pix[mask].mean(axis=0)
            assert np.abs(mean - COLOURS[obj.colour]).max() <= 13
        bg = pix[~s.masks.any(axis=0)].mean(axis=0)
        assert np.abs(bg - BACKGROUNDS[s.background]).max() <= 7


def test_true_captions_hold_and_name_every_object() -> None:
    for s in SCENES:
        assert caption_is_true(s.layout, s.caption)
        assert sum(p.count for p in s.caption.phrases) == s.n_objects
        for p in s.caption.phrases:
            assert p.colour in s.caption_text
            assert (p.shape if p.count == 1 else PLURALS[p.shape]) in s.caption_text


def test_caption_checker_rejects_false_statements() -> None:
    s = next(s for s in SCENES if s.n_objects == 1)
    obj = s.layout.objects[0]
    assert caption_is_true(s.layout, Caption((Phrase(1, obj.colour, obj.shape),)))
    assert not caption_is_true(s.layout, Caption((Phrase(2, obj.colour, obj.shape),)))
    other_size = "large" if obj.size == "small" else "small"
    assert not caption_is_true(s.layout, Caption((Phrase(1, obj.colour, obj.shape, size=other_size),)))
    wrong_bg = next(b for b in BACKGROUNDS if b != s.background)
    assert not caption_is_true(s.layout, Caption((Phrase(1, obj.colour, obj.shape),), 1, wrong_bg))


def test_positions_match_where_the_object_is_drawn() -> None:
    for s in SCENES:
        for spec, obj in zip(s.layout.objects, s.objects, strict=True):
            cx, cy = (obj.bbox[0] + obj.bbox[2]) / 2, (obj.bbox[1] + obj.bbox[3]) / 2
            assert object_positions(spec) == obj.positions
            if "left" in obj.positions:
                assert cx < 32
            if "right" in obj.positions:
                assert cx > 32
            if "top" in obj.positions:
                assert cy < 32
            if "bottom" in obj.positions:
                assert cy > 32


def test_qa_answers_are_true() -> None:
    kinds = set()
    for s in SCENES:
        objs = s.objects
        for qa in s.qa:
            kinds.add(qa.kind)
            q, a = qa.question, qa.answer
            words = q.rstrip("?").split()
            if q == "How many objects are there?":
                assert a == str(len(objs))
            elif q.startswith("How many"):
                colour, plural = words[2], words[3]
                shape = next(k for k, v in PLURALS.items() if v == plural)
                assert a == str(sum(o.colour == colour and o.shape == shape for o in objs))
            elif q.startswith("Is there"):
                colour, shape = words[3], words[4]
                exists = any(o.colour == colour and o.shape == shape for o in objs)
                assert a == ("yes" if exists else "no")
            elif q == "What colour is the background?":
                assert a == s.background
            elif q.startswith("What colour is the"):
                matches = [o for o in objs if o.shape == words[4]]
                assert len(matches) == 1 and a == matches[0].colour
            elif q.startswith("What shape is the"):
                matches = [o for o in objs if o.colour == words[4]]
                assert len(matches) == 1 and a == matches[0].shape
            else:
                pytest.fail(f"unexpected question {q!r}")
    assert kinds == {"count", "exists", "colour", "shape"}


def test_rle_round_trip_and_json() -> None:
    for s in SCENES[:50]:
        d = s.to_json()
        assert d["caption"] == s.caption_text and d["n_objects"] == s.n_objects
        for obj, mask in zip(d["objects"], s.masks, strict=True):
            assert np.array_equal(rle_to_mask(obj["mask_rle"]), mask)
            assert sum(obj["mask_rle"]["counts"]) == 64 * 64
    full = np.ones((3, 4), dtype=bool)
    assert np.array_equal(rle_to_mask(mask_to_rle(full)), full)
    assert mask_to_rle(full)["counts"] == [0, 12]


def test_fixed_object_count_and_bad_count() -> None:
    rng = np.random.default_rng(0)
    assert generate_scene(rng, n_objects=4).n_objects == 4
    with pytest.raises(ValueError):
        sample_layout(rng, n_objects=5)


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    n = sum(1 for _ in iter_scenes(300, seed=99))
    rate = n / (time.perf_counter() - start)
    print(f"{rate:.0f} scenes/s")
    assert rate > 200  # ~2000/s on one idle core; generous for a loaded CI machine


def test_the_tiny_synth_check_knows_the_size_of_every_synthetic_scene() -> None:
    from vlcurate.models.tiny_synth_check import IMAGE_SIZE as CHECKED
    from vlcurate.synth.vocab import IMAGE_SIZE

    assert CHECKED == IMAGE_SIZE

"""Supervision figures and the real-model code paths that cannot load here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlcurate.base.intervals import wilson
from vlcurate.builder.hf_models import (
    GROUNDING_DINO,
    OWLV2,
    SAM,
    HfDetector,
    ModelUnavailableError,
    PhraseMap,
    SamSegmenter,
    clip_box,
)
from vlcurate.builder.label import Label
from vlcurate.builder.supervise import (
    class_balance,
    confident_learning_issues,
    label_issues,
    reliability,
    supervise,
)


def test_wilson_alr_and_cbi() -> None:
    lo, hi = wilson(95, 100)
    assert 0.88 < lo < 0.95 < hi < 0.99
    assert wilson(0, 0) == (0.0, 1.0)
    labs = [Label("a", 0.9, "m", verified=True)] * 9 + [Label("a", 0.9, "m", verified=False)]
    r = reliability(labs)
    assert r["alr"] == 0.9 and r["checked"] == 10 and r["ci95"][0] < 0.9 < r["ci95"][1]
    assert class_balance({"a": 10, "b": 10, "c": 10})["cbi"] == 0.0
    skew = class_balance({"a": 90, "b": 10})
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert skew["cbi"] == pytest.approx(1 - h / math.log(2), abs=1e-6) and skew[
        "min_max_ratio"
    ] == pytest.approx(1 / 9)


def test_confident_learning_finds_planted_label_errors() -> None:
    rng = np.random.default_rng(0)
    n, k = 300, 3
    truth = rng.integers(0, k, n)
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), truth] = 0.9
    probs += rng.uniform(0, 0.05, (n, k))
    probs /= probs.sum(1, keepdims=True)
    given = truth.copy()
    flipped = rng.choice(n, 20, replace=False)
    given[flipped] = (truth[flipped] + 1) % k
    mine = confident_learning_issues(given, probs)
    assert set(np.flatnonzero(mine)) == set(flipped.tolist())
    mask, method = label_issues(given, probs)
    assert method in ("cleanlab", "confident-learning") and set(np.flatnonzero(mask)) == set(flipped.tolist())


def test_doubtful_labels_are_queued_with_their_reason() -> None:
    good = Label("a", 0.9, "m", verified=True, probs=[0.9, 0.1])
    unconfirmed = Label("b", 0.8, "m", verified=False, probs=[0.3, 0.7])
    unsure = Label("b", 0.2, "m", verified=True, probs=[0.2, 0.8])
    d = supervise([[good], [unconfirmed], [unsure]], ["a", "b"], min_confidence=0.5)
    assert d.kept == [[good], [], []]
    assert [why.split(" ")[0] for _, _, why in d.queued] == ["not", "confidence"]


def test_phrases_map_back_to_classes_and_boxes_are_clipped() -> None:
    pm = PhraseMap.from_prompts({"fox": ["a red fox."], "dog": ["a puppy."]})
    assert (
        pm.class_of("a red fox") == "fox"
        and pm.class_of("puppy") == "dog"
        and pm.class_of("red fox dog") is None
    )
    assert pm.class_of("cat") is None and pm.unknown == ["red fox dog", "cat"]
    assert clip_box([-5, 10, 70, 20], 64, 64) == (0, 10, 64, 20)
    assert clip_box([70, 10, 90, 20], 64, 64) is None and clip_box([5, 5, 5, 9], 64, 64) is None


@pytest.mark.parametrize("name", ["owlv2", "grounding-dino", "sam"])
def test_real_models_fail_with_a_how_to_when_weights_are_absent(name: str) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(ModelUnavailableError) as exc:
        SamSegmenter() if name == "sam" else HfDetector(name)
    want = {"owlv2": OWLV2, "grounding-dino": GROUNDING_DINO, "sam": SAM}[name]
    assert (
        want in str(exc.value)
        and "huggingface-cli download" in str(exc.value)
        and "--allow-download" in str(exc.value)
    )

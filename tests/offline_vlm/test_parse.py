"""parse_caption inverts Caption.text; mentioned_phrases finds mentions inside any sentence."""

from __future__ import annotations

import numpy as np

from vlcurate.synth import KINDS, corrupt, iter_scenes
from vlcurate.synth.caption import Caption, Phrase
from vlcurate.synth.parse import mentioned_background, mentioned_phrases, parse_caption


def test_round_trip_on_scenes_and_corruptions() -> None:
    n = 0
    for i, scene in enumerate(iter_scenes(400, seed=11)):
        rng = np.random.default_rng(i)
        for cap in [scene.caption, *(corrupt(k, scene.caption, scene.layout, rng) for k in KINDS)]:
            assert parse_caption(cap.text) == cap, cap.text
            assert mentioned_phrases(f"Well, I think {cap.text}. Really.") == list(cap.phrases)
            n += 1
    assert n == 2000


def test_every_template_and_wording() -> None:
    phrases = (
        Phrase(1, "orange", "cross", size="large", position="left"),
        Phrase(1, "red", "star", numeral=True),
        Phrase(3, "cyan", "circle", position="top"),
        Phrase(4, "pink", "square", size="small"),
    )
    for template in range(4):
        cap = Caption(phrases, template, "gray" if template == 1 else None)
        assert parse_caption(cap.text) == cap
        assert parse_caption(cap.text.upper() + ".") == cap  # case and a full stop are ignored
    assert parse_caption("an large orange cross") is None  # wrong article
    assert parse_caption("two red star") is None  # plural mismatch is not a template caption
    assert parse_caption("a red circle, a blue star") is None  # list without 'and'
    assert parse_caption("") is None
    assert parse_caption("a dog on a sofa") is None


def test_mentions_are_tolerant() -> None:
    found = mentioned_phrases("There are 2 Red circle, and A LARGE blue star at the top; no dogs.")
    assert found == [Phrase(2, "red", "circle"), Phrase(1, "blue", "star", size="large", position="top")]
    assert mentioned_phrases("nothing here") == []
    assert mentioned_background("three stars on a white background") == "white"
    assert mentioned_background("The background is black.") == "black"
    assert mentioned_background("a red star") is None

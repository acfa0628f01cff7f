"""The pure parts of recaptioning: the choice rule, the budget, caption cleaning, mentions."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from vlcurate.recaption.candidates import Candidate, clean_caption, feedback_sentence, seed_of
from vlcurate.recaption.choose import choose
from vlcurate.recaption.config import RecaptionConfig
from vlcurate.recaption.iterate import Budget
from vlcurate.recaption.mentions import get_extractor, join_mentions
from vlcurate.vlm.client import VLMSettings


def test_original_is_kept_unless_beaten_by_more_than_the_margin() -> None:
    cands = [Candidate("a red star", 0.60, 0, "sample"), Candidate("a blue star", 0.55, 1, "rewrite")]
    kept = choose("a red circle", 0.50, cands, margin=0.12)
    assert kept.text == "a red circle" and kept.origin == "original"
    assert kept.why.startswith("kept original: no candidate beat it by 0.12")
    replaced = choose("a red circle", 0.40, cands, margin=0.12)
    assert (replaced.text, replaced.origin, replaced.why) == ("a red star", "sample", "sample: +0.20")
    rewrite = choose("x", 0.1, [Candidate("a blue star", 0.5, 2, "rewrite")], margin=0.12)
    assert rewrite.why == "rewrite round 2: +0.40"


def test_choice_without_scores() -> None:
    assert choose("a", 0.5, [], 0.1).why == "kept original: no scorable candidate"
    nan = choose("a", 0.5, [Candidate("b", math.nan, 0, "sample")], 0.1)
    assert nan.text == "a"
    no_original = choose("", math.nan, [Candidate("a red star", 0.3, 0, "sample")], 0.1)
    assert no_original.text == "a red star" and "original could not be scored" in no_original.why


def test_budget_grants_what_is_left() -> None:
    b = Budget(5)
    assert b.take(3) == 3 and b.take(3) == 2 and b.take(1) == 0 and b.spent
    unlimited = Budget(None)
    assert unlimited.take(10**6) == 10**6 and not unlimited.spent


def test_clean_caption_and_feedback() -> None:
    assert clean_caption('\n  Caption: "a red star"  \nmore') == "a red star"
    assert clean_caption("   ") == "" and clean_caption(None) == ""
    assert "'two red stars'" in feedback_sentence(0.41, "two red stars")
    assert "0.410" in feedback_sentence(0.41, None)
    assert seed_of("abc") == seed_of("abc") != seed_of("abc", 1)


def test_mentions() -> None:
    synth = get_extractor("synth")
    assert synth("I see two red stars and a blue circle.") == ["two red stars", "a blue circle"]
    assert join_mentions(["a", "b", "c"]) == "a, b and c" and join_mentions([]) == "a picture"
    assert get_extractor("vlcurate.recaption.mentions:join_mentions") is join_mentions
    with pytest.raises(ValueError, match="unknown mention extractor 'coco'"):
        get_extractor("coco")
    with pytest.raises(ValueError, match="cannot load mention extractor"):
        get_extractor("no.such.module:fn")


def test_config_rejects_bad_settings() -> None:
    vlm = VLMSettings()
    with pytest.raises(ValidationError):
        RecaptionConfig(vlm=vlm, k=0)
    with pytest.raises(ValidationError):
        RecaptionConfig(vlm=vlm, temperature=0.0)
    with pytest.raises(ValidationError):
        RecaptionConfig.model_validate({"vlm": vlm, "style": "poem"})

"""Answer extraction and scoring per question type, on replies real models give."""

from __future__ import annotations

import pytest

from vlcurate.evals.extract import score_reply, token_f1

CHOICES = ["blue", "red", "pink", "cyan"]


@pytest.mark.parametrize(
    ("reply", "status", "extracted", "correct"),
    [
        ("B", "ok", "B", True),
        ("(B)", "ok", "B", True),
        ("B. red", "ok", "B", True),
        ("The answer is B.", "ok", "B", True),
        ("Reasoning first.\nAnswer: B", "ok", "B", True),
        ("red", "ok", "B", True),
        ("It is pink.", "ok", "C", False),
        ("A", "ok", "A", False),
        ("F", "unparsed", None, False),  # past the last option
        ("Either red or blue.", "unparsed", None, False),  # two options named
        ("I'm sorry, but I can't help with that.", "refused", None, False),
        ("  ", "no_answer", None, False),
    ],
)
def test_multiple_choice(reply: str, status: str, extracted: str | None, correct: bool) -> None:
    s = score_reply("mc", reply, ["red"], CHOICES)
    assert (s.status, s.extracted, s.correct) == (status, extracted, correct)
    assert score_reply("mc", reply, ["B"], CHOICES).correct == correct  # a letter reference reads the same


@pytest.mark.parametrize(
    ("reply", "ref", "status", "extracted", "correct"),
    [
        ("3", "3", "ok", "3", True),
        ("Three.", "3", "ok", "3", True),
        ("There are three red circles.", "three", "ok", "3", True),
        ("No, there are none.", "0", "ok", "0", True),
        ("No, there are 3 of them.", "0", "ok", "3", False),
        ("Answer: 4", "3", "ok", "4", False),
        ("Quite a lot of them.", "3", "unparsed", None, False),
        ("Gray.", "gray", "ok", "gray", True),
        ("The grey one", "gray", "ok", "gray", True),
        ("It is a circle", "circle", "ok", "circle", True),
        ("square", "circle", "ok", "square", False),
        ("Well, that depends on how you look at it; it is hard to say.", "circle", "unparsed", None, False),
    ],
)
def test_short_answers_and_numbers(
    reply: str, ref: str, status: str, extracted: str | None, correct: bool
) -> None:
    s = score_reply("short", reply, [ref])
    assert (s.status, s.extracted, s.correct) == (status, extracted, correct)


def test_yes_no_several_references_and_captions() -> None:
    assert score_reply("yesno", "Yes, there is a red star.", ["yes"]).correct is True
    assert score_reply("yesno", "No.", ["yes"]).correct is False
    assert score_reply("yesno", "Perhaps.", ["yes"]).status == "unparsed"
    assert score_reply("short", "a kitten", ["cat", "kitten"]).correct is True  # any accepted answer
    mc = score_reply("mc", "B", ["violet"], CHOICES)
    assert mc.status == "missing_answer" and mc.correct is None  # the reference is no option
    cap = score_reply(
        "caption", "two red circles and a star", ["two red circles and a blue star on a gray background"]
    )
    assert cap.status == "ok" and cap.score is not None and 0.5 < cap.score < 1 and cap.correct is True
    assert token_f1("a red star", "a red star") == 1.0 and token_f1("green", "red") == 0.0
    assert (
        score_reply("caption", "an orange cross", ["two red circles"], caption_threshold=0.5).correct is False
    )

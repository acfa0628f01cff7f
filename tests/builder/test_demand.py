"""Demand analysis: the offline parser, the spec's validation and YAML round trip, the VLM path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vlcurate.builder import demand
from vlcurate.builder.demand import parse_request, singular, vlm_schema
from vlcurate.builder.spec import DatasetSpec, SpecError, load_spec


def test_the_issue_requests_parse() -> None:
    s = parse_request("300 images each of cats, dogs and foxes for detection")
    assert (s.task, s.images_per_class, s.class_names) == ("detect", 300, ["cat", "dog", "fox"])
    s = parse_request("a classification set of red circles and blue squares, 50 each")
    assert (s.task, s.images_per_class, s.class_names) == ("classify", 50, ["red circle", "blue square"])
    assert s.classes[0].positive[0] == "a red circle."


def test_constraints_licences_exclusions_and_task_override() -> None:
    s = parse_request(
        "segmentation masks of crosses and stars, 20 per class, at least 48 px, cc-by-4.0 licensed"
    )
    assert (s.task, s.images_per_class, s.class_names) == ("segment", 20, ["cross", "star"])
    assert s.constraints.min_side == 48 and s.licenses == ["cc-by-4.0"]
    assert s.accepts_license("CC-BY-4.0") and not s.accepts_license("unknown")
    s = parse_request("puppies but not wolves", task="classify", images_per_class=7)
    assert s.class_names == ["puppy"] and s.classes[0].negative == ["a wolf."] and s.images_per_class == 7
    assert s.other == ["wolf"]
    s = parse_request("circles and stars, not squares or triangles")
    assert s.class_names == ["circle", "star"] and s.other == ["square", "triangle"]
    assert [singular(w) for w in ("boxes", "glasses", "mice", "berries", "bus")] == [
        "box",
        "glasses",
        "mouse",
        "berry",
        "bus",
    ]


@pytest.mark.parametrize(
    ("request_text", "kwargs", "message"),
    [
        ("", {}, "empty"),
        ("300 images each for detection", {}, "names no classes"),
        ("cats at least 512 px and at most 256 px", {}, "max_side 256 is below min_side 512"),
        ("cats and dogs for detection and classification", {}, "more than one task"),
        ("cats for detection", {"task": "segment"}, "--task says segment"),
        ("cats and cats", {}, None),  # repeats collapse
    ],
)
def test_bad_requests_give_one_clear_error(
    request_text: str, kwargs: dict[str, Any], message: str | None
) -> None:
    if message is None:
        assert parse_request(request_text, **kwargs).class_names == ["cat"]
        return
    with pytest.raises(SpecError, match=message) as exc:
        parse_request(request_text, **kwargs)
    assert "\n" not in str(exc.value)


def test_yaml_round_trip_and_validation(tmp_path: Path) -> None:
    s = parse_request("40 images each of circles and squares for detection")
    f = tmp_path / "spec.yaml"
    f.write_text(s.to_yaml())
    assert load_spec(f) == s
    f.write_text(s.to_yaml().replace("version: 1", "version: 9"))
    with pytest.raises(SpecError, match="version 9 is not supported"):
        load_spec(f)
    f.write_text(s.to_yaml().replace("train: 0.8", "train: 0.9"))
    with pytest.raises(SpecError, match="splits must sum to 1"):
        load_spec(f)
    f.write_text("classes: [")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(f)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    f.write_text("classes: []\n")
    with pytest.raises(SpecError, match="classes"):
        load_spec(f)


def test_vlm_path_sends_the_spec_schema_and_validates_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlcurate.vlm import client
    from vlcurate.vlm.client import VLMResult, VLMSettings

    seen: list[Any] = []
    answer: dict[str, Any] = {
        "task": "detect",
        "images_per_class": 12,
        "classes": [{"name": "Foxes", "definition": "a fox", "positive": ["a red fox."]}],
    }

    def fake_run_many(settings: Any, reqs: list[Any], **_: Any) -> list[VLMResult]:
        seen.extend(reqs)
        return [VLMResult(texts=["{}"], parsed=[answer])]

    monkeypatch.setattr(client, "run_many", fake_run_many)
    s = demand.analyse_with_vlm("a dozen fox pictures with boxes", VLMSettings())
    assert (
        s.class_names == ["foxes"] and s.task == "detect" and s.request == "a dozen fox pictures with boxes"
    )
    assert seen[0].json_schema == vlm_schema() and "classes" in seen[0].json_schema["properties"]
    answer = {"task": "detect", "classes": []}
    with pytest.raises(SpecError, match="VLM answer: classes"):
        demand.analyse_with_vlm("nothing", VLMSettings())
    monkeypatch.setattr(client, "run_many", lambda *a, **k: [VLMResult(error="timeout")])
    with pytest.raises(SpecError, match="could not analyse the request: timeout"):
        demand.analyse_with_vlm("foxes", VLMSettings())
    assert DatasetSpec.model_json_schema()["properties"]["task"]

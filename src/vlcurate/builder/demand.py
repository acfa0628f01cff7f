"""Demand analysis: a plain request becomes a DatasetSpec.

`parse_request` is deterministic and offline ("300 images each of cats, dogs and foxes for
detection", "a classification set of red circles and blue squares, 50 each"); `analyse_with_vlm`
asks any OpenAI-compatible VLM through `vlm.client` with the spec's JSON schema as structured
output. Both end in the same validation, so a bad request fails with one clear SpecError.
"""

from __future__ import annotations

import re
from typing import Any

from vlcurate.builder.spec import DatasetSpec, SpecError, Task, spec_from_dict

_TASK_WORDS: dict[str, Task] = {
    "classification": "classify",
    "classify": "classify",
    "classifier": "classify",
    "detection": "detect",
    "detect": "detect",
    "detector": "detect",
    "bounding boxes": "detect",
    "boxes": "detect",
    "segmentation": "segment",
    "segment": "segment",
    "masks": "segment",
}
_IRREGULAR = {
    "mice": "mouse",
    "geese": "goose",
    "people": "person",
    "children": "child",
    "men": "man",
    "women": "woman",
    "teeth": "tooth",
    "feet": "foot",
    "sheep": "sheep",
    "fish": "fish",
    "horses": "horse",
    "houses": "house",
    "buses": "bus",
    "glasses": "glasses",
    "leaves": "leaf",
}
_FILLER = re.compile(
    r"\b(?:i\s+(?:want|need)|please|make|build|create|collect|give\s+me|a|an|the|dataset|data\s*set|"
    r"set|collection|images?|photos?|pictures?|pics?|labelled|labeled|with|containing|showing|of|for|"
    r"each|per\s+class|every\s+class|task|training|train)\b"
)
_NUM = r"(\d[\d,_]*)"
_COUNT_PATTERNS = (
    re.compile(
        _NUM
        + r"\s+(?:\w+\s+)?(?:images?|photos?|pictures?|examples?|samples?)?\s*"
        + r"(?:each|per\s+class|of\s+each|for\s+each)"
    ),
    re.compile(r"(?:each|per\s+class)\s*[:=]?\s*" + _NUM),
    re.compile(_NUM + r"\s+(?:images?|photos?|pictures?|examples?|samples?)\b"),
)
_MIN_SIDE = re.compile(
    r"(?:at\s+least|min(?:imum)?|no\s+smaller\s+than|larger\s+than|>=?)\s*" + _NUM + r"\s*(?:px|pixels?)"
)
_MAX_SIDE = re.compile(
    r"(?:at\s+most|max(?:imum)?|no\s+larger\s+than|smaller\s+than|<=?)\s*" + _NUM + r"\s*(?:px|pixels?)"
)
_NEG = re.compile(
    r"\b(?:but\s+not|not|excluding|except|without|no)\s+([a-z][a-z \-]*?)(?=[,.;]|$|\s+(?:and|for|with)\b)"
)
_LICENSE = re.compile(
    r"\b(cc[- ]by(?:[- ](?:sa|nc|nd))*(?:[- ]\d\.\d)?|cc0|public\s+domain|mit|apache[- ]2\.0)\b"
)


def singular(word: str) -> str:
    """A plural English noun phrase's singular (the last word changes); good for everyday nouns."""
    words = word.split()
    if not words:
        return word
    w = words[-1]
    if w in _IRREGULAR:
        w = _IRREGULAR[w]
    elif w.endswith("lves"):
        w = w[:-3] + "f"
    elif w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif re.search(r"(?:ss|x|z|ch|sh)es$", w):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    return " ".join([*words[:-1], w])


def _number(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def _find_tasks(text: str) -> list[Task]:
    found: list[Task] = []
    for word, task in _TASK_WORDS.items():
        if re.search(rf"\b{word}\b", text) and task not in found:
            found.append(task)
    return found


def parse_request(
    request: str, *, task: Task | None = None, images_per_class: int | None = None
) -> DatasetSpec:
    """The deterministic parser: counts, task words, size limits, licences, exclusions and classes."""
    text = re.sub(r"\s+", " ", request.strip().lower())
    if not text:
        raise SpecError(
            "the request is empty: say which classes to collect, e.g. '100 images each of cats and dogs'"
        )
    tasks = _find_tasks(text)
    if len(tasks) > 1:
        raise SpecError(f"the request asks for more than one task ({', '.join(tasks)}); pick one with --task")
    if task is not None and tasks and tasks[0] != task:
        raise SpecError(f"the request says {tasks[0]} but --task says {task}")
    chosen: Task = task or (tasks[0] if tasks else "classify")
    count = images_per_class
    rest = text
    for pat in _COUNT_PATTERNS:
        m = pat.search(rest)
        if m:
            count = count or _number(m.group(1))
            rest = rest[: m.start()] + " " + rest[m.end() :]
            break
    min_side = max_side = None
    if m := _MIN_SIDE.search(rest):
        min_side = _number(m.group(1))
        rest = rest.replace(m.group(0), " ")
    if m := _MAX_SIDE.search(rest):
        max_side = _number(m.group(1))
        rest = rest.replace(m.group(0), " ")
    licenses = [re.sub(r"\s+", "-", x) for x in _LICENSE.findall(rest)]
    rest = _LICENSE.sub(" ", rest)
    rest = re.sub(r"\b(?:licen[cs]ed?|licen[cs]es?|under|only)\b", " ", rest)
    negatives = [
        singular(part.strip())
        for chunk in _NEG.findall(rest)
        for part in re.split(r",|\band\b|\bor\b|&|/", chunk)
        if part.strip()
    ]
    rest = _NEG.sub(" ", rest)
    for word in sorted(_TASK_WORDS, key=len, reverse=True):
        rest = re.sub(rf"\b{word}\b", " ", rest)
    rest = re.sub(r"\d[\d,_]*", " ", rest)
    rest = _FILLER.sub(" ", rest)
    names = []
    for part in re.split(r",|;|\band\b|\bor\b|&|/|\+", rest):
        name = re.sub(r"[^a-z \-]", " ", part)
        name = re.sub(r"\s+", " ", name).strip()
        if name:
            names.append(singular(name))
    if not names:
        raise SpecError(
            f"the request names no classes: {request!r}; say what to collect, "
            "e.g. '100 images each of cats and dogs'"
        )
    data: dict[str, Any] = {
        "request": request,
        "task": chosen,
        "classes": [
            {
                "name": n,
                "definition": f"an image showing a {n}",
                "positive": [f"a {n}.", f"a photo of a {n}."],
                "negative": [f"a {x}." for x in negatives],
            }
            for n in dict.fromkeys(names)
        ],
        "images_per_class": count or 100,
        "other": list(dict.fromkeys(negatives)),
        "licenses": licenses or ["any"],
    }
    constraints: dict[str, Any] = {}
    if min_side is not None:
        constraints["min_side"] = min_side
    if max_side is not None:
        constraints["max_side"] = max_side
    if constraints:
        data["constraints"] = constraints
    return spec_from_dict(data, "request")


_SYSTEM = (
    "You turn a request for a labelled image dataset into a JSON dataset spec. List every class the "
    "user asks for with a one-line definition, positive descriptions (short phrases an image of the "
    "class would match) and negative descriptions (look-alikes that are not the class). Use the task "
    "classify, detect or segment. Answer with JSON only."
)


def vlm_schema() -> dict[str, Any]:
    """The JSON schema the VLM must answer in: the spec's own (pydantic), minus bookkeeping fields."""
    schema = DatasetSpec.model_json_schema()
    props = dict(schema.get("properties", {}))
    props.pop("version", None)
    props.pop("request", None)
    return {**schema, "properties": props}


def analyse_with_vlm(request: str, settings: Any, *, task: Task | None = None) -> DatasetSpec:
    """Ask a VLM (OpenAI-compatible, `vlm.client.VLMSettings`) for the spec, with structured output."""
    from vlcurate.vlm.client import VLMRequest, run_many

    if not request.strip():
        raise SpecError("the request is empty")
    prompt = f"Request: {request}"
    if task:
        prompt += f"\nThe task is {task}."
    req = VLMRequest(
        prompt=prompt, system=_SYSTEM, json_schema=vlm_schema(), schema_name="dataset_spec", max_tokens=1024
    )
    [res] = run_many(settings, [req])
    if not res.ok:
        raise SpecError(f"the VLM could not analyse the request: {res.error}")
    parsed = res.parsed[0] if res.parsed else None
    if parsed is None:
        raise SpecError(f"the VLM's answer is not a JSON spec: {res.text[:200]!r}")
    data = {**parsed, "request": request, "version": 1}
    if task:
        data["task"] = task
    return spec_from_dict(data, "VLM answer")

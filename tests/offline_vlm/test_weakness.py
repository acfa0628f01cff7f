"""Planted weaknesses of `vlcurate vlm serve` and the memory that cures them, over real HTTP: a weakened
server answers wrongly exactly where its weakness says, reasons fine from a description, and is
cured by enough training samples about the weak attribute (and by nothing else)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.evals.live import InThreadVLM
from tests.offline_vlm.helpers import content
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.synth.bench import Item, iter_benchmark, make_training_samples
from vlcurate.synth.offline_vlm.memory import load_memory
from vlcurate.synth.offline_vlm.weakness import GARBLE, REFUSAL, parse_weaknesses
from vlcurate.synth.scene import Scene
from vlcurate.vlm import prompts as vp

WEAK = "blind-colour=red,confuse-shapes=circle:square,refuse=count"


@pytest.fixture(scope="module")
def pair() -> Iterator[dict[str, InThreadVLM]]:
    with InThreadVLM.many({"honest": {}, "weak": {"weakness": WEAK, "memory_min": 5, "api_key": "k"}}) as s:
        yield s


def data_url(scene: Scene) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(scene.encode("png")).decode()


ITEMS: list[tuple[Scene, Item]] = [(scene, item) for _, scene, item in iter_benchmark(240, seed=4)]
SOLID = ("triangle", "star", "cross")  # shapes no weakness of WEAK touches


def pick(pred: object, k: int = 2) -> list[tuple[Scene, Item]]:
    found = [(s, i) for s, i in ITEMS if pred(i)]  # type: ignore[operator]
    return found[:k]


def ask(server: InThreadVLM, scene: Scene, item: Item) -> str:
    return content(server, vp.question_prompt(item.question), data_url(scene))


def test_parse_weaknesses_and_bad_flags() -> None:
    assert [w.spec for w in parse_weaknesses(WEAK)] == WEAK.split(",")
    for bad, msg in [
        ("blind-colour=magenta", "colour must be one of"),
        ("confuse-shapes=circle", "two different shapes"),
        ("refuse=everything", "question kind must be one of"),
        ("deaf=1", "expected KIND=VALUE"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_weaknesses(bad)
    r = CliRunner().invoke(app, ["vlm", "serve", "--weakness", "blind-colour=magenta"])
    assert r.exit_code == 2 and "colour must be one of" in r.output
    r = CliRunner().invoke(app, ["vlm", "serve", "--memory", "/nowhere/at/all"])
    assert r.exit_code == 2 and "memory path not found" in r.output


def test_weak_where_planted_and_nowhere_else(pair: dict[str, InThreadVLM]) -> None:
    honest, weak = pair["honest"], pair["weak"]
    red_present = pick(
        lambda i: (
            i.category == "exists"
            and i.meta["colour"] == "red"
            and i.meta["present"]
            and i.meta["shape"] in SOLID
        )
    )
    assert red_present and all(ask(weak, s, i) == "no" for s, i in red_present)
    red_colour = pick(lambda i: i.category == "colour" and i.answer == "red" and not i.choices)
    assert red_colour and all(ask(weak, s, i) != "red" for s, i in red_colour)
    circles = pick(
        lambda i: (
            i.category == "shape"
            and i.answer in ("circle", "square")
            and not i.choices
            and i.meta["colour"] != "red"
        )
    )
    for s, i in circles:
        h = ask(honest, s, i)
        assert ask(weak, s, i) == {"circle": "square", "square": "circle"}.get(h, h)
    counts = pick(lambda i: i.category == "count")
    assert all(ask(weak, s, i) == REFUSAL for s, i in counts)
    others = pick(
        lambda i: (
            i.category == "exists"
            and i.meta["colour"] != "red"
            and i.meta["shape"] not in ("circle", "square")
        ),
        3,
    )
    assert [ask(weak, s, i) for s, i in others] == [ask(honest, s, i) for s, i in others]

    # Descriptions leave out what the model cannot see; answering from a true description is unaffected.
    scene, item = next((s, i) for s, i in red_present if {o.colour for o in s.layout.objects} != {"red"})
    seen = content(weak, vp.DESCRIBE_PROMPT, data_url(scene))
    assert "red" not in seen and "red" in content(honest, vp.DESCRIBE_PROMPT, data_url(scene))
    only_red = next(s for s, _ in ITEMS if {o.colour for o in s.layout.objects} == {"red"})
    assert content(weak, vp.DESCRIBE_PROMPT, data_url(only_red)).startswith("Nothing on a")
    told = vp.from_description_prompt(f"a red {item.meta['shape']} on a gray background", item.question)
    assert content(weak, told) == "yes"
    assert (
        content(weak, vp.from_description_prompt("two red stars", "How many red stars are there?")) == REFUSAL
    )
    assert (
        content(honest, vp.from_description_prompt("two red stars", "How many red stars are there?")) == "2"
    )


def test_memory_cures_only_the_attribute_it_covers(pair: dict[str, InThreadVLM], tmp_path: Path) -> None:
    weak = pair["weak"]
    url = weak.url + "/admin/memory"
    assert httpx.post(url, json={"path": str(tmp_path)}).status_code == 401  # the api key is needed
    bad = httpx.post(url, json={"path": str(tmp_path / "none")}, headers=weak.headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_memory"
    assert httpx.post(url, json={"where": 1}, headers=weak.headers).status_code == 400

    # Refusals about counting teach nothing: still refusing.
    turns = [{"from": "human", "value": "<image>\nHow many red stars?"}, {"from": "gpt", "value": REFUSAL}]
    refusals = [{"id": str(k), "image": "x.png", "conversations": turns} for k in range(8)]
    (tmp_path / "refusals.json").write_text(json.dumps(refusals))
    status = httpx.post(url, json={"path": str(tmp_path / "refusals.json")}, headers=weak.headers).json()
    assert status["memory"]["samples"] == 8 and status["memory"]["coverage"] == {}
    counts = pick(lambda i: i.category == "count", 2)
    assert all(ask(weak, s, i) == REFUSAL for s, i in counts)

    # Data about red cures the blindness, not the refusal or the shape confusion.
    make_training_samples(tmp_path / "red", 6, seed=1, focus={"colour": "red"})
    status = httpx.post(url, json={"path": str(tmp_path / "red")}, headers=weak.headers).json()
    cured = {w["weakness"]: w["cured"] for w in status["weaknesses"]}
    assert cured == {
        "blind-colour=red": ["colour=red"],
        "confuse-shapes=circle:square": [],
        "refuse=count": [],
    }
    honest = pair["honest"]
    red_present = pick(
        lambda i: (
            i.category == "exists"
            and i.meta["colour"] == "red"
            and i.meta["present"]
            and i.meta["shape"] in SOLID
        )
    )
    assert [ask(weak, s, i) for s, i in red_present] == [ask(honest, s, i) for s, i in red_present]
    assert all(ask(weak, s, i) == REFUSAL for s, i in counts)

    # Counting data (answered with numbers) cures the refusal.
    make_training_samples(tmp_path / "count", 6, seed=1, focus={"category": "count"})
    httpx.post(url, json={"path": str(tmp_path / "count")}, headers=weak.headers).raise_for_status()
    assert [ask(weak, s, i) for s, i in counts] == [ask(honest, s, i) for s, i in counts]
    got = httpx.get(weak.url + "/admin/weaknesses", headers=weak.headers).json()
    assert got["memory"]["coverage"]["kind=count"] == 6


def test_memory_at_start_up_and_garble(tmp_path: Path) -> None:
    data = make_training_samples(tmp_path / "m", 5, seed=2, focus={"shape": "circle"})
    mem = load_memory(data)
    assert mem.samples == 5 and mem.count(("shape", "circle")) == 5
    spec = {"weakness": "confuse-shapes=circle:square,garble=exists", "memory": str(data), "memory_min": 5}
    with InThreadVLM(**spec) as vlm:
        status = httpx.get(vlm.url + "/admin/weaknesses").json()
        assert status["weaknesses"][0]["cured"] == ["shape=circle"]
        scene, item = pick(lambda i: i.category == "exists", 1)[0]
        assert ask(vlm, scene, item) == GARBLE


@pytest.mark.parametrize("fmt", ["llava", "jsonl", "hf"])
def test_memory_reads_a_version_export(tmp_path: Path, fmt: str) -> None:
    from vlcurate.versions.ingest import read_instruct
    from vlcurate.versions.store import VersionStore

    data = make_training_samples(tmp_path / "t", 6, seed=1, focus={"colour": "red"})
    store = VersionStore(tmp_path / "store")
    ing = read_instruct([data], tmp_path / "store")
    info = store.commit(ing.samples, parent=None, message="red", events=ing.events)
    store.export(info.id, fmt, tmp_path / "export")
    mem = load_memory(tmp_path / "export")  # version.json beside the data is not read as samples
    assert (mem.samples, mem.skipped, mem.count(("colour", "red"))) == (6, 0, 6)

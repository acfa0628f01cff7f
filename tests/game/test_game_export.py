"""Export: confirmed untainted flags only, as LLaVA / ShareGPT / OpenAI records and DPO pairs with
reliability, validation counts and origin; train and eval disjoint by image and near-duplicate; a
dataset card with counts per question type. And the operator's CLI: create, list, export, audit."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from tests.game.conftest import Game, Pools
from tests.game.test_game_trust import careful
from tests.platform_live import ADMIN, InThreadServer
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.server import db
from vlcurate.server.game.export import Example, question_type, split


def _example(uid: str, phash: int) -> Example:
    return Example(uid, uid, b"", "png", phash, "How many?", "3", "2", "human", 0.9, 0.1, 0.8, 3, 0, "count")


def test_split_keeps_images_and_near_duplicates_on_one_side() -> None:
    base = 0x0123456789ABCDEF
    examples = []
    for i in range(200):
        h = (base * (i + 1)) & (2**64 - 1)
        examples.append(_example(f"u{i:03d}", h))
        examples.append(_example(f"u{i:03d}", h))  # a second question on the same image
        examples.append(_example(f"n{i:03d}", h ^ 0b101))  # a near-duplicate (2 bits away)
    parts = split(examples, 0.25, near_dup_bits=4, seed="t")
    side = {e.image_uid: name for name, items in parts.items() for e in items}
    assert all(side[f"u{i:03d}"] == side[f"n{i:03d}"] for i in range(200))
    train = {e.image_uid for e in parts["train"]}
    assert not train & {e.image_uid for e in parts["eval"]}
    assert 0.15 < len(parts["eval"]) / len(examples) < 0.35
    assert question_type("How many red circles are there?") == "count"
    assert question_type("What colour is the star?") == "colour"
    assert question_type("Is there a blue square?") == "existence"


def test_export_writes_confirmed_hard_examples_with_a_card(game: Game, tmp_path: Path) -> None:
    judges = [game.guest(f"j{i}") for i in range(3)]
    for j in judges:
        game.play(j, careful)
    author = game.guest("author")
    for _ in range(2):  # each session: the tainted images and the first two untainted ones
        seen = {"n": 0}

        def rule(tainted: bool, right: bool, seen: dict[str, int] = seen) -> bool:
            seen["n"] += not tainted
            return tainted or seen["n"] <= 2

        game.play(author, rule)
    with game.engine.connect() as conn:
        flags = conn.execute(
            select(db.game_flags.c.id).where(db.game_flags.c.tainted.is_(False)).order_by(db.game_flags.c.id)
        ).all()
    assert len(flags) == 4
    overturned = flags[-1].id  # three flags confirmed, the last overturned
    busy = True
    while busy:
        busy = False
        for j in judges:
            t = j.post("/api/v1/game/judgements/next")
            if t.status_code == 204:
                continue
            busy = True
            with game.engine.connect() as conn:
                fid = conn.execute(
                    select(db.game_judgements.c.flag_id).where(
                        db.game_judgements.c.public_id == t.json()["task_id"]
                    )
                ).scalar_one()
            r = j.post(
                f"/api/v1/game/judgements/{t.json()['task_id']}", json={"model_wrong": fid != overturned}
            )
            assert r.status_code == 200, r.text
    assert all(j.post("/api/v1/game/judgements/next").status_code == 204 for j in judges)
    db_path = str(game.engine.url.database)
    out = tmp_path / "export"
    r = CliRunner().invoke(
        app, ["game", "export", "g1", "--out", str(out), "--db", db_path, "--eval-fraction", "0.5"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "export.json").read_text())
    assert summary["confirmed"] == 3 and summary["train"] + summary["eval"] == 3
    assert summary["shared_images"] == 0
    records = []
    for part in ("train", "eval"):
        llava = json.loads((out / "llava" / f"{part}.json").read_text())
        openai = json.loads((out / "openai" / f"{part}.json").read_text())
        assert len(llava) == len(openai)
        records += llava
        for rec in llava:
            assert (out / "llava" / rec["image"]).is_file()
    rec = records[0]
    assert rec["conversations"][0] == {"from": "human", "value": "<image>\nHow many objects are there?"}
    assert rec["conversations"][1]["from"] == "gpt" and rec["conversations"][1]["value"].isdigit()
    assert (
        rec["rejected"]
        and rec["origin"] == "human"
        and rec["validations"] == {"model_wrong": 3, "model_right": 0}
    )
    assert 0 <= rec["reliability"]["detection"] <= 1 and rec["question_type"] == "count"
    dpo = [
        json.loads(x)
        for p in ("train", "eval")
        for x in (out / "dpo" / f"{p}.jsonl").read_text().splitlines()
    ]
    assert len(dpo) == 3 and all(d["rejected"]["value"] and d["chosen"]["value"].isdigit() for d in dpo)
    card = (out / "dataset_card.md").read_text()
    assert "| confirmed model errors | 3 |" in card and "| count |" in card
    audit = CliRunner().invoke(app, ["game", "audit", "--db", db_path, "--fix"])
    assert audit.exit_code == 0, audit.output
    assert (
        "confirmed 3" in audit.output and "overturned 1" in audit.output and "ledger balances" in audit.output
    )
    assert author


def test_create_and_list_through_the_cli(tmp_path: Path, pools: Pools, vlm: VLMServer) -> None:
    with InThreadServer(str(tmp_path / "p.db")) as server:
        env = {"VLCURATE_SERVER": server.url, "VLCURATE_ADMIN_TOKEN": ADMIN}
        r = CliRunner().invoke(
            app,
            [
                *("game", "create", "demo", "--pool", str(pools.main), "--easy-pool", str(pools.easy)),
                *("--vlm-url", vlm.base_url, "--images", "6", "--tainted", "3"),
            ],
            env=env,
        )
        assert r.exit_code == 0, r.output
        assert "game 'demo'" in r.output and "14 untainted and 14 easy images" in r.output
        r = CliRunner().invoke(app, ["game", "list"], env=env)
        assert r.exit_code == 0 and "demo: active" in r.output
        bad = CliRunner().invoke(
            app,
            [
                *("game", "create", "bad", "--pool", str(tmp_path / "none"), "--easy-pool", str(pools.easy)),
                *("--vlm-url", vlm.base_url),
            ],
            env=env,
        )
        assert bad.exit_code != 0 and "cannot open pool" in bad.output

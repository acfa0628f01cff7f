"""GAP: a simulated population plays the game through its real API; how close do the reliability
estimates come to the truth, how many false "model fooled" examples reach the export, how many
validations does a kept example cost, and are false flags paid after reversals?

The platform app runs in process (FastAPI's TestClient, each player its own client address) on a
fresh SQLite file; the model is a real `vlcurate vlm serve` subprocess that also errs on its own on
untainted images (`--wrong-rate`, count questions), so there are true model errors to find. Every
player asks "How many objects are there?" on each image and knows the truth (the synthetic scene's
object count); whether it flags, and how it judges other players' flags, is its type:

- careful: flags a wrong answer with p=0.9, a right one with p=0.03; judges correctly with p=0.95;
- careless: 0.6 / 0.25, judges correctly with p=0.7;
- flag_everything / never_flag: always / never flags; judges "wrong" / "right" always;
- colluding pairs: play carefully on what they think are checks but flag half of the right answers
  too, and judge every flag "model wrong" (one pair shares an address and is linked, one is not);
- agent: a VLM player (`origin: agent`, token login): 0.8 / 0.05, judges correctly with p=0.9.

Rounds: every player plays one session (10 images, 5 tainted), then the players allowed to judge
work through the judging queue (`--judging sequential`: in the population's order, up to 40 tasks
each; `turns`: one task each in turn, in a random order); a quarter of the tasks are tainted flags
(checks of known truth that score the judges). After `--sessions`
rounds: the reliability error against each player's true rates (detection a, false alarm b), the
export's false examples (confirmed flags where the model was right), validations per kept example,
points standing on false flags, and each kind of judge's skill and whether it kept its voice.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from tests.platform_live import ADMIN  # noqa: E402
from tests.vlm_live import VLMServer  # noqa: E402

from _common import emit, log, machine_info  # noqa: E402
from vlcurate.server import db, ledger  # noqa: E402
from vlcurate.server.app import create_app  # noqa: E402
from vlcurate.server.game import judging  # noqa: E402
from vlcurate.server.settings import ServerSettings  # noqa: E402
from vlcurate.synth.scene import generate_scene, scene_rng  # noqa: E402


@dataclass
class Kind:
    detect: float  # P(flag | model wrong)
    false_alarm: float  # P(flag | model right)
    judge_right: float  # P(a verdict matches the truth); < 0 means "always says wrong"
    collude: bool = False


KINDS = {
    "careful": Kind(0.9, 0.03, 0.95),
    "careless": Kind(0.6, 0.25, 0.7),
    "flag_everything": Kind(1.0, 1.0, -1.0),
    "never_flag": Kind(0.0, 0.0, 0.5),
    "colluder": Kind(0.9, 0.5, -1.0, collude=True),
    "agent": Kind(0.8, 0.05, 0.9),
}
POPULATION = {"careful": 8, "careless": 4, "flag_everything": 2, "never_flag": 2, "agent": 2}


@dataclass
class Sim:
    name: str
    kind: str
    client: TestClient
    player_id: int = 0


def write_pool(root: Path, n: int, n_objects: int | None, seed: int) -> dict[bytes, int]:
    root.mkdir(parents=True)
    truth = {}
    for i in range(n):
        s = generate_scene(scene_rng(seed, i), n_objects=n_objects)
        data = s.encode("png")
        (root / f"i{i:04d}.png").write_bytes(data)
        (root / f"i{i:04d}.txt").write_text(s.caption_text)
        truth[data] = s.n_objects
    return truth


def distinguishability(engine: Any) -> dict[str, Any]:
    """Can tainted images be told from untainted ones? 5-fold cross-validated accuracy of a logistic
    regression on (1) image features (per-channel mean and spread of a 16x16 thumbnail, byte size),
    (2) the model's answer text (length, numeric or not, the number), (3) answer latency. Chance is
    the share of the larger class (0.5 here)."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Q, SI, Im = db.game_questions, db.game_session_images, db.game_images
    with engine.connect() as conn:
        rows = conn.execute(
            select(Q.c.answer, Q.c.latency_ms, SI.c.tainted, Im.c.data)
            .join(SI, SI.c.id == Q.c.session_image_id)
            .join(Im, Im.c.id == SI.c.image_id)
        ).all()
    y = np.array([r.tainted for r in rows], dtype=int)
    thumbs = {}
    img_x, txt_x, lat_x = [], [], []
    for r in rows:
        if r.data not in thumbs:
            a = np.asarray(Image.open(io.BytesIO(r.data)).convert("RGB").resize((16, 16)), dtype=np.float32)
            thumbs[r.data] = [*a.mean(axis=(0, 1)), *a.std(axis=(0, 1)), len(r.data)]
        img_x.append(thumbs[r.data])
        t = r.answer.strip()
        txt_x.append([len(t), float(t.isdigit()), float(t) if t.isdigit() else -1.0])
        lat_x.append([r.latency_ms])

    def acc(x: list[list[float]]) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return round(float(cross_val_score(model, np.array(x), y, cv=5).mean()), 3)

    tainted_ms = [r.latency_ms for r in rows if r.tainted]
    honest_ms = [r.latency_ms for r in rows if not r.tainted]
    return {
        "answers": len(rows),
        "chance": round(max(y.mean(), 1 - y.mean()), 3),
        "accuracy_image_features": acc(img_x),
        "accuracy_answer_text": acc(txt_x),
        "accuracy_latency": acc(lat_x),
        "median_latency_ms_tainted_untainted": [
            round(statistics.median(tainted_ms), 1),
            round(statistics.median(honest_ms), 1),
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--pool", type=int, default=120, help="images per pool")
    ap.add_argument("--wrong-rate", type=float, default=0.15, help="the model's own error rate (count)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--same-pool",
        action="store_true",
        help="tainted images from the main pool too (default, as in the paper: an easy pool, one object)",
    )
    ap.add_argument(
        "--judging",
        choices=("sequential", "turns"),
        default="sequential",
        help="who judges first: the population in order, each through the queue (as measured so far), "
        "or one task each in turn in a random order (every kind of judge builds a record)",
    )
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        VLMServer(["--wrong-rate", str(args.wrong_rate), "--wrong-kinds", "count"]) as vlm,
    ):
        root = Path(tmp)
        truth = write_pool(root / "main", args.pool, None, 102)
        if not args.same_pool:
            truth |= write_pool(root / "easy", args.pool, 1, 101)
        easy = root / ("main" if args.same_pool else "easy")
        app = create_app(ServerSettings(db=str(root / "gap.db"), admin_token=ADMIN, rate_per_minute=100_000))
        engine = app.state.engine
        admin = TestClient(app, client=("198.51.100.1", 1))
        r = admin.post(
            "/api/v1/game/games",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"name": "sim", "pool": str(root / "main"), "easy_pool": str(easy)}
            | {"vlm_url": vlm.base_url, "model": "tiny-synth"},
        )
        assert r.status_code == 201, r.text
        players: list[Sim] = []
        n = 0

        def login(kind: str, address: str, agent: bool = False) -> Sim:
            nonlocal n
            n += 1
            c = TestClient(app, client=(address, 10_000 + n))
            if agent:
                a = admin.post(
                    "/api/v1/agents",
                    headers={"Authorization": f"Bearer {ADMIN}"},
                    json={"contributor": f"agent-{n}", "name": f"agent-{n}"},
                )
                assert a.status_code in (200, 201), a.text
                body = c.post(
                    "/api/v1/game/login/token", json={"token": a.json()["token"], "origin": "agent"}
                ).json()
            else:
                body = c.post("/api/v1/game/login/guest", json={"name": f"{kind}-{n}"}).json()
            c.headers["Authorization"] = f"Bearer {body['token']}"
            return Sim(f"{kind}-{n}", kind, c, body["player_id"])

        for kind, count in POPULATION.items():
            for _ in range(count):
                players.append(login(kind, f"203.0.113.{n + 10}", agent=kind == "agent"))
        players += [login("colluder", "192.0.2.50"), login("colluder", "192.0.2.50")]  # linked pair
        players += [login("colluder", "192.0.2.60"), login("colluder", "192.0.2.61")]  # unlinked pair

        def answer_truth(si_public: str) -> tuple[int, bool]:
            SI, Im = db.game_session_images, db.game_images
            with engine.connect() as conn:
                row = conn.execute(
                    select(Im.c.data, SI.c.tainted)
                    .join(SI, SI.c.image_id == Im.c.id)
                    .where(SI.c.public_id == si_public)
                ).one()
            return truth[row.data], bool(row.tainted)

        exposures: dict[str, list[int]] = {
            p.name: [0, 0, 0, 0] for p in players
        }  # wrong seen/flagged, right seen/flagged
        asks = 0
        for round_ in range(args.sessions):
            for p in rng.sample(players, len(players)):
                k = KINDS[p.kind]
                body = p.client.post("/api/v1/game/sessions", json={"game": "sim"}).json()
                sid = body["session_id"]
                while body["state"] == "active":
                    im = body["image"]
                    q = p.client.post(
                        f"/api/v1/game/sessions/{sid}/images/{im['image_id']}/questions",
                        json={"question": "How many objects are there?", "client_key": uuid.uuid4().hex},
                    ).json()
                    asks += 1
                    count, _tainted = answer_truth(im["image_id"])
                    wrong = q["answer"].strip() != str(count)
                    flag = rng.random() < (k.detect if wrong else k.false_alarm)
                    e = exposures[p.name]
                    e[0 if wrong else 2] += 1
                    e[1 if wrong else 3] += flag
                    if flag:
                        p.client.post(
                            f"/api/v1/game/sessions/{sid}/images/{im['image_id']}/flag",
                            json={"question_id": q["question_id"], "corrected": str(count)},
                        )
                    body = p.client.post(
                        f"/api/v1/game/sessions/{sid}/next", json={"position": im["position"]}
                    ).json()
            # judging: "sequential": each player in the population's order works through the queue
            # (up to 40 tasks); "turns": players take one task each in turn, in a random order
            judging_now = rng.sample(players, len(players)) if args.judging == "turns" else list(players)
            turns = [[p] * 40 for p in judging_now] if args.judging == "sequential" else [judging_now] * 40
            for batch in turns:
                for p in list(batch):
                    if p not in judging_now:
                        continue
                    k = KINDS[p.kind]
                    t = p.client.post("/api/v1/game/judgements/next")
                    if t.status_code != 200:
                        judging_now.remove(p)
                        continue
                    task = t.json()
                    J, F, SI, Im = db.game_judgements, db.game_flags, db.game_session_images, db.game_images
                    with engine.connect() as conn:
                        data = conn.execute(
                            select(Im.c.data)
                            .join(SI, SI.c.image_id == Im.c.id)
                            .join(F, F.c.session_image_id == SI.c.id)
                            .join(J, J.c.flag_id == F.c.id)
                            .where(J.c.public_id == task["task_id"])
                        ).scalar_one()
                    really_wrong = task["answer"].strip() != str(truth[data])
                    verdict = (
                        True
                        if k.judge_right < 0
                        else (really_wrong if rng.random() < k.judge_right else not really_wrong)
                    )
                    p.client.post(f"/api/v1/game/judgements/{task['task_id']}", json={"model_wrong": verdict})
            log(f"round {round_ + 1}/{args.sessions} done ({time.perf_counter() - t0:.0f} s)")

        # ---- measure ----
        F, Q, SI, Im, J, R, L = (
            db.game_flags,
            db.game_questions,
            db.game_session_images,
            db.game_images,
            db.game_judgements,
            db.game_reliability,
            db.ledger,
        )
        with engine.connect() as conn:
            rel = {r.player_id: r for r in conn.execute(select(R)).all()}
            flags = conn.execute(
                select(F.c.id, F.c.state, F.c.tainted, Q.c.answer, Im.c.data)
                .join(Q, Q.c.id == F.c.question_id)
                .join(SI, SI.c.id == F.c.session_image_id)
                .join(Im, Im.c.id == SI.c.image_id)
            ).all()
            n_judgements = conn.execute(
                select(func.count())
                .select_from(J)
                .join(F, F.c.id == J.c.flag_id)
                .where(J.c.model_wrong.is_not(None), F.c.tainted.is_(False))
            ).scalar_one()
            n_checks = conn.execute(
                select(func.count())
                .select_from(J)
                .join(F, F.c.id == J.c.flag_id)
                .where(J.c.model_wrong.is_not(None), F.c.tainted.is_(True))
            ).scalar_one()
            skills = judging.judge_skill(conn, [p.player_id for p in players])
            reversed_ids = select(L.c.reverses_id).where(L.c.reverses_id.is_not(None))
            standing = dict(
                conn.execute(
                    select(L.c.game_flag_id, func.sum(L.c.points))
                    .where(L.c.game_flag_id.is_not(None), L.c.kind == "credit", L.c.id.not_in(reversed_ids))
                    .group_by(L.c.game_flag_id)
                ).all()
            )
            problems = ledger.audit(conn)
        false_flag = {f.id: f.answer.strip() == str(truth[f.data]) for f in flags}  # model was right
        confirmed = [f for f in flags if f.state == "confirmed" and not f.tainted]
        false_confirmed = [f for f in confirmed if false_flag[f.id]]
        per_kind: dict[str, dict[str, list[float]]] = {}
        realised_a, realised_b = [], []
        for p in players:
            k = KINDS[p.kind]
            r_ = rel[p.player_id]
            sk = skills[p.player_id]
            d = per_kind.setdefault(
                p.kind,
                {
                    "a_err": [],
                    "b_err": [],
                    "earning": [],
                    "judge_skill": [],
                    "judge_voice": [],
                    "judge_known": [],
                },
            )
            d["a_err"].append(abs(r_.a - k.detect))
            d["b_err"].append(abs(r_.b - k.false_alarm))
            d["earning"].append(1.0 if r_.earning else 0.0)
            if sk.n_wrong + sk.n_right:
                d["judge_skill"].append(sk.skill)
                d["judge_voice"].append(1.0 if sk.has_voice else 0.0)
                d["judge_known"].append(float(sk.n_wrong + sk.n_right))
            e = exposures[p.name]  # what the player did, as against its type's rates
            if e[0]:
                realised_a.append(abs(r_.a - e[1] / e[0]))
            if e[2]:
                realised_b.append(abs(r_.b - e[3] / e[2]))
        all_a = [e for d in per_kind.values() for e in d["a_err"]]
        all_b = [e for d in per_kind.values() for e in d["b_err"]]
        result: dict[str, Any] = {
            "benchmark": "gap_simulation",
            "machine": machine_info(),
            "players": {k: v for k, v in POPULATION.items()} | {"colluder": 4},
            "sessions_per_player": args.sessions,
            "judging_order": args.judging,
            "model_wrong_rate_untainted": args.wrong_rate,
            "tainted_pool": "main" if args.same_pool else "easy (one object; main: 1-4 objects)",
            "asks": asks,
            "seconds": round(time.perf_counter() - t0, 1),
            "reliability": {
                "mean_abs_error_a": round(statistics.mean(all_a), 4),
                "mean_abs_error_b": round(statistics.mean(all_b), 4),
                "share_within_0.05_a": round(sum(e <= 0.05 for e in all_a) / len(all_a), 3),
                "share_within_0.05_b": round(sum(e <= 0.05 for e in all_b) / len(all_b), 3),
                "mean_abs_error_against_realised_rates": [
                    round(statistics.mean(realised_a), 4),
                    round(statistics.mean(realised_b), 4),
                ],
                "per_kind": {
                    kind: {
                        "mean_abs_error_a": round(statistics.mean(d["a_err"]), 4),
                        "mean_abs_error_b": round(statistics.mean(d["b_err"]), 4),
                        "earning_share": round(statistics.mean(d["earning"]), 3),
                    }
                    for kind, d in per_kind.items()
                },
            },
            "judges": {
                "checks_judged": n_checks,
                "per_kind": {
                    kind: {
                        "judge_skill": round(statistics.mean(d["judge_skill"]), 3),
                        "share_with_a_voice": round(statistics.mean(d["judge_voice"]), 3),
                        "verdicts_of_known_truth": round(statistics.mean(d["judge_known"]), 1),
                    }
                    for kind, d in per_kind.items()
                    if d["judge_skill"]
                },
            },
            "flags": {
                "untainted": sum(1 for f in flags if not f.tainted),
                "untainted_false": sum(1 for f in flags if not f.tainted and false_flag[f.id]),
                "confirmed": len(confirmed),
                "overturned": sum(1 for f in flags if f.state == "overturned"),
                "pending": sum(1 for f in flags if f.state == "pending"),
            },
            "export_false_share": round(len(false_confirmed) / len(confirmed), 4) if confirmed else None,
            "validations_per_kept_example": round(n_judgements / len(confirmed), 2) if confirmed else None,
            "points_standing_on_false_flags": float(
                sum(
                    v
                    for fid, v in standing.items()
                    if not next(f.tainted for f in flags if f.id == fid) and false_flag[fid]
                )
            ),
            "points_standing_total": float(sum(standing.values())),
            "ledger_problems": problems,
            "tainted_vs_untainted": distinguishability(engine),
        }
        engine.dispose()
    emit(
        result,
        f"gap_simulation: a error {result['reliability']['mean_abs_error_a']}, b error "
        f"{result['reliability']['mean_abs_error_b']}, false share in export {result['export_false_share']}, "
        f"{result['validations_per_kept_example']} validations per kept example, "
        f"{result['points_standing_on_false_flags']} points on false flags",
        args.json_out,
    )


if __name__ == "__main__":
    main()

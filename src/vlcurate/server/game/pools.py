"""Creating a game: read its two image pools (any input `vlcurate score` reads) into the database.

Each image keeps its bytes, its uid and source key, and its perceptual hash (for the export's
near-duplicate-aware split). Unreadable images are skipped and counted; a pool with no readable
image is an error, so a game never starts that cannot fill a session.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine

from vlcurate.base.images import phash, sniff_image_ext
from vlcurate.base.records import Status
from vlcurate.io.fetch import resolve_images
from vlcurate.io.sources import open_source
from vlcurate.server import db
from vlcurate.server.errors import BadRequest, Conflict, NotFound
from vlcurate.server.game.config import GameCreate, GameOut, VLMJudgeOut

POOLS = ("main", "easy")


@dataclass
class PoolImage:
    uid: str
    key: str
    caption: str | None
    data: bytes
    ext: str | None
    phash: str


def read_pool(spec: str, kind: str | None, limit: int) -> tuple[list[PoolImage], int]:
    """The readable images of `spec` (at most `limit`) and how many were skipped as unreadable."""
    try:
        source = open_source(spec, kind=kind)
        shards = source.shards()
    except Exception as exc:
        raise BadRequest(f"cannot open pool {spec!r}: {exc}") from exc
    out: list[PoolImage] = []
    skipped = 0
    for shard in shards:
        try:
            samples = list(source.iter_samples(shard))
        except Exception as exc:
            raise BadRequest(f"cannot read shard {shard.name} of pool {spec!r}: {exc}") from exc
        samples = resolve_images(samples)
        for s in samples:
            if s.status != Status.OK or not s.image:
                skipped += 1
                continue
            try:
                with Image.open(io.BytesIO(s.image)) as im:
                    h = phash(im.convert("RGB"))
            except Exception:
                skipped += 1
                continue
            out.append(
                PoolImage(s.uid, s.key, s.text, s.image, s.image_ext or sniff_image_ext(s.image), f"{h:016x}")
            )
            if len(out) >= limit:
                return out, skipped
    return out, skipped


def create_game(engine: Engine, req: GameCreate) -> GameOut:
    main, _ = read_pool(req.pool, req.kind, req.max_images_per_pool)
    easy, _ = read_pool(req.easy_pool, req.kind, req.max_images_per_pool)
    if len(main) < req.n_images - req.n_tainted:
        raise BadRequest(
            f"pool {req.pool!r} has {len(main)} readable images; "
            f"a session needs {req.n_images - req.n_tainted}"
        )
    if len(easy) < req.n_tainted:
        raise BadRequest(
            f"easy pool {req.easy_pool!r} has {len(easy)} readable images; a session needs {req.n_tainted}"
        )
    fields: dict[str, Any] = req.model_dump(exclude={"pool", "easy_pool", "kind", "max_images_per_pool"})
    fields["vlm_judges"] = fields["vlm_judges"] or None
    with db.begin_write(engine) as conn:
        if conn.execute(select(db.game_games.c.id).where(db.game_games.c.name == req.name)).first():
            raise Conflict(f"game {req.name!r} already exists")
        gid = conn.execute(
            insert(db.game_games).values(**fields, state="active").returning(db.game_games.c.id)
        ).scalar_one()
        for pool, images in (("main", main), ("easy", easy)):
            for i in range(0, len(images), 200):
                conn.execute(
                    insert(db.game_images),
                    [
                        dict(
                            game_id=gid,
                            pool=pool,
                            uid=im.uid,
                            key=im.key,
                            caption=im.caption,
                            data=im.data,
                            ext=im.ext,
                            phash=im.phash,
                        )
                        for im in images[i : i + 200]
                    ],
                )
        return game_out(conn, int(gid))


def game_out(conn: Connection, game_id: int) -> GameOut:
    G, Im = db.game_games, db.game_images
    row = conn.execute(select(G).where(G.c.id == game_id)).first()
    if row is None:
        raise NotFound(f"no game {game_id}")
    counts: dict[str, int] = dict(
        conn.execute(select(Im.c.pool, func.count()).where(Im.c.game_id == game_id).group_by(Im.c.pool)).all()
    )
    return GameOut(
        id=row.id,
        name=row.name,
        model=row.model,
        vlm_url=row.vlm_url,
        n_images=row.n_images,
        n_tainted=row.n_tainted,
        seconds_per_image=row.seconds_per_image,
        points_per_image=row.points_per_image,
        max_question_chars=row.max_question_chars,
        judges_needed=row.judges_needed,
        min_skill=row.min_skill,
        state=row.state,
        images_main=int(counts.get("main", 0)),
        images_easy=int(counts.get("easy", 0)),
        vlm_judges=[VLMJudgeOut(name=j["name"], model=j["model"]) for j in row.vlm_judges or []],
    )


def game_by_name(conn: Connection, name: str) -> Any:
    row = conn.execute(select(db.game_games).where(db.game_games.c.name == name)).first()
    if row is None:
        raise NotFound(f"no game named {name!r}")
    return row


def list_games(conn: Connection) -> list[GameOut]:
    return [
        game_out(conn, gid)
        for (gid,) in conn.execute(select(db.game_games.c.id).order_by(db.game_games.c.id))
    ]

"""The platform's tables (SQLAlchemy 2 Core) and the engine factory for SQLite and PostgreSQL.

Core tables rather than ORM classes: the lease/submit hot path runs a handful of statements per
request and must hold hundreds of unit cycles per second, so every query is written out.
Scores travel as packed float32 blobs (one per submission, one per verified unit), not a row per
pair: a unit of 256 pairs is one row to write, not 256. Alembic migrations under
`server/migrations` create these tables; `metadata` here is their single definition.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()


def utcnow() -> dt.datetime:
    """Timezone-aware now in UTC; every timestamp in the database is UTC."""
    return dt.datetime.now(dt.timezone.utc)


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; every stored timestamp is UTC, so say so."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _id() -> Column[Any]:
    return Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


def _ts(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable, default=None if nullable else utcnow)


server_meta = Table(
    "server_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    _id(),
    Column("name", String(200), nullable=False, unique=True),
    Column("source", Text, nullable=False),
    Column("kind", String(32), nullable=True),
    Column("n_items", Integer, nullable=False, default=0),
    Column("n_unreadable", Integer, nullable=False, default=0),
    _ts("created_at"),
)

# One row per image-caption pair; ids are contiguous within a dataset so a unit is an id range.
items = Table(
    "items",
    metadata,
    _id(),
    Column("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    Column("uid", String(32), nullable=False),
    Column("shard", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("caption", Text, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("read_status", String(32), nullable=False, default="ok"),
    Column("read_error", Text, nullable=True),
    Index("ix_items_dataset_uid", "dataset_id", "uid"),
)

item_images = Table(
    "item_images",
    metadata,
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("ext", String(16), nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    _id(),
    Column("dataset_id", ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("model", String(300), nullable=False),
    Column("model_fingerprint", String(64), nullable=False),
    Column("preprocessing", JSON, nullable=False),
    Column("quorum", Integer, nullable=False),
    Column("max_replicas", Integer, nullable=False),
    Column("tolerance", Float, nullable=False),
    Column("agree_fraction", Float, nullable=False),
    Column("unit_size", Integer, nullable=False),
    Column("gold_per_unit", Integer, nullable=False),
    Column("points_per_pair", Float, nullable=False),
    Column("lease_seconds", Integer, nullable=False),
    Column("trust_after", Integer, nullable=False),
    Column("min_audit_rate", Float, nullable=False),
    Column("state", String(16), nullable=False, default="active"),
    _ts("created_at"),
    # A `label` task's classes and check rule (`vlcurate.server.labels`); NULL for scoring (0006).
    Column("label_spec", JSON, nullable=True),
)

# A unit covers items first_item..last_item of its dataset. `target` replicas are wanted (quorum,
# 1 for a trusted contributor's unaudited unit, more after disagreement); `issued` counts replicas
# leased or submitted and still in the running.
units = Table(
    "units",
    metadata,
    _id(),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("first_item", BigInteger, nullable=False),
    Column("last_item", BigInteger, nullable=False),
    Column("n_items", Integer, nullable=False),
    Column("state", String(16), nullable=False, default="open"),
    Column("target", Integer, nullable=False),
    Column("issued", Integer, nullable=False, default=0),
    Column("replicas_total", Integer, nullable=False, default=0),
    Column("single_trusted", Boolean, nullable=False, default=False),
    Column("verified_scores", LargeBinary, nullable=True),
    Column("verified_status", JSON, nullable=True),
    _ts("verified_at", nullable=True),
    UniqueConstraint("task_id", "seq", name="uq_units_task_seq"),
    # Leasing's scan: the leasable units only, in seq order (migration 0003 says why).
    Index(
        "ix_units_open",
        "task_id",
        "seq",
        postgresql_where=text("state = 'open' AND issued < target"),
        sqlite_where=text("state = 'open' AND issued < target"),
    ),
    Index("ix_units_verified_at", "verified_at"),
    Index("ix_units_task_first", "task_id", "first_item"),
)

# Known answers for hidden checks, from trusted sources only: `operator` (a trusted score run) or
# `server` (scored with the pinned model). A unit's checks are its own items that have a row here, so
# every replica of the unit sees the same items and a check belongs to one unit only. A check whose
# answer the server no longer stands by (disputed, re-scored differently) is retired, not deleted.
gold = Table(
    "gold",
    metadata,
    _id(),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    Column("score", Float, nullable=True),
    Column("status", String(32), nullable=False, default="ok"),
    Column("source", String(16), nullable=False),
    _ts("retired_at", nullable=True),
    Column("retired_reason", Text, nullable=True),
    UniqueConstraint("task_id", "item_id", name="uq_gold_task_item"),
)

# A trusted contributor's failed check, re-scored by the server (`vlcurate.server.checks`).
check_disputes = Table(
    "check_disputes",
    metadata,
    _id(),
    Column("gold_id", ForeignKey("gold.id", ondelete="CASCADE"), nullable=False),
    Column("contributor_id", ForeignKey("contributors.id", ondelete="CASCADE"), nullable=False),
    Column("submitted_score", Float, nullable=True),
    Column("rescored", Float, nullable=True),
    Column("upheld", Boolean, nullable=False),
    _ts("created_at"),
    Index("ix_check_disputes_gold", "gold_id"),
)

# Where a contributor's requests came from (a keyed hash of the client address): contributors that
# share one are linked, and count as one voice in a unit's quorum (`vlcurate.server.links`).
contributor_origins = Table(
    "contributor_origins",
    metadata,
    Column("contributor_id", ForeignKey("contributors.id", ondelete="CASCADE"), primary_key=True),
    Column("origin", String(32), primary_key=True),
    _ts("first_seen"),
    Index("ix_contributor_origins_origin", "origin"),
)

contributors = Table(
    "contributors",
    metadata,
    _id(),
    Column("name", String(200), nullable=False, unique=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("pause_reason", Text, nullable=True),
    _ts("paused_at", nullable=True),
    Column("gold_pass", Integer, nullable=False, default=0),
    Column("gold_fail", Integer, nullable=False, default=0),
    Column("agree", Integer, nullable=False, default=0),
    Column("disagree", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("valid_streak", Integer, nullable=False, default=0),
    Column("n_valid", Integer, nullable=False, default=0),
    Column("points", Float, nullable=False, default=0.0),
    # Leases handed back or let expire without a submission, in the UTC hour `walkaway_hour`.
    Column("walkaway_hour", String(13), nullable=True),
    Column("walkaways", Integer, nullable=False, default=0),
    _ts("created_at"),
)

agents = Table(
    "agents",
    metadata,
    _id(),
    Column("contributor_id", ForeignKey("contributors.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", String(64), nullable=False, default="unknown"),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("revoked", Boolean, nullable=False, default=False),
    _ts("revoked_at", nullable=True),
    _ts("expires_at", nullable=True),
    Column("rate_per_minute", Integer, nullable=False),
    Column("daily_quota", Integer, nullable=False),
    Column("quota_day", String(10), nullable=True),
    Column("quota_used", Integer, nullable=False, default=0),
    _ts("last_seen", nullable=True),
    _ts("created_at"),
)

# Reputation per agent software version, from the same gold and agreement outcomes. A version's
# counts are the sum of its rows: writers add to a random shard, so that concurrent verifications
# (nearly all by one version) do not queue on one row lock (migration 0003).
version_stats = Table(
    "version_stats",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("shard", SmallInteger, primary_key=True, autoincrement=False, default=0),
    Column("gold_pass", Integer, nullable=False, default=0),
    Column("gold_fail", Integer, nullable=False, default=0),
    Column("agree", Integer, nullable=False, default=0),
    Column("disagree", Integer, nullable=False, default=0),
)

# A replica is one contributor's copy of a unit: the lease, then its fate.
# state: leased -> submitted -> valid | invalid; leased -> expired | released.
# One live replica (not released or expired) per unit and contributor: a contributor who walked
# away from a unit may get it again, so exclusion can never starve a unit.
LIVE_REPLICA = "state NOT IN ('released', 'expired')"
replicas = Table(
    "replicas",
    metadata,
    _id(),
    Column("unit_id", ForeignKey("units.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("contributor_id", ForeignKey("contributors.id"), nullable=False),
    Column("agent_id", ForeignKey("agents.id"), nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("gold_items", JSON, nullable=False),
    Column("state", String(16), nullable=False, default="leased"),
    _ts("leased_at"),
    Column("deadline", DateTime(timezone=True), nullable=False),
    _ts("finished_at", nullable=True),
    Column("lease_key", String(128), nullable=True),
    UniqueConstraint("agent_id", "lease_key", name="uq_replicas_agent_lease_key"),
    Index(
        "uq_replicas_unit_contributor_live",
        "unit_id",
        "contributor_id",
        unique=True,
        postgresql_where=text(LIVE_REPLICA),
        sqlite_where=text(LIVE_REPLICA),
    ),
    # The lease sweeper's scan: only leases still out (migration 0003).
    Index(
        "ix_replicas_leased",
        "deadline",
        postgresql_where=text("state = 'leased'"),
        sqlite_where=text("state = 'leased'"),
    ),
    # The caps on leases held at once, per agent and per contributor (migration 0004).
    Index(
        "ix_replicas_agent_leased",
        "agent_id",
        postgresql_where=text("state = 'leased'"),
        sqlite_where=text("state = 'leased'"),
    ),
    Index(
        "ix_replicas_contributor_leased",
        "contributor_id",
        postgresql_where=text("state = 'leased'"),
        sqlite_where=text("state = 'leased'"),
    ),
)

# scores: float32 little-endian, unit items in id order then the replica's gold items in its order;
# statuses: {position: status} for items the agent could not score (score NaN).
submissions = Table(
    "submissions",
    metadata,
    _id(),
    Column("replica_id", ForeignKey("replicas.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("agent_id", ForeignKey("agents.id"), nullable=False),
    Column("contributor_id", ForeignKey("contributors.id"), nullable=False),
    Column("unit_id", ForeignKey("units.id", ondelete="CASCADE"), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("model_fingerprint", String(64), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("scores", LargeBinary, nullable=False),
    Column("statuses", JSON, nullable=False),
    Column("gold_ok", Boolean, nullable=False),
    Column("gold_max_error", Float, nullable=True),
    Column("state", String(16), nullable=False),
    Column("response", JSON, nullable=True),
    _ts("received_at"),
    UniqueConstraint("agent_id", "idempotency_key", name="uq_submissions_agent_key"),
    Index("ix_submissions_unit", "unit_id"),
)

# Append-only: credits for validated results, reversals that point at the credit they undo.
# An entry pays either a scoring submission (agent, submission and unit set) or a GAP flag
# (`game_flag_id` set; the player's agent when an agent played), never both (migration 0005).
ledger = Table(
    "ledger",
    metadata,
    _id(),
    Column("contributor_id", ForeignKey("contributors.id"), nullable=False),
    Column("agent_id", ForeignKey("agents.id"), nullable=True),
    Column("submission_id", ForeignKey("submissions.id"), nullable=True),
    Column("unit_id", ForeignKey("units.id"), nullable=True),
    Column("game_flag_id", ForeignKey("game_flags.id"), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("points", Float, nullable=False),
    Column("pairs", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("reverses_id", ForeignKey("ledger.id"), nullable=True, unique=True),
    _ts("created_at"),
    Index("ix_ledger_contributor", "contributor_id"),
    Index("ix_ledger_submission", "submission_id"),
    Index("ix_ledger_game_flag", "game_flag_id"),
)

# ---- GAP: the gamified adversarial prompting game (`vlcurate.server.game`) ----------------------
# A game: image pools, the model it probes, the tainting instruction and the session shape.
game_games = Table(
    "game_games",
    metadata,
    _id(),
    Column("name", String(200), nullable=False, unique=True),
    Column("vlm_url", Text, nullable=False),
    Column("model", String(300), nullable=False),
    Column("taint_instruction", Text, nullable=False),
    Column("honest_instruction", Text, nullable=True),
    Column("n_images", Integer, nullable=False),
    Column("n_tainted", Integer, nullable=False),
    Column("seconds_per_image", Integer, nullable=False),
    Column("points_per_image", Float, nullable=False),
    Column("max_question_chars", Integer, nullable=False),
    Column("judges_needed", Integer, nullable=False),
    Column("min_skill", Float, nullable=False),
    Column("min_tainted_seen", Integer, nullable=False),
    Column("vlm_timeout_s", Float, nullable=False),
    Column("vlm_judges", JSON, nullable=True),  # the optional panel: [{name, vlm_url, model, timeout_s}]
    Column("state", String(16), nullable=False, default="active"),
    _ts("created_at"),
)

# The images of a game: `main` (untainted images, answered honestly) and `easy` (tainted ones).
game_images = Table(
    "game_images",
    metadata,
    _id(),
    Column("game_id", ForeignKey("game_games.id", ondelete="CASCADE"), nullable=False),
    Column("pool", String(16), nullable=False),
    Column("uid", String(32), nullable=False),
    Column("key", Text, nullable=False),
    Column("caption", Text, nullable=True),
    Column("data", LargeBinary, nullable=False),
    Column("ext", String(16), nullable=True),
    Column("phash", String(16), nullable=False),
    Index("ix_game_images_game_pool", "game_id", "pool"),
)

# A player is a contributor (one balance, one ledger, the same links) with a game login.
game_players = Table(
    "game_players",
    metadata,
    _id(),
    Column("contributor_id", ForeignKey("contributors.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("origin", String(16), nullable=False, default="human"),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("telegram_id", BigInteger, nullable=True, unique=True),
    Column("display_name", String(200), nullable=False),
    _ts("created_at"),
)

# A session: `n_images` session images in random order; `public_id` is what the player sees.
game_sessions = Table(
    "game_sessions",
    metadata,
    _id(),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("game_id", ForeignKey("game_games.id", ondelete="CASCADE"), nullable=False),
    Column("player_id", ForeignKey("game_players.id", ondelete="CASCADE"), nullable=False),
    Column("state", String(16), nullable=False, default="active"),
    _ts("created_at"),
    _ts("finished_at", nullable=True),
    Index("ix_game_sessions_player", "player_id"),
)

# One image of a session. `tainted` never leaves the server while the game is played.
game_session_images = Table(
    "game_session_images",
    metadata,
    _id(),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("session_id", ForeignKey("game_sessions.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("image_id", ForeignKey("game_images.id", ondelete="CASCADE"), nullable=False),
    Column("tainted", Boolean, nullable=False),
    _ts("started_at", nullable=True),
    _ts("deadline", nullable=True),
    _ts("finished_at", nullable=True),
    Column("outcome", String(16), nullable=True),
    UniqueConstraint("session_id", "position", name="uq_game_session_images_pos"),
)

# A question and the model's answer; `client_key` makes a retried request a replay.
game_questions = Table(
    "game_questions",
    metadata,
    _id(),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("session_image_id", ForeignKey("game_session_images.id", ondelete="CASCADE"), nullable=False),
    Column("player_id", ForeignKey("game_players.id", ondelete="CASCADE"), nullable=False),
    Column("client_key", String(128), nullable=False),
    Column("text", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("model", String(300), nullable=False),
    Column("latency_ms", Float, nullable=False),
    _ts("created_at"),
    UniqueConstraint("session_image_id", "client_key", name="uq_game_questions_key"),
)

# "Wrong Answer": one per session image. state: tainted (a check: the model was told to be wrong),
# pending -> confirmed | overturned (untainted: independent players judge it).
game_flags = Table(
    "game_flags",
    metadata,
    _id(),
    Column("public_id", String(32), nullable=False, unique=True),
    Column(
        "session_image_id",
        ForeignKey("game_session_images.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("question_id", ForeignKey("game_questions.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("player_id", ForeignKey("game_players.id", ondelete="CASCADE"), nullable=False),
    Column("tainted", Boolean, nullable=False),
    Column("corrected", Text, nullable=True),
    Column("state", String(16), nullable=False),
    Column("posterior", Float, nullable=True),
    Column("votes_wrong", Integer, nullable=False, default=0),
    Column("votes_right", Integer, nullable=False, default=0),
    Column("disputed", Boolean, nullable=False, default=False),
    _ts("created_at"),
    _ts("settled_at", nullable=True),
    Index("ix_game_flags_state", "state"),
)

# A judging task handed to one player (verdict NULL until answered): was the model wrong?
game_judgements = Table(
    "game_judgements",
    metadata,
    _id(),
    Column("public_id", String(32), nullable=False, unique=True),
    Column("flag_id", ForeignKey("game_flags.id", ondelete="CASCADE"), nullable=False),
    Column("player_id", ForeignKey("game_players.id", ondelete="CASCADE"), nullable=False),
    Column("model_wrong", Boolean, nullable=True),
    Column("corrected", Text, nullable=True),
    _ts("assigned_at"),
    _ts("answered_at", nullable=True),
    UniqueConstraint("flag_id", "player_id", name="uq_game_judgements_flag_player"),
)

# A verdict of one VLM judge of the game's panel on a flag (NULL verdict: the judge gave none, `error`).
game_model_verdicts = Table(
    "game_model_verdicts",
    metadata,
    _id(),
    Column("flag_id", ForeignKey("game_flags.id", ondelete="CASCADE"), nullable=False),
    Column("judge", String(100), nullable=False),
    Column("model", String(300), nullable=False),
    Column("own_answer", Text, nullable=True),
    Column("model_wrong", Boolean, nullable=True),
    Column("correction_ok", Boolean, nullable=True),
    Column("error", Text, nullable=True),
    _ts("created_at"),
    UniqueConstraint("flag_id", "judge", name="uq_game_model_verdicts_flag_judge"),
)

# A player's reliability from tainted images (detection a) and judged flags (false alarms b).
game_reliability = Table(
    "game_reliability",
    metadata,
    Column("player_id", ForeignKey("game_players.id", ondelete="CASCADE"), primary_key=True),
    Column("n_tainted", Integer, nullable=False, default=0),
    Column("n_tainted_flagged", Integer, nullable=False, default=0),
    Column("n_untainted", Integer, nullable=False, default=0),
    Column("n_untainted_flagged", Integer, nullable=False, default=0),
    Column("n_confirmed", Integer, nullable=False, default=0),
    Column("n_overturned", Integer, nullable=False, default=0),
    Column("a", Float, nullable=False, default=0.5),
    Column("a_sd", Float, nullable=False, default=0.29),
    Column("b", Float, nullable=False, default=0.5),
    Column("b_sd", Float, nullable=False, default=0.29),
    Column("earning", Boolean, nullable=False, default=True),
    Column("reason", Text, nullable=True),
    _ts("updated_at"),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the dashboard read while agents write; a long busy timeout queues writers instead
    # of failing them; foreign keys are off by default in SQLite.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock at BEGIN (see `begin_write`): read-then-write transactions
    # (leasing) cannot interleave, and none fails late with "database is locked" after reading
    # stale rows. Readers begin deferred and, with WAL, never wait for a writer.
    immediate = conn.get_execution_options().get("vlcurate_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


_WRITE_LOCKS: dict[int, threading.Lock] = {}


@contextlib.contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: `with begin_write(engine) as conn:` (BEGIN IMMEDIATE on SQLite).

    On SQLite the writers of one process also queue on a lock first: SQLite's own busy handler
    sleeps in growing steps, so dozens of threads contending for the write lock would convoy
    (measured: 12 cycles/s and 60 s p99 with 50 agents, against hundreds with the lock).
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    lock = _WRITE_LOCKS.setdefault(id(engine.pool), threading.Lock())
    with lock, engine.execution_options(vlcurate_write=True).begin() as conn:
        yield conn


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and plain paths as well as SQLAlchemy URLs; psycopg 3 is the driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url` with the settings the platform relies on (see the pragma notes)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=60
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping per checkout (a round trip on every request): a connection the server dropped
        # fails one request with a 503 that agents retry, and SQLAlchemy then replaces the pool.
        pool_pre_ping=False,
        pool_recycle=600,
    )

    @event.listens_for(engine, "connect")
    def _fast_json(dbapi_conn: Any, _record: Any) -> None:
        # The hot path's functions answer in jsonb; orjson parses it several times faster.
        import orjson
        from psycopg.types.json import set_json_loads

        set_json_loads(orjson.loads, dbapi_conn)

    return engine

"""GAP, the gamified adversarial prompting game (issue 17): its tables, and game points in the ledger.

- `game_games`, `game_images` (pools `main` and `easy`), `game_players` (a contributor with a game
  login), `game_sessions`, `game_session_images` (`tainted` stays on the server), `game_questions`
  (with the model's answer), `game_flags` ("Wrong Answer", an optional corrected answer),
  `game_judgements` (other players' verdicts), `game_reliability` (detection and false-alarm rates).
- `ledger`: an entry pays either a scoring submission or a game flag (`game_flag_id`), so
  `agent_id`, `submission_id` and `unit_id` become nullable. On SQLite the table is rebuilt, so its
  append-only guards are dropped and made again around the rebuild.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 06:05:00
"""

import sqlalchemy as sa
from alembic import op

from vlcurate.server.migrate import revision_module

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
GAME_TABLES = (
    "game_judgements",
    "game_flags",
    "game_questions",
    "game_session_images",
    "game_sessions",
    "game_reliability",
    "game_players",
    "game_images",
    "game_games",
)


def _guards(make: bool) -> None:
    first = revision_module("0001_initial_schema.py")
    if make:
        first._ledger_append_only()
    else:
        first._drop_ledger_guards()


def _ledger_columns(nullable: bool) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _guards(False)
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        if nullable:
            batch_op.add_column(sa.Column("game_flag_id", ID, nullable=True))
            batch_op.create_index("ix_ledger_game_flag", ["game_flag_id"], unique=False)
            batch_op.create_foreign_key("fk_ledger_game_flag", "game_flags", ["game_flag_id"], ["id"])
        for column in ("agent_id", "submission_id", "unit_id"):
            batch_op.alter_column(column, existing_type=ID, nullable=nullable)
        if not nullable:
            batch_op.drop_constraint("fk_ledger_game_flag", type_="foreignkey")
            batch_op.drop_index("ix_ledger_game_flag")
            batch_op.drop_column("game_flag_id")
    if sqlite:
        _guards(True)


def upgrade() -> None:
    op.create_table(
        "game_games",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("vlm_url", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("taint_instruction", sa.Text(), nullable=False),
        sa.Column("honest_instruction", sa.Text(), nullable=True),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("n_tainted", sa.Integer(), nullable=False),
        sa.Column("seconds_per_image", sa.Integer(), nullable=False),
        sa.Column("points_per_image", sa.Float(), nullable=False),
        sa.Column("max_question_chars", sa.Integer(), nullable=False),
        sa.Column("judges_needed", sa.Integer(), nullable=False),
        sa.Column("min_skill", sa.Float(), nullable=False),
        sa.Column("min_tainted_seen", sa.Integer(), nullable=False),
        sa.Column("vlm_timeout_s", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "game_images",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("game_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("pool", sa.String(length=16), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("caption", sa.Text(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("ext", sa.String(length=16), nullable=True),
        sa.Column("phash", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["game_id"], ["game_games.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("game_images", schema=None) as batch_op:
        batch_op.create_index("ix_game_images_game_pool", ["game_id", "pool"], unique=False)

    op.create_table(
        "game_players",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("contributor_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("telegram_id", sa.BigInteger(), nullable=True),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["contributor_id"], ["contributors.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("contributor_id"),
        sa.UniqueConstraint("telegram_id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "game_reliability",
        sa.Column("player_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("n_tainted", sa.Integer(), nullable=False),
        sa.Column("n_tainted_flagged", sa.Integer(), nullable=False),
        sa.Column("n_untainted", sa.Integer(), nullable=False),
        sa.Column("n_untainted_flagged", sa.Integer(), nullable=False),
        sa.Column("n_confirmed", sa.Integer(), nullable=False),
        sa.Column("n_overturned", sa.Integer(), nullable=False),
        sa.Column("a", sa.Float(), nullable=False),
        sa.Column("a_sd", sa.Float(), nullable=False),
        sa.Column("b", sa.Float(), nullable=False),
        sa.Column("b_sd", sa.Float(), nullable=False),
        sa.Column("earning", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["player_id"], ["game_players.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("player_id"),
    )
    op.create_table(
        "game_sessions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("game_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("player_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["game_id"], ["game_games.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["player_id"], ["game_players.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
    )
    with op.batch_alter_table("game_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_game_sessions_player", ["player_id"], unique=False)

    op.create_table(
        "game_session_images",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tainted", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["image_id"], ["game_images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["session_id"], ["game_sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
        sa.UniqueConstraint("session_id", "position", name="uq_game_session_images_pos"),
    )
    op.create_table(
        "game_questions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("session_image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("player_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("client_key", sa.String(length=128), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["player_id"], ["game_players.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["session_image_id"], ["game_session_images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
        sa.UniqueConstraint("session_image_id", "client_key", name="uq_game_questions_key"),
    )
    op.create_table(
        "game_flags",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("session_image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("question_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("player_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tainted", sa.Boolean(), nullable=False),
        sa.Column("corrected", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("posterior", sa.Float(), nullable=True),
        sa.Column("votes_wrong", sa.Integer(), nullable=False),
        sa.Column("votes_right", sa.Integer(), nullable=False),
        sa.Column("disputed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["player_id"], ["game_players.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["question_id"], ["game_questions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["session_image_id"], ["game_session_images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_id"),
        sa.UniqueConstraint("question_id"),
        sa.UniqueConstraint("session_image_id"),
    )
    with op.batch_alter_table("game_flags", schema=None) as batch_op:
        batch_op.create_index("ix_game_flags_state", ["state"], unique=False)

    op.create_table(
        "game_judgements",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("flag_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("player_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_wrong", sa.Boolean(), nullable=True),
        sa.Column("corrected", sa.Text(), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["flag_id"], ["game_flags.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["player_id"], ["game_players.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("flag_id", "player_id", name="uq_game_judgements_flag_player"),
        sa.UniqueConstraint("public_id"),
    )
    _ledger_columns(nullable=True)


def downgrade() -> None:
    # Game entries cannot stay in a ledger whose entries all pay a submission: the guards step
    # aside for this one delete (the downgrade removes the game altogether).
    _guards(False)
    op.execute("DELETE FROM ledger WHERE game_flag_id IS NOT NULL")
    _guards(True)
    _ledger_columns(nullable=False)
    for name in GAME_TABLES:
        op.drop_table(name)

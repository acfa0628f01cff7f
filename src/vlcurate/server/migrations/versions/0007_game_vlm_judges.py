"""GAP's optional panel of VLM judges (issue 17).

- `game_games.vlm_judges`: the panel a game's operator configured (name, endpoint, model,
  timeout), NULL for none.
- `game_model_verdicts`: one row per judge and flag: the judge's own answer, its verdict on the
  model's answer and on the player's correction, or the error that left it without one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 08:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("game_games", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vlm_judges", sa.JSON(), nullable=True))
    op.create_table(
        "game_model_verdicts",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("flag_id", ID, nullable=False),
        sa.Column("judge", sa.String(100), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("own_answer", sa.Text(), nullable=True),
        sa.Column("model_wrong", sa.Boolean(), nullable=True),
        sa.Column("correction_ok", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["flag_id"], ["game_flags.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("flag_id", "judge", name="uq_game_model_verdicts_flag_judge"),
    )


def downgrade() -> None:
    op.drop_table("game_model_verdicts")
    with op.batch_alter_table("game_games", schema=None) as batch_op:
        batch_op.drop_column("vlm_judges")

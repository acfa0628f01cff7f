"""Label tasks (issue 18, `vlcurate build --platform`): a task can ask for class labels instead of
scores.

- `tasks.label_spec`: for a task of kind `label`, the classes agents choose from (names and their
  definitions) and the share of a submission's hidden checks it must get right; NULL for scoring
  tasks. Labels travel in the existing score blobs as class indices, and the hidden checks'
  answers in `gold.score` (source `builder` or `dataset`: labels the operator trusts).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 08:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label_spec", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("label_spec")

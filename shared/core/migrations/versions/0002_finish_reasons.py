"""generations.finish_reasons: why each turn stopped (stop, or length: cut at the token budget);
problems.solution: the reference solution of a problem that has one (the oracle arm)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "solution",
                sa.Text(),
                nullable=False,
                server_default="",
                comment="Reference solution, if the problem has one (the oracle arm).",
            )
        )
    # Rows written before this revision did not record it: an empty list ("unknown").
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "finish_reasons",
                sa.JSON(),
                nullable=False,
                server_default="[]",
                comment="Why each turn stopped: stop or length (cut at the token budget).",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("finish_reasons")
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.drop_column("solution")

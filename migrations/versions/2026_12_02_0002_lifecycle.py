"""lifecycle: runs.status limited to the lifecycle's states; experiments.idempotency_key

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

The CHECK lists store.lifecycle.RunStatus (a test compares them). The idempotency key is
unique per owner (NULLs, the keyless submissions, never collide). Stored metric ids need no
migration: the frozen table (store.trace_codec.METRIC_IDS) is today's column positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "completed", "diverged", "failed", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.create_check_constraint(op.f("ck_runs_status"), f"status IN {STATUSES}")
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.create_unique_constraint("uq_experiments_idempotency", ["owner_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint("uq_experiments_idempotency", type_="unique")
        batch.drop_column("idempotency_key")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(op.f("ck_runs_status"), type_="check")

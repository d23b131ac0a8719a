"""Create the windows and lectures tables.

Revision ID: 0001
Revises:
Create Date: 2026-03-02

The column types are spelled out here instead of imported from aggregator.models, so
this revision keeps creating the same schema when the models change later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COUNTS = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "windows",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("room", sa.String(64), nullable=False),
        sa.Column("window_start", _TIMESTAMP, nullable=False),
        sa.Column("window_end", _TIMESTAMP, nullable=False),
        sa.Column("frames_sampled", sa.Integer(), nullable=False),
        sa.Column("faces_seen", sa.Integer(), nullable=False),
        sa.Column("min_faces", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Boolean(), nullable=False),
        sa.Column("counts", _COUNTS, nullable=True),
        sa.Column("received_at", _TIMESTAMP, nullable=False),
        sa.UniqueConstraint("device_id", "window_start", name="uq_windows_device_id_window_start"),
    )
    op.create_index("ix_windows_room_window_start", "windows", ["room", "window_start"])

    op.create_table(
        "lectures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("room", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("start", _TIMESTAMP, nullable=False),
        sa.Column("end", _TIMESTAMP, nullable=False),
    )
    op.create_index("ix_lectures_room_start", "lectures", ["room", "start"])


def downgrade() -> None:
    op.drop_index("ix_lectures_room_start", table_name="lectures")
    op.drop_table("lectures")
    op.drop_index("ix_windows_room_window_start", table_name="windows")
    op.drop_table("windows")

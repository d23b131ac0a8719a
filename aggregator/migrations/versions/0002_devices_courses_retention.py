"""Add devices, lecture courses and sources, and the indexes of reports and purges.

Revision ID: 0002
Revises: 0001
Create Date: 2026-03-09

- ``devices``: one row per agent, updated from its windows and from its retained
  ``status`` and ``stats`` topics.
- ``lectures.course``: lectures of one course, for the course trend report.
- ``lectures.source`` and ``lectures.source_uid``: where a lecture came from (manual,
  ad hoc, CSV or iCalendar timetable) and its key in that timetable, so a second import
  of the same timetable updates its lectures instead of adding them again.
- ``ix_windows_window_start``: the purge deletes windows older than a cutoff in every
  room, which the (room, window_start) index cannot serve.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("room", sa.String(64), nullable=True),
        sa.Column("first_seen", _TIMESTAMP, nullable=False),
        sa.Column("last_seen", _TIMESTAMP, nullable=False),
        sa.Column("last_window_end", _TIMESTAMP, nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("status_at", _TIMESTAMP, nullable=True),
        sa.Column("stats_json", sa.Text(), nullable=True),
        sa.Column("stats_at", _TIMESTAMP, nullable=True),
    )
    with op.batch_alter_table("lectures") as batch:
        batch.add_column(sa.Column("course", sa.String(200), nullable=True))
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="manual"))
        batch.add_column(sa.Column("source_uid", sa.String(400), nullable=True))
        batch.create_index("ix_lectures_course_start", ["course", "start"])
        batch.create_unique_constraint("uq_lectures_room_source_uid", ["room", "source_uid"])
    op.create_index("ix_windows_window_start", "windows", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_windows_window_start", table_name="windows")
    with op.batch_alter_table("lectures") as batch:
        batch.drop_constraint("uq_lectures_room_source_uid", type_="unique")
        batch.drop_index("ix_lectures_course_start")
        batch.drop_column("source_uid")
        batch.drop_column("source")
        batch.drop_column("course")
    op.drop_table("devices")

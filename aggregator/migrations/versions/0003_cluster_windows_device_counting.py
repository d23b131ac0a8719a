"""Key the windows by room, start and device, and keep each device's counting state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

- ``windows`` loses its ``id`` column, which nothing read, and takes the primary key
  ``(room, window_start, device_id)``, the order in which reports read it. On SQLite
  the table is WITHOUT ROWID, so its rows are stored in that order: a lecture's
  windows lie on a few adjacent pages, where before each of them lay on a page of its
  own among those of every other room. On a simulated semester of 58 million windows
  read from disk this took one lecture's query from a median of 42 to 93 ms to one of
  about 10 ms, and the file is smaller (docs/benchmarks/aggregator.md). The primary key
  replaces ``ix_windows_room_window_start``. On PostgreSQL, which keeps rows in the
  order they arrive, the key is an index like the one it replaces.
- ``devices.counting`` and ``devices.counting_at``: the latest text of an agent's
  retained ``counting`` topic (``active`` or ``paused``) and when it arrived.
- ``lectures.stopped_at``: when ``lecture stop`` ended an ad hoc lecture, so that a
  lecture that ran past its planned end can still be stopped, and a stopped one is
  never reopened. Earlier versions gave an ad hoc lecture a planned end in whole
  seconds and set the end to the time of the stop, which has a fraction of a second,
  so the upgrade marks the ad hoc lectures with such an end as stopped at their end.

The upgrade copies the windows table once and blocks writes to it meanwhile, and the
database needs free space for a second copy of the table until it ends. Upgrade when no
lecture is being recorded: windows that arrive meanwhile wait in the agents' outboxes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COUNTS = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
_COLUMNS = (
    "room, window_start, device_id, window_end, frames_sampled, faces_seen, min_faces, suppressed, "
    "counts, received_at"
)


def _window_columns() -> list[sa.Column]:
    return [
        sa.Column("room", sa.String(64), nullable=False),
        sa.Column("window_start", _TIMESTAMP, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("window_end", _TIMESTAMP, nullable=False),
        sa.Column("frames_sampled", sa.Integer(), nullable=False),
        sa.Column("faces_seen", sa.Integer(), nullable=False),
        sa.Column("min_faces", sa.Integer(), nullable=False),
        sa.Column("suppressed", sa.Boolean(), nullable=False),
        sa.Column("counts", _COUNTS, nullable=True),
        sa.Column("received_at", _TIMESTAMP, nullable=False),
    ]


def upgrade() -> None:
    _drop_window_keys(["ix_windows_room_window_start", "ix_windows_window_start"])
    op.create_table(
        "windows_new",
        *_window_columns(),
        sa.PrimaryKeyConstraint("room", "window_start", "device_id", name="pk_windows"),
        sa.UniqueConstraint("device_id", "window_start", name="uq_windows_device_id_window_start"),
        sqlite_with_rowid=False,
    )
    _copy_windows_and_rename("ORDER BY room, window_start, device_id")
    op.create_index("ix_windows_window_start", "windows", ["window_start"])
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("counting", sa.String(16), nullable=True))
        batch.add_column(sa.Column("counting_at", _TIMESTAMP, nullable=True))
    with op.batch_alter_table("lectures") as batch:
        batch.add_column(sa.Column("stopped_at", _TIMESTAMP, nullable=True))
    # SQLite stores times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (aggregator.models.UtcDateTime).
    fraction_set = (
        "date_trunc('second', \"end\") <> \"end\""
        if op.get_bind().dialect.name == "postgresql"
        else "substr(\"end\", 21, 6) NOT IN ('', '000000')"
    )
    op.execute(f"UPDATE lectures SET stopped_at = \"end\" WHERE source = 'ad-hoc' AND {fraction_set}")


def downgrade() -> None:
    with op.batch_alter_table("lectures") as batch:
        batch.drop_column("stopped_at")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("counting_at")
        batch.drop_column("counting")
    _drop_window_keys(["ix_windows_window_start"])
    op.create_table(
        "windows_new",
        sa.Column("id", _ID, nullable=False),
        *_window_columns(),
        sa.PrimaryKeyConstraint("id", name="windows_pkey"),
        sa.UniqueConstraint("device_id", "window_start", name="uq_windows_device_id_window_start"),
    )
    # Ids follow the order of arrival, as they did before the upgrade.
    _copy_windows_and_rename("ORDER BY received_at, window_start, device_id")
    op.create_index("ix_windows_room_window_start", "windows", ["room", "window_start"])
    op.create_index("ix_windows_window_start", "windows", ["window_start"])


def _drop_window_keys(indexes: list[str]) -> None:
    """Drop the indexes and, on PostgreSQL, the unique constraint of ``windows``.

    Their names are unique in the whole database, so the copy can take them only once
    they are gone. SQLite names the index of a unique constraint after its table, so
    there the constraint goes with the table.
    """
    for name in indexes:
        op.drop_index(name, table_name="windows")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("uq_windows_device_id_window_start", "windows", type_="unique")


def _copy_windows_and_rename(order: str) -> None:
    op.execute(f"INSERT INTO windows_new ({_COLUMNS}) SELECT {_COLUMNS} FROM windows {order}")
    op.drop_table("windows")
    op.rename_table("windows_new", "windows")

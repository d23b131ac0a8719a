"""Alembic environment: runs the migrations on the connection that the caller passes in.

``aggregator.store.upgrade_schema`` opens the connection, holds a lock that keeps two
aggregators from migrating at once, and passes the connection in
``config.attributes["connection"]``. The ``alembic`` command line instead builds an
engine from ``sqlalchemy.url`` in ``alembic.ini`` or from the AGGREGATOR_DB variable.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from aggregator.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most column properties, so later revisions rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_from_url() -> None:
    url = os.environ.get("AGGREGATOR_DB") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("Set AGGREGATOR_DB or sqlalchemy.url in alembic.ini to the database URL")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported: run them against a database")

supplied_connection = context.config.attributes.get("connection")
if supplied_connection is None:
    _run_from_url()
else:
    _run(supplied_connection)

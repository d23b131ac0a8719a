"""Alembic migrations of the aggregator database, shipped inside the package.

``aggregator.store.upgrade_schema`` runs them at start. To write a new revision from a
source checkout: ``alembic -c aggregator/migrations/alembic.ini revision -m "..."``.
"""

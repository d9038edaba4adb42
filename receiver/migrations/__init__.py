"""Alembic migrations of the receiver's schema, run by `receiver.db.migrate`."""

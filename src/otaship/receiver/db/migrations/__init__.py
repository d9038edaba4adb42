"""Alembic migrations of the receiver's schema, run by `otaship.receiver.db.engine.migrate`."""

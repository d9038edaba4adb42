"""How autogenerate writes SQLModel's column types into a new revision.

SQLModel declares strings as its AutoString and datetimes as its UTCDateTime.
A revision names the plain SQLAlchemy types they stand for instead, so that it
imports nothing from sqlmodel and keeps its meaning when sqlmodel changes.
"""
from __future__ import annotations

from typing import Any, Literal

from sqlmodel.sql.sqltypes import AutoString, UTCDateTime


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    if kind == "type":
        if isinstance(obj, AutoString):
            length = getattr(obj, "length", None)
            return f"sa.String(length={length})" if length else "sa.String()"
        if isinstance(obj, UTCDateTime):
            return "sa.DateTime(timezone=True)"
    # Alembic's own rendering for everything else.
    return False

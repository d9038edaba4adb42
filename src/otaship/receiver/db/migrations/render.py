"""How autogenerate compares the models with a database, and writes SQLModel's
column types into a new revision.

SQLModel declares strings as its AutoString and datetimes as its UTCDateTime;
the rollout's StrEnums are otaship's EnumText. A revision names the plain
SQLAlchemy types they stand for instead, so that it imports nothing from
sqlmodel or otaship and keeps its meaning when either changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

from otaship.receiver.db.enums import EnumText
from otaship.receiver.db.path_search import is_search_object


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    if kind == "type":
        if isinstance(obj, AutoString):
            length = getattr(obj, "length", None)
            return f"sa.String(length={length})" if length else "sa.String()"
        if isinstance(obj, UTCDateTime):
            return "sa.DateTime(timezone=True)"
        if isinstance(obj, EnumText):
            # Stored as plain text: the enum lives in the code, not the schema.
            return f"sa.String(length={obj.length})"
    # Alembic's own rendering for everything else.
    return False


def include_name(name: str | None, type_: str, parents: Mapping[Any, str | None]) -> bool:
    # The path search index is raw DDL of migration 0002 (an FTS5 table, a GIN
    # index with pg_trgm's operator class) that the models cannot declare.
    return not is_search_object(name)

"""The listing's `search_value`: a case-insensitive substring of `path`, found
through an index rather than by reading every row of the owner.

`LIKE '%…%'` cannot use a b-tree, so without help each search reads all of an
owner's OTAs twice (the count and the page): 30× slower at 100,000 groups than
at 1,000. Both databases have a trigram index for exactly this:

- PostgreSQL: a GIN index with pg_trgm's `gin_trgm_ops` on `path`, which
  serves `ILIKE`.
- SQLite: an FTS5 table with the trigram tokenizer (case-insensitive), kept in
  step with `group_otas` by triggers. It holds its own copy of (ota id, path)
  instead of being an external-content table keyed by rowid: `group_otas` has
  a text primary key, and VACUUM may renumber the rowids of such a table.

Migration 0002 creates both. A search shorter than a trigram cannot use
either index, and one matching a good part of the owner's rows is cheaper to
answer by scanning them: both fall back to the scan.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, TextClause, column, func, table, text
from sqlmodel import Session, col, select

from otaship.receiver.db.models import GroupOta

TRIGRAM = 3
# SQLite: the FTS5 table and its triggers. FTS5 keeps its data in shadow
# tables named after it (group_ota_paths_data, _idx, _content, …).
SQLITE_TABLE = "group_ota_paths"
# PostgreSQL: the GIN index on group_otas.path.
POSTGRES_INDEX = "ix_group_otas_path_trgm"

_paths = table(SQLITE_TABLE, column("ota_id"), column("path"))


def escape_like(text: str, escape: str = "\\") -> str:
    """`text` as a LIKE pattern matching exactly itself."""
    return text.replace(escape, escape * 2).replace("%", escape + "%").replace("_", escape + "_")


def fts_phrase(text: str) -> str:
    """An FTS5 query that matches `text` as one phrase: with the trigram
    tokenizer, exactly the rows containing it."""
    return '"' + text.replace('"', '""') + '"'


# Looking up an FTS5 match in group_otas costs about ten times what testing one
# row in a scan of the owner's rows does; past this many, scanning wins anyway.
MAX_INDEXED_MATCHES = 1000


def index_pays(matches: int, owner_rows: int) -> bool:
    """Whether fetching `matches` rows by id beats scanning the owner's rows."""
    return matches <= MAX_INDEXED_MATCHES and matches * 10 <= owner_rows


def owned_paths_containing(
    session: Session, *, owner_id: str, search: str, owner_rows: int
) -> list[ColumnElement[bool] | TextClause]:
    """WHERE terms on GroupOta: the owner's rows whose path contains `search`, ignoring case."""
    owned = col(GroupOta.owner_id) == owner_id
    path = col(GroupOta.path)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # The pattern as one parameter: the GIN index serves ILIKE whatever the
        # pattern, and PostgreSQL's statistics choose between it and a scan.
        return [owned, path.ilike(f"%{escape_like(search)}%", escape="\\")]
    if dialect == "sqlite" and len(search) >= TRIGRAM:
        # SQLite without statistics guesses that an owner has few rows, and
        # would scan them all for the id list; so the index is chosen here, by
        # counting the matches (across owners, at most one past the limit).
        ids = session.exec(
            select(_paths.c.ota_id)
            .where(_paths.c.path.op("MATCH")(fts_phrase(search)))
            .limit(MAX_INDEXED_MATCHES + 1)
        ).all()
        if index_pays(len(ids), owner_rows):
            # The unary plus keeps SQLite from using the owner index: the rows
            # are found by primary key, and the owner is checked on each.
            return [
                col(GroupOta.id).in_(list(ids)),
                text("+group_otas.owner_id = :search_owner").bindparams(search_owner=owner_id),
            ]
    # autoescape: % and _ in the search are literal characters, not wildcards.
    return [owned, func.lower(path).contains(search.lower(), autoescape=True)]


def is_search_object(name: str | None) -> bool:
    """Objects migration 0002 makes outside the models: Alembic's
    autogenerate leaves them alone instead of proposing to drop them."""
    return name is not None and (name == POSTGRES_INDEX or name.startswith(SQLITE_TABLE))

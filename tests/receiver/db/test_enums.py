"""EnumText: a StrEnum column stores the member's plain string and reads back the member."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.exc import StatementError

from otaship.receiver.db.enums import EnumText, Outcome, State


def test_a_member_is_stored_as_its_value_and_read_back_as_the_member() -> None:
    engine = create_engine("sqlite://")
    rows = Table("rows", MetaData(), Column("state", EnumText(State, 16)), Column("raw", String(16)))
    rows.metadata.create_all(engine)
    try:
        with engine.begin() as connection:
            connection.execute(insert(rows), [{"state": State.HALTED}, {"state": "canary"}, {"state": None}])
            stored = connection.execute(text("SELECT state FROM rows ORDER BY rowid")).scalars().all()
            assert stored == ["halted", "canary", None]
            assert all(type(value) is str for value in stored if value is not None)
            read = connection.execute(select(rows.c.state).order_by(text("rowid"))).scalars().all()
            assert read == [State.HALTED, State.CANARY, None]
            assert [type(value) for value in read] == [State, State, type(None)]
            # In a comparison the member binds as its string too.
            found = connection.execute(select(rows.c.state).where(rows.c.state == State.CANARY)).scalar()
            assert found is State.CANARY
            with pytest.raises(StatementError, match="'succeeded' is not a valid State"):
                connection.execute(insert(rows), [{"state": Outcome.SUCCEEDED.value}])
    finally:
        engine.dispose()

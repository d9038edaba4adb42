"""A database server that never answers fails a connection in seconds, not minutes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import OperationalError

from otaship.receiver.db import engine as db
from otaship.receiver.db.engine import create_db_engine, database_unavailable


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose connections the kernel completes but nobody ever answers: a hung server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def seconds_to_fail(url: str) -> float:
    engine = create_db_engine(url)
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError) as failure:
            engine.connect()
    finally:
        engine.dispose()
    assert database_unavailable(failure.value)
    return time.monotonic() - started


def test_connecting_gives_up_after_the_connect_timeout(
    silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 1)
    took = seconds_to_fail(f"postgresql+psycopg://postgres@127.0.0.1:{silent_port}/otaship")
    assert 0.9 <= took < 3


def test_the_url_can_set_its_own_connect_timeout(silent_port: int) -> None:
    took = seconds_to_fail(f"postgresql+psycopg://postgres@127.0.0.1:{silent_port}/otaship?connect_timeout=2")
    assert 1.9 <= took < 4


def test_a_refused_connection_fails_at_once() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        # Bound, not listening: connections to it are refused.
        assert seconds_to_fail(f"postgresql+psycopg://postgres@127.0.0.1:{port}/otaship") < 1


def test_a_pooled_connection_is_waited_for_only_so_long() -> None:
    engine = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:1/otaship")
    try:
        assert engine.pool.timeout() == db.POOL_TIMEOUT_S  # type: ignore[attr-defined]
    finally:
        engine.dispose()

"""Event lines that are written only once their transaction has committed.

A deploy or a rollout's change of state is decided inside a write
transaction, which can still fail or roll back after the decision: its line
must not say "deployed" or "halted" for something that never happened. The
line is kept on the session and logged after the commit; a rollback drops it.

Every event line is at info, one line an event, and carries its fields as
`extra` too (`event` names the kind), so the JSON format has them as keys.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

_PENDING = "otaship_pending_events"
_LISTENING = "otaship_events_listening"


def after_commit(session: Session, logger: logging.Logger, message: str, **fields: Any) -> None:
    """Log `message` at info once `session` commits; `fields` go to the record's extra."""
    if not session.info.get(_LISTENING):
        # Once per session: it may commit, or roll back, more than once.
        event.listen(session, "after_commit", _write)
        event.listen(session, "after_rollback", _forget)
        session.info[_LISTENING] = True
    session.info.setdefault(_PENDING, []).append((logger, message, fields))


def _write(session: Session) -> None:
    for logger, message, fields in session.info.pop(_PENDING, []):
        logger.info(message, extra=fields)


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)

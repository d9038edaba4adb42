"""The rollout's vocabularies as StrEnums, and the column type that stores them.

A column of `EnumText` holds the member's plain string (no database enum, so a
new member needs no migration), and reads back the member: rows, JSON bodies
and metrics keep showing the same words.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class State(StrEnum):
    """A rollout's state."""

    CANARY = "canary"
    FLEET = "fleet"
    COMPLETE = "complete"
    HALTED = "halted"
    ABORTED = "aborted"
    # Halted, and each wave that got the version was given back what it ran
    # before (rollouts/rollback.py); the reason is the halt's.
    ROLLED_BACK = "rolled_back"


class Stage(StrEnum):
    """A rollout's stage, named after the state that runs it."""

    CANARY = "canary"
    FLEET = "fleet"
    # The devices of the waves sent back to their previous firmware after a
    # halt: succeeded went back, failed did not, timed_out is unreachable.
    ROLLBACK = "rollback"


class Outcome(StrEnum):
    """A targeted device's outcome in one stage."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    # The stage ended before the device finished, with time still left (a halt on
    # other devices' failures, an abort, a promotion on a threshold below 1).
    STOPPED = "stopped"
    # It failed (a 203, another version after its 201, or dark after its 201) and
    # its group's trigger is published again at its `retry_at` (rollouts/retries.py).
    RETRYING = "retrying"


class EnumText(TypeDecorator[StrEnum]):
    """A StrEnum stored as its value in a VARCHAR of `length`."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StrEnum], length: int) -> None:
        super().__init__(length)
        self.enum = enum
        self.length = length

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        # A value outside the enum fails here, before it reaches a row.
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)

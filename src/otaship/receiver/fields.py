"""Values from outside (query parameters, form fields, headers), parsed strictly.

Every parser here takes the raw text, or None when the value is absent, and
returns a clean value or raises BadField with a message that names the field
and says what it accepts: the route answers that message with a 400.

The rules are the same everywhere:
- Surrounding spaces, tabs and line ends are trimmed: a shell or a file adds them.
- Any other control character (C0, DEL, C1), and a tab or line end inside a
  value, is refused: no field of this API holds one, and PostgreSQL refuses NUL
  in text outright.
- Numbers are ASCII digits only, within bounds that fit both databases:
  `str.isdigit()` also accepts `²`, which `int()` then refuses.
- A value longer than its field allows is refused, never cut short.
"""

from __future__ import annotations

import math
import re

# What a shell or a file may leave around a value.
TRIMMED = " \t\r\n"
# C0, DEL and C1: unicodedata's category Cc.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
# How much of a refused value a message quotes.
QUOTED = 32
# Digits in a number field beyond this are refused before any arithmetic.
MAX_NUMBER_LENGTH = 32


class BadField(ValueError):
    """A value from outside is unusable; the message names the field and says why."""


def quoted(raw: str) -> str:
    """A refused value as a message shows it: escaped, and cut short."""
    return repr(raw[:QUOTED])


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def text(raw: str | None, *, name: str, max_length: int, default: str = "") -> str:
    """A text value, trimmed; `default` when absent or blank."""
    if raw is None:
        return default
    value = raw.strip(TRIMMED)
    if not value:
        return default
    if has_control(value):
        raise BadField(f"{name} must not contain control characters")
    if len(value) > max_length:
        raise BadField(f"{name} is too long: at most {max_length} characters")
    return value


def whole_number(
    raw: str | None, *, name: str, default: int, minimum: int, maximum: int, clamp: bool = False
) -> int:
    """A whole number in [minimum, maximum]; with `clamp`, larger values become `maximum`."""
    if raw is None:
        return default
    value = raw.strip(TRIMMED)
    if not value:
        return default
    number = _ascii_whole(value, clamp=clamp)
    if number is None or number < minimum or (number > maximum and not clamp):
        allowed = f"of {minimum} or more" if clamp else f"from {minimum} to {maximum}"
        raise BadField(f"{name} must be a whole number {allowed}, not {quoted(value)}")
    return min(number, maximum)


def _ascii_whole(value: str, *, clamp: bool) -> int | None:
    if not (value.isascii() and value.isdigit()):
        return None
    significant = value.lstrip("0") or "0"
    if len(significant) > MAX_NUMBER_LENGTH:
        # Past any bound this module is given: no need to build the number
        # (int() refuses strings of more than 4300 digits anyway).
        return 10**MAX_NUMBER_LENGTH if clamp else None
    return int(significant)


def fraction(raw: str | None, *, name: str, default: float) -> float:
    """A number in (0, 1]: decimal or exponent notation (`0.5`, `5e-1`), ASCII only."""
    if raw is None:
        return default
    value = raw.strip(TRIMMED)
    if not value:
        return default
    number = float(value) if len(value) <= MAX_NUMBER_LENGTH and _DECIMAL.fullmatch(value) else math.nan
    # nan fails both comparisons; inf and anything that overflowed fails the second.
    if not (0 < number <= 1):
        raise BadField(f"{name} must be a number in (0, 1], not {quoted(value)}")
    return number


def flag(raw: str | None, *, name: str, default: bool) -> bool:
    """true/false, 1/0, yes/no or on/off, in any case."""
    if raw is None:
        return default
    value = raw.strip(TRIMMED).lower()
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise BadField(f"{name} must be true or false, not {quoted(value)}")


def choice(raw: str | None, *, name: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices`, in any case."""
    if raw is None:
        return default
    value = raw.strip(TRIMMED).lower()
    if not value:
        return default
    if value not in choices:
        raise BadField(f"{name} must be {' or '.join(choices)}, not {quoted(value)}")
    return value

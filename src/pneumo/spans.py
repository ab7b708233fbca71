"""Spans of time as people type them on a command line: ``90s``, ``30m``, ``12h``, ``7d``,
``2w``; read once here for every option that takes one."""

from __future__ import annotations

import datetime as dt
import re

_SPAN = re.compile(r"(\d{1,12})\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: The longest span read: a longer one is a typo, and subtracted from now it would reach
#: before the year 1, which ``datetime`` cannot hold (an OverflowError, not a message).
LONGEST = dt.timedelta(days=36500)


def as_span(text: str) -> dt.timedelta | None:
    """The span ``text`` names, or None when it names none (a span of zero, or longer
    than ``LONGEST``)."""
    match = _SPAN.fullmatch(text.strip().lower())
    if not match or int(match[1]) == 0:
        return None
    try:
        span = dt.timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError:
        return None
    return span if span <= LONGEST else None


def parse_span(text: str, option: str) -> dt.timedelta:
    """The span ``text`` names, for ``option``; ValueError (naming the option) otherwise."""
    span = as_span(text)
    if span is None:
        raise ValueError(f"{option} {text!r}: expected a span such as 30m, 1h, 7d or 2w "
                         "(at most 100 years)")
    return span

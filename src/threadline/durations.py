"""Durations as operators write them: `90s`, `5m`, `12h`, `30d`, `2w`."""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
DURATION_RULE = "a duration such as 90s, 5m, 12h, 30d or 2w"


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError naming the accepted form otherwise."""
    found = DURATION_PATTERN.fullmatch(text)
    if not found or float(found[1]) <= 0:
        raise ValueError(f"must be {DURATION_RULE}, not {text!r}")
    return float(found[1]) * UNITS[found[2]]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds` (`7d`, `90s`)."""
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"

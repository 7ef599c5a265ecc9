"""Human durations ("250ms", "30s", "4h", "14d") parsed into integer milliseconds.

leadpulse keeps one time unit inside (epoch/duration milliseconds as ints); durations
are written for people in config files and environment variables and converted here,
at the edge.

>>> parse_duration("30s")
30000
>>> parse_duration("1h30m")
5400000
>>> parse_duration(1500)
1500
"""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")


def parse_duration(value: str | int | float) -> int:
    """Return ``value`` in whole milliseconds; bare numbers are already milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return int(value)
    text = value.strip().lower().replace(" ", "")
    if text.isdigit():
        return int(text)
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"not a duration: {value!r} (write a number and a unit: ms, s, m, h, d or w, e.g. '30s', '4h', '14d')"
        )
    return int(round(total))


def format_duration(ms: int) -> str:
    """Inverse of :func:`parse_duration` for display: the largest exact unit."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"

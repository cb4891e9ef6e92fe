"""Times and durations as people and Grafana write them, turned into nanoseconds/seconds.

A point in time is one of:
  - epoch milliseconds, an integer string ("1717171717000"): Grafana's ${__from}/${__to};
  - ISO 8601 ("2024-05-31T12:00:00Z", "2024-05-31 12:00:00+02:00"); no zone means UTC;
  - relative to now: "now", "-15m", "15m" (also ago), "now-2h"; units ms, s, m, h, d, w.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_RELATIVE = re.compile(r"^\s*(?:now\s*)?-\s*(\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w))\s*$")
_HELP = "use epoch ms, ISO 8601 (2024-05-31T12:00:00Z) or relative (-15m, -2h, -1d, now)"


def parse_duration(text: str) -> float:
    """'30s', '15m', '2h', '7d', '1w', '250ms' -> seconds. ValueError otherwise."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"bad duration {text!r}: use a number and a unit (ms, s, m, h, d, w), e.g. 15m or 7d")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A point in time (see the module doc) -> nanoseconds since the Unix epoch."""
    now = time.time_ns() if now_ns is None else now_ns
    s = (text or "").strip()
    if not s:
        raise ValueError(f"empty time: {_HELP}")
    if s.lower() == "now":
        return now
    if re.fullmatch(r"\d+", s):
        return int(s) * 1_000_000
    rel = _RELATIVE.match(s.lower())
    if rel or _DURATION.match(s.lower()):
        span = parse_duration(rel.group(1) if rel else s.lower())
        return now - int(round(span * 1e9))
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"bad time {text!r}: {_HELP}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    # Whole seconds and microseconds separately: a float of ~1.7e9 s loses nanoseconds.
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000

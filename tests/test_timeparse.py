"""timeparse: the from/to/since forms people and Grafana use, and clear errors otherwise."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bpfscope.timeparse import parse_duration, parse_time

NOW = 1_717_171_717_123_456_789  # a fixed 'now' in ns


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("NOW", NOW),
    ("-30s", NOW - 30 * 10**9),
    ("-15m", NOW - 15 * 60 * 10**9),
    ("-2h", NOW - 2 * 3600 * 10**9),
    ("-1d", NOW - 86400 * 10**9),
    ("-1w", NOW - 7 * 86400 * 10**9),
    ("-250ms", NOW - 250 * 10**6),
    ("-1.5h", NOW - 5400 * 10**9),
    ("15m", NOW - 15 * 60 * 10**9),  # '--since 15m' means 15 minutes ago
    ("now-2h", NOW - 2 * 3600 * 10**9),
    (" -5m ", NOW - 5 * 60 * 10**9),
])
def test_relative(text, expected):
    assert parse_time(text, now_ns=NOW) == expected


def test_epoch_ms_is_grafanas_format():
    assert parse_time("1717171717000", now_ns=NOW) == 1_717_171_717_000 * 10**6
    assert parse_time("0", now_ns=NOW) == 0


@pytest.mark.parametrize("text, dt", [
    ("2024-05-31T12:00:00Z", datetime(2024, 5, 31, 12, tzinfo=timezone.utc)),
    ("2024-05-31T12:00:00+00:00", datetime(2024, 5, 31, 12, tzinfo=timezone.utc)),
    ("2024-05-31T14:00:00+02:00", datetime(2024, 5, 31, 12, tzinfo=timezone.utc)),
    ("2024-05-31 12:00:00", datetime(2024, 5, 31, 12, tzinfo=timezone.utc)),  # no zone: UTC
    ("2024-05-31", datetime(2024, 5, 31, tzinfo=timezone.utc)),
])
def test_iso8601(text, dt):
    assert parse_time(text, now_ns=NOW) == int(dt.timestamp()) * 10**9


def test_iso_keeps_microseconds_exactly():
    assert parse_time("2024-05-31T12:00:00.123456Z") == 1_717_156_800_123_456_000


def test_default_now_is_the_clock():
    import time
    before = time.time_ns()
    got = parse_time("-1m")
    assert before - 60 * 10**9 - 10**9 < got <= time.time_ns() - 60 * 10**9


@pytest.mark.parametrize("text", ["", "yesterday", "-15x", "--5m", "2024-13-01", "12:00 pm", "-m", "1e3"])
def test_bad_time_is_a_clear_value_error(text):
    with pytest.raises(ValueError) as exc:
        parse_time(text, now_ns=NOW)
    message = str(exc.value)
    assert "\n" not in message
    assert "epoch ms" in message and "ISO 8601" in message and "-15m" in message


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604800),
                                           ("1w", 604800), ("250ms", 0.25), ("1.5h", 5400)])
def test_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "7", "7x", "-7d", "d", "7 days"])
def test_bad_duration(text):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)

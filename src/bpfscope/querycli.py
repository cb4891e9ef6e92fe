"""`bpfscope query`: recent records from a collector, as a table or JSON lines."""

from __future__ import annotations

import sys
from datetime import date, datetime

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from bpfscope.timeparse import parse_time

DEFAULT_URL = "http://127.0.0.1:9380"


def _kv(d: dict | None) -> str:
    parts = []
    for k, v in (d or {}).items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def _label_param(text: str) -> str:
    # Accept key=value and key:value on the command line; the API wants key:value.
    sep = ":" if ":" in text else "="
    key, found, value = text.partition(sep)
    if not found or not key:
        raise ValueError(f"bad --label {text!r}: use KEY=VALUE")
    return f"{key}:{value}"


def _when(ts_ns: int, today: date) -> str:
    t = datetime.fromtimestamp(ts_ns / 1e9)
    stamp = t.strftime("%H:%M:%S.%f")[:-3]
    return stamp if t.date() == today else t.strftime("%m-%d ") + stamp


def _table(rows: list[dict]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    # identity columns never wrap; the free-form labels/values fold onto more lines instead
    for name in ("time", "host", "domain", "kind"):
        table.add_column(name, no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("comm", no_wrap=True)
    table.add_column("labels", overflow="fold", ratio=1)
    table.add_column("values", overflow="fold", ratio=1)
    today = date.today()
    for r in rows:
        table.add_row(_when(r["ts"], today), r["host"], r["domain"], r["kind"],
                      "" if r.get("pid") is None else str(r["pid"]), r.get("comm") or "",
                      _kv(r.get("labels")), _kv(r.get("values")))
    return table


def run_query(url: str, domain: str | None, kind: str | None, since: str | None, pid: int | None,
              comm: str | None, labels: list[str] | None, limit: int, as_json: bool) -> int:
    """GET url/api/v1/records with these filters and print them; returns the exit code."""
    try:
        if since:
            try:
                parse_time(since)  # a bad --since is our error to tell, before any request
            except ValueError as exc:
                raise ValueError(f"--since: {exc}") from None
        params: list[tuple[str, str | int]] = [("limit", limit), ("order", "desc")]
        params += [(k, v) for k, v in (("domain", domain), ("kind", kind), ("from", since), ("pid", pid),
                                        ("comm", comm)) if v is not None and v != ""]
        params += [("label", _label_param(text)) for text in labels or []]
    except ValueError as exc:
        print(f"bpfscope: {exc}", file=sys.stderr)
        return 2
    base = url.rstrip("/")
    try:
        resp = httpx.get(f"{base}/api/v1/records", params=params, timeout=30)
    except httpx.HTTPError as exc:
        print(f"bpfscope: cannot reach collector at {base}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text.strip().splitlines()[0] if resp.text.strip() else f"HTTP {resp.status_code}"
        print(f"bpfscope: collector at {base} answered {resp.status_code}: {message}", file=sys.stderr)
        return 2 if resp.status_code == 400 else 1
    rows = resp.json()
    if as_json:
        out = sys.stdout.buffer
        for row in rows:
            row.pop("time", None)  # the Grafana helper field; JSON lines stay schema v1
            out.write(orjson.dumps(row) + b"\n")
        out.flush()
        return 0
    if not rows:
        print("no records match", file=sys.stderr)
        return 0
    console = Console()
    if not console.is_terminal:  # piped: one record per line, not folded to 80 columns
        console = Console(width=240)
    console.print(_table(rows))
    return 0

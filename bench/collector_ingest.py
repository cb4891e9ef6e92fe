"""Ingest throughput: HTTP batches into the real collector vs bare sqlite3 executemany.

Both write the same 100 x 1000 records into SQLite files with the same table and
indexes (the Store's schema) and the same pragmas (WAL, synchronous=NORMAL).
Targets: HTTP >= 50,000 records/s and HTTP/bare >= 0.25.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import collector, records  # noqa: E402

from bpfscope.storage.models import RECORD_COLUMNS, metadata  # noqa: E402
from bpfscope.storage.store import _sqlite_pragmas  # noqa: E402

BATCHES, BATCH = 100, 1000
TARGET_RATE, TARGET_RATIO = 50_000, 0.25


def http_rate(db: Path, batches: list[list[dict]]) -> float:
    bodies = [orjson.dumps(b) for b in batches]  # the client's JSON encoding is not the server's cost
    warmup = orjson.dumps(records(BATCH, start_ns=1, seed=99))
    with collector(f"sqlite:///{db}") as url, httpx.Client(base_url=url, timeout=60) as client:
        headers = {"content-type": "application/json"}
        client.post("/api/v1/records", content=warmup, headers=headers).raise_for_status()
        started = time.perf_counter()
        for body in bodies:
            r = client.post("/api/v1/records", content=body, headers=headers)
            if r.status_code != 200:
                raise SystemExit(f"POST failed: {r.status_code} {r.text}")
        elapsed = time.perf_counter() - started
        stored = client.get("/api/v1/health").json()["records"]
    assert stored == BATCHES * BATCH + BATCH, stored
    return BATCHES * BATCH / elapsed


def bare_rate(db: Path, batches: list[list[dict]]) -> float:
    engine = create_engine(f"sqlite:///{db}")
    metadata.create_all(engine)  # the very same table and indexes
    engine.dispose()
    rows = [[(r["ts"], r["host"], r["domain"], r["kind"], r["pid"], r["tid"], r["comm"],
              orjson.dumps(r["labels"]).decode(), orjson.dumps(r["values"]).decode(), None) for r in b]
            for b in batches]
    con = sqlite3.connect(db, isolation_level=None)
    _sqlite_pragmas(con, None)  # the Store's own pragmas: WAL, synchronous=NORMAL, ...
    cols = ", ".join(f'"{c}"' for c in RECORD_COLUMNS)
    sql = f"INSERT INTO records ({cols}) VALUES ({', '.join('?' * len(RECORD_COLUMNS))})"
    started = time.perf_counter()
    for batch in rows:
        con.execute("BEGIN")
        con.executemany(sql, batch)
        con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    con.close()
    return BATCHES * BATCH / elapsed


def main() -> int:
    start = time.time_ns() - 3600 * 10**9
    batches = [records(BATCH, start_ns=start + i * BATCH * 1_000_000, seed=i) for i in range(BATCHES)]
    with tempfile.TemporaryDirectory(prefix="bpfscope-bench-") as tmp:
        http = http_rate(Path(tmp) / "collector.db", batches)
        bare = bare_rate(Path(tmp) / "bare.db", batches)
    ratio = http / bare
    ok = http >= TARGET_RATE and ratio >= TARGET_RATIO
    print(f"collector ingest: {BATCHES} batches x {BATCH} records")
    print(f"  HTTP collector   {http:10,.0f} records/s   (target >= {TARGET_RATE:,})")
    print(f"  bare sqlite3     {bare:10,.0f} records/s")
    print(f"  ratio HTTP/bare  {ratio:10.2f}           (target >= {TARGET_RATIO})")
    print(f"  {'OK' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Store against a REAL PostgreSQL server (started here), and the same checks on SQLite.

The server is initdb'ed into a temporary directory, runs as user postgres on 127.0.0.1
and a free port with its socket in that directory, and is stopped and removed afterwards
even when a test fails. Without the binaries the PostgreSQL cases skip, and under
BPFSCOPE_REQUIRE_BPF=1 (CI) that skip is a failure instead.
"""

from __future__ import annotations

import os
import time

import pytest

from bpfscope.schema import validate_records
from bpfscope.storage import Store, StoreError
from collector_records import M0, M1, SERIES, S, T0, dataset, rec, ts_of
from conftest import pg_server  # noqa: F401  (the fixture)

_db_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """A URL of an empty database: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    import psycopg

    host, port = request.getfixturevalue("pg_server")
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql+psycopg://postgres@{host}:{port}/{name}"


DATASET = dataset("serve ünïcode")


def expect(*indexes) -> list[int]:
    return [DATASET[i]["ts"] for i in indexes]


def test_round_trip_and_filters(store_url):
    store = Store(store_url)
    try:
        assert store.insert(validate_records(DATASET)) == 6
        assert store.count() == 6
        assert store.query(order="asc") == DATASET  # every field back, schema v1
        assert ts_of(store.query()) == expect(5, 4, 3, 2, 1, 0)
        assert ts_of(store.query(domain="net", order="asc")) == expect(0, 1, 2)
        assert ts_of(store.query(domain="net", kind="tcp_conn", order="asc")) == expect(0, 1)
        assert ts_of(store.query(host="node-b", order="asc")) == expect(2, 3)
        assert ts_of(store.query(pid=100, order="asc")) == expect(0, 1, 4)
        assert ts_of(store.query(comm="bash")) == expect(3)
        assert ts_of(store.query(labels={"dir": "out"}, order="asc")) == expect(1, 2)
        assert ts_of(store.query(labels={"dir": "out", "svc": "web"})) == expect(1)
        assert store.query(labels={"nope": "x"}) == []
        assert ts_of(store.query(since_ns=T0 + 2 * S, until_ns=T0 + 4 * S, order="asc")) == expect(2, 3, 4)
        assert ts_of(store.query(limit=2)) == expect(5, 4)
        assert ts_of(store.query(limit=2, order="asc")) == expect(0, 1)
        # plain dicts go in too (the exporters' shape), with omitted optional keys
        assert store.insert([{"v": 1, "ts": T0 + 9 * S, "host": "h", "domain": "lb", "kind": "lb_backend"}]) == 1
        assert store.query(domain="lb") == [rec("lb", "lb_backend", T0 + 9 * S, "h")]
    finally:
        store.close()


def test_a_failing_batch_stores_nothing(store_url):
    store = Store(store_url)
    try:
        store.insert(DATASET[:2])
        bad = [rec(ts=T0 + i) for i in range(5)] + [dict(rec(), host=None)]  # NOT NULL violated by the last row
        with pytest.raises(StoreError) as exc:
            store.insert(bad)
        assert str(exc.value).startswith("insert failed:") and "\n" not in str(exc.value)
        assert store.count() == 2
    finally:
        store.close()




def test_series(store_url):
    store = Store(store_url)
    try:
        store.insert(SERIES)
        for agg, (a, b) in {"avg": (20, 50), "max": (30, 60), "min": (10, 40), "sum": (60, 150),
                            "count": (3, 3)}.items():
            rows = store.series("lat_us", domain="net", agg=agg, bucket_s=60)
            assert rows == [{"time": M0, "group": None, "value": pytest.approx(a)},
                            {"time": M1, "group": None, "value": pytest.approx(b)}], agg
        rows = store.series("lat_us", domain="net", group_by="dir")
        assert rows == [{"time": M0, "group": "in", "value": pytest.approx(15)},
                        {"time": M0, "group": "out", "value": pytest.approx(30)},
                        {"time": M1, "group": "in", "value": pytest.approx(40)},
                        {"time": M1, "group": "out", "value": pytest.approx(55)}]
        rows = store.series("lat_us", domain="net", labels={"dir": "out"}, agg="sum", bucket_s=120,
                            since_ns=T0, until_ns=T0 + 61 * S)
        assert rows == [{"time": M0, "group": None, "value": pytest.approx(80)}]
        assert store.series("missing") == []
        with pytest.raises(ValueError, match="bad agg"):
            store.series("lat_us", agg="median")
    finally:
        store.close()


def test_retention_by_age_and_rows(store_url):
    now = time.time_ns()
    store = Store(store_url, retention_s=3600, max_rows=4)
    try:
        old = [rec(ts=now - 2 * 3600 * S + i, pid=0) for i in range(3)]
        new = [rec(ts=now - 60 * S + i * S, pid=i) for i in (5, 1, 4, 2, 3, 6)]  # not in time order
        store.insert(old + new)
        # 3 too old, then of the 6 left the 2 oldest go (max_rows=4)
        assert store.apply_retention() == 5
        assert sorted(r["pid"] for r in store.query()) == [3, 4, 5, 6]
        assert store.apply_retention() == 0
    finally:
        store.close()


def test_store_reports_the_dialect(store_url):
    store = Store(store_url)
    try:
        assert store.dialect == store_url.split(":")[0].split("+")[0]
        assert "postgres@" in store.url or store.url.startswith("sqlite")
    finally:
        store.close()

"""The collector over real HTTP: uvicorn in a thread on a free port, httpx as the client."""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import httpx
import orjson
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from bpfscope.collector import create_app
from bpfscope.collector.server import bind
from bpfscope.querycli import run_query
from bpfscope.schema import make_record
from bpfscope.storage import Store, StoreError
from collector_records import M0, M1, SERIES, S, T0, dataset, rec, ts_of
from conftest import free_port

RECORD_KEYS = set(make_record("net", "x"))


@contextlib.contextmanager
def serving(store: Store, **app_kw):
    """A real uvicorn serving create_app(store) on 127.0.0.1:<free port>; yields an httpx client."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(store, **app_kw), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "collector did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/collector.db")
    yield s
    s.close()


@pytest.fixture
def api(store):
    with serving(store) as client:
        yield client


def post(api, records, **kw) -> httpx.Response:
    # stdlib json: it writes integers beyond 64 bits, which some tests send on purpose
    return api.post("/api/v1/records", content=json.dumps(records).encode(),
                    headers={"content-type": "application/json"}, **kw)


def get(api, path="/api/v1/records", **params) -> list | dict:
    r = api.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


# -- round trip and filters -------------------------------------------------------------

DATASET = dataset()


def test_round_trip_keeps_every_field(api, store):
    r = post(api, DATASET)
    assert r.status_code == 200 and r.json() == {"stored": 6}
    assert store.count() == 6
    rows = get(api, order="asc")
    assert len(rows) == 6
    for sent, got in zip(DATASET, rows, strict=True):
        assert set(got) == RECORD_KEYS | {"time"}
        assert got.pop("time") == sent["ts"] // 1_000_000  # epoch ms for Grafana
        assert got == sent


@pytest.mark.parametrize("params, expected", [
    ({"domain": "net"}, [0, 1, 2]),
    ({"domain": "net", "kind": "tcp_conn"}, [0, 1]),
    ({"kind": "tcp_retrans"}, [2]),
    ({"host": "node-a"}, [0, 1, 4]),
    ({"pid": 100}, [0, 1, 4]),
    ({"pid": 100, "kind": "cpu_stack"}, [4]),
    ({"comm": "bash"}, [3]),
    ({"label": "dir:out"}, [1, 2]),
    ({"label": ["dir:out", "svc:web"]}, [1]),
    ({"label": "svc=web"}, [0, 1]),
    ({"label": "dir:sideways"}, []),
    ({"from": str((T0 + 2 * S) // 10**6)}, [2, 3, 4, 5]),
    ({"from": str((T0 + 1 * S) // 10**6), "to": str((T0 + 3 * S) // 10**6)}, [1, 2, 3]),
    ({"from": "2023-11-14T22:14:04Z"}, [4, 5]),
    ({"to": "2023-11-14T23:14:01+01:00"}, [0, 1]),
    ({"domain": "net", "host": "node-b", "comm": "curl", "pid": 200, "label": "dir:out"}, [2]),
])
def test_filters(api, params, expected):
    post(api, DATASET).raise_for_status()
    rows = get(api, order="asc", **params)
    assert ts_of(rows) == [DATASET[i]["ts"] for i in expected]


def test_relative_time_filters(api):
    now = time.time_ns()
    old, recent = rec(ts=now - 2 * 3600 * S, pid=1), rec(ts=now - 10 * S, pid=2)
    post(api, [old, recent]).raise_for_status()
    assert ts_of(get(api, **{"from": "-1h"})) == [recent["ts"]]
    assert ts_of(get(api, **{"from": "-3h", "to": "-1h"})) == [old["ts"]]
    assert ts_of(get(api, **{"from": "now-3h", "to": "now"})) == [recent["ts"], old["ts"]]


def test_limit_and_order(api):
    post(api, DATASET).raise_for_status()
    assert ts_of(get(api)) == [r["ts"] for r in reversed(DATASET)]  # newest first by default
    assert ts_of(get(api, limit=2)) == [DATASET[5]["ts"], DATASET[4]["ts"]]
    assert ts_of(get(api, limit=2, order="asc")) == [DATASET[0]["ts"], DATASET[1]["ts"]]
    assert get(api, limit=0) == []


@pytest.mark.parametrize("path, params, fragment", [
    ("/api/v1/records", {"pid": "abc"}, "bad parameter pid: Input should be a valid integer"),
    ("/api/v1/records", {"limit": "100001"}, "limit must be between 0 and 100000"),
    ("/api/v1/records", {"limit": "-1"}, "limit must be between 0 and 100000"),
    ("/api/v1/records", {"order": "sideways"}, "bad order 'sideways'"),
    ("/api/v1/records", {"from": "yesterday"}, "from: bad time 'yesterday'"),
    ("/api/v1/records", {"to": "-5x"}, "to: bad time '-5x'"),
    ("/api/v1/records", {"label": "nocolon"}, "bad label 'nocolon'"),
    ("/api/v1/records", {"label": 'a"b:c'}, "bad label"),
    ("/api/v1/series", {}, "bad parameter field: Field required"),
    ("/api/v1/series", {"field": "x", "agg": "median"}, "bad agg 'median'"),
    ("/api/v1/series", {"field": "x", "bucket": "0"}, "bucket must be at least"),
    ("/api/v1/series", {"field": "x", "bucket": "soon"}, "bucket: bad duration 'soon'"),
])
def test_bad_params_are_400_with_one_line(api, path, params, fragment):
    r = api.get(path, params=params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in error and "\n" not in error


# -- series -------------------------------------------------------------------------------



@pytest.mark.parametrize("agg, expected", [
    ("avg", [20, 50]), ("max", [30, 60]), ("min", [10, 40]), ("sum", [60, 150]), ("count", [3, 3]),
])
def test_series_aggregates(api, agg, expected):
    post(api, SERIES).raise_for_status()
    rows = get(api, "/api/v1/series", field="lat_us", domain="net", agg=agg, bucket=60)
    assert rows == [{"time": M0, "group": None, "value": pytest.approx(expected[0])},
                    {"time": M1, "group": None, "value": pytest.approx(expected[1])}]


def test_series_group_by_label_and_filters(api):
    post(api, SERIES).raise_for_status()
    rows = get(api, "/api/v1/series", field="lat_us", domain="net", group_by="dir")
    assert rows == [{"time": M0, "group": "in", "value": 15}, {"time": M0, "group": "out", "value": 30},
                    {"time": M1, "group": "in", "value": 40}, {"time": M1, "group": "out", "value": 55}]
    # one 2-minute bucket, a time range and a label filter
    rows = get(api, "/api/v1/series", field="lat_us", domain="net", bucket=120, agg="sum", label="dir:out",
               **{"from": str(M0), "to": str(M1 + 1500)})
    assert rows == [{"time": M0, "group": None, "value": 80}]
    assert get(api, "/api/v1/series", field="missing") == []


def test_series_bucket_takes_a_grafana_interval(api):
    post(api, SERIES).raise_for_status()
    assert get(api, "/api/v1/series", field="lat_us", domain="net", bucket="2m", agg="sum") == \
        get(api, "/api/v1/series", field="lat_us", domain="net", bucket=120, agg="sum")
    r = api.get("/api/v1/series", params={"field": "lat_us", "bucket": "soon"})
    assert r.status_code == 400 and "bucket" in r.json()["error"]


def test_empty_filters_mean_no_filter(api):
    """Grafana sends `host=&pid=` when a variable is All or empty: that must not filter."""
    post(api, SERIES).raise_for_status()
    everything = get(api, limit=1000)
    assert get(api, host="", pid="", comm="", domain="", kind="", label="", limit=1000) == everything
    assert api.get("/api/v1/records", params={"pid": "x"}).status_code == 400


# -- rejections: a bad batch is refused whole -------------------------------------------------


def good(n=3) -> list[dict]:
    return [rec(ts=T0 + i * S, pid=i) for i in range(n)]


def without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize("bad, status, message", [
    (good() + [without(rec(), "host")], 422, "records[3].host: Field required"),
    (good(1) + [rec(ts="1700000000")], 422, "records[1].ts: Input should be a valid integer"),
    (good(1) + [rec(ts=1.5)], 422, "records[1].ts: Input should be a valid integer"),
    ([dict(rec(), v=2)] + good(), 422, "records[0].v: Input should be 1"),
    (good(2) + [rec(domain="disk")], 422, "records[2].domain: Input should be"),
    (good(2) + [dict(rec(), extra=1)], 422, "records[2].extra: Extra inputs are not permitted"),
    (good(2) + [rec(labels={"dir": 1})], 422, "records[2].labels.dir: Input should be a valid string"),
    (good(2) + [rec(ts=2**64)], 422, "records[2].ts"),
    (good(2) + [rec(pid=2**63)], 422, "records[2].pid"),
    (good(2) + ["not an object"], 422, "records[2]: Input should be"),
    # one object is one line of NDJSON: a wrapper object is a record without fields
    ({"records": good()}, 422, "records[0].v: Field required (NDJSON line 1)"),
    (42, 400, "body must be a JSON array"),
])
def test_bad_records_are_rejected_whole(api, store, bad, status, message):
    r = post(api, bad)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert store.count() == 0


def test_malformed_json_names_the_position(api, store):
    body = orjson.dumps(good())[:-5]
    r = api.post("/api/v1/records", content=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith("malformed JSON:") and "line 1 column" in r.json()["error"]
    r = api.post("/api/v1/records", content=b"")
    assert r.status_code == 400
    assert store.count() == 0


def test_oversized_body_is_413(store):
    with serving(store, max_body_bytes=64 * 1024) as api:
        big = [rec(ts=T0 + i, values={"pad": "x" * 500}) for i in range(200)]  # ~120 KiB
        r = post(api, big)
        assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["error"]
        # the cap holds for the decompressed size too: a gzip bomb is refused
        bomb = gzip.compress(b"[" + b" " * (10 * 1024 * 1024) + b"]")
        assert len(bomb) < 64 * 1024
        r = api.post("/api/v1/records", content=bomb, headers={"content-encoding": "gzip"})
        assert r.status_code == 413
        # the connection still works and small batches still go in
        assert post(api, good()).json() == {"stored": 3}
    assert store.count() == 3


def test_bad_gzip_is_400(api, store):
    r = api.post("/api/v1/records", content=b"\x1f\x8b\x08\x00garbage", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and r.json()["error"].startswith("bad gzip body")
    truncated = gzip.compress(orjson.dumps(good()))[:-10]
    r = api.post("/api/v1/records", content=truncated, headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "bad gzip body" in r.json()["error"]
    r = api.post("/api/v1/records", content=orjson.dumps(good()), headers={"content-encoding": "br"})
    assert r.status_code == 415
    assert store.count() == 0


def ndjson(records) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records) + b"\n"


def test_ndjson_with_one_bad_line_stores_nothing(api, store):
    records = good(4)
    records[2] = rec(ts=-1)
    r = api.post("/api/v1/records", content=ndjson(records), headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 422
    assert r.json()["error"] == "records[2].ts: Input should be greater than or equal to 0 (NDJSON line 3)"
    body = ndjson(good(2)) + b'{"v": 1, "ts": \n' + ndjson(good(2))
    r = api.post("/api/v1/records", content=body, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 400 and r.json()["error"].startswith("malformed NDJSON at line 3:")
    assert store.count() == 0


def test_gzip_and_ndjson_are_accepted(api, store):
    r = api.post("/api/v1/records", content=gzip.compress(orjson.dumps(good(5))),
                 headers={"content-encoding": "gzip", "content-type": "application/json"})
    assert r.json() == {"stored": 5}
    r = api.post("/api/v1/records", content=ndjson(good(4)), headers={"content-type": "application/x-ndjson"})
    assert r.json() == {"stored": 4}
    # NDJSON without the content type is recognised by its first byte; blank lines are skipped
    r = api.post("/api/v1/records", content=b"\n" + ndjson(good(2)) + b"\n\n")
    assert r.json() == {"stored": 2}
    r = api.post("/api/v1/records", content=gzip.compress(ndjson(good(3))),
                 headers={"content-encoding": "gzip", "content-type": "application/x-ndjson"})
    assert r.json() == {"stored": 3}
    assert post(api, []).json() == {"stored": 0}
    assert store.count() == 14


# -- health, metrics, page ---------------------------------------------------------------------


def metrics(api) -> dict[str, float]:
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + ("{" + labels + "}" if labels else "")] = s.value
    return out


def test_health(api, store):
    post(api, good(2)).raise_for_status()
    h = get(api, "/api/v1/health")
    assert h["status"] == "ok" and h["records"] == 2 and h["db"] == "sqlite" and h["version"]


def test_metrics_counters_move(api):
    m = metrics(api)
    assert m["bpfscope_collector_records_ingested_total"] == 0
    assert m["bpfscope_collector_stored_records"] == 0
    post(api, good(3)).raise_for_status()
    post(api, good(2)).raise_for_status()
    post(api, good(2) + [rec(ts="x")])
    api.post("/api/v1/records", content=b"[")
    m = metrics(api)
    assert m["bpfscope_collector_records_ingested_total"] == 5
    assert m["bpfscope_collector_records_rejected_total"] == 3
    assert m['bpfscope_collector_batches_total{result="stored"}'] == 2
    assert m['bpfscope_collector_batches_total{result="rejected"}'] == 2
    assert m["bpfscope_collector_stored_records"] == 5
    assert m["bpfscope_collector_ingest_seconds_total"] > 0
    assert m["bpfscope_collector_retention_deleted_total"] == 0


def test_web_page_and_its_assets(api):
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>bpfscope</title>" in r.text and r.headers["cache-control"] == "no-cache"
    assert "://" not in r.text  # self-contained: no CDN, no external fetch
    assets = re.findall(r'(?:src|href)="(web/[^"]+)"', r.text)
    assert "web/app.js" in assets and "web/app.css" in assets
    seen, todo = set(), list(assets)
    while todo:  # the modules app.js imports, and theirs
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        a = api.get("/" + path)
        assert a.status_code == 200, path
        assert a.headers["cache-control"] == "no-cache"
        assert "://" not in a.text, path
        if path.endswith(".js"):
            assert a.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
            todo += ["web/" + m for m in re.findall(r'from "\./([\w.-]+\.js)"', a.text)]
    assert {"web/api.js", "web/pages.js", "web/page-records.js"} <= seen
    assert "api/v1/records" in api.get("/web/page-records.js").text
    assert api.get("/web/no-such-file.js").status_code == 404
    assert api.get("/web/../collector/app.py").status_code == 404


# -- overview, flame graph, timeline ------------------------------------------------------------


def syscall(ts, host="node-a", pid=4242, comm="getppid_loop", name="getppid", count=1000):
    return rec("system", "syscall", ts, host, pid=pid, comm=comm, labels={"syscall": name},
               values={"count": count, "rate_per_s": count / 5})


def test_overview_counts_rates_and_ingest_totals(api):
    now = time.time_ns()
    post(api, [syscall(now - i * 5 * S, name=n) for i, n in enumerate(["getppid", "read", "write"])]
         + [syscall(now - 60 * S, host="node-b")]
         + [syscall(now - 3600 * S)]  # outside the window
         + [rec("stack", "cpu_stack", now - 30 * S, values={"count": 3}, stack=["main"])]).raise_for_status()
    post(api, [rec(ts="bad")])
    o = get(api, "/api/v1/overview")
    assert o["window_s"] == pytest.approx(300, abs=1) and o["to"] - o["from"] == pytest.approx(300_000, abs=1000)
    rows = {(s["host"], s["domain"], s["kind"]): s for s in o["streams"]}
    assert list(rows) == [("node-a", "stack", "cpu_stack"), ("node-a", "system", "syscall"),
                          ("node-b", "system", "syscall")]
    a = rows[("node-a", "system", "syscall")]
    assert a["records"] == 3 and a["exporter"] == "sys" and a["last_seen"] == now // 10**6
    assert a["rate_per_s"] == pytest.approx(3 / 300, rel=0.01) and 0 <= a["age_s"] < 10
    assert rows[("node-b", "system", "syscall")]["age_s"] == pytest.approx(60, abs=10)
    assert o["totals"] == {"hosts": 2, "streams": 3, "records": 5, "rate_per_s": pytest.approx(5 / 300, rel=0.05)}
    c = o["collector"]
    assert c["records_ingested"] == 6 and c["batches_stored"] == 1 and c["batches_rejected"] == 1
    assert c["records_rejected"] == 1 and c["stored_records"] == 6 and c["db"] == "sqlite" and c["version"]
    assert 0 <= c["uptime_s"] < 600 and c["started"] <= time.time() * 1000
    wider = get(api, "/api/v1/overview", **{"from": "-2h", "host": "node-a"})
    assert [(s["kind"], s["records"]) for s in wider["streams"]] == [("cpu_stack", 1), ("syscall", 4)]


STACK_RECORDS = [
    rec("stack", "cpu_stack", T0 + 1 * S, pid=100, comm="nginx", values={"count": 5},
        stack=["_start", "main", "serve", "read"]),
    rec("stack", "cpu_stack", T0 + 2 * S, pid=100, comm="nginx", values={"count": 3},
        stack=["_start", "main", "serve"]),
    rec("stack", "cpu_stack", T0 + 3 * S, pid=100, comm="nginx", values={"count": 2}, stack=["_start", "main", "gc"]),
    rec("stack", "cpu_stack", T0 + 4 * S, pid=100, comm="nginx", values={"count": 1},
        stack=["_start", "main", "serve", "read"]),
    rec("stack", "cpu_stack", T0 + 5 * S, pid=200, comm="curl", values={"count": 7}, stack=["_start", "main"]),
    rec("stack", "alloc_stack", T0 + 6 * S, pid=100, comm="nginx", values={"count": 1, "bytes": 4096},
        stack=["_start", "main", "malloc"]),
    rec("stack", "cpu_stack", T0 + 7 * S, pid=100, values={"count": "n/a"}, stack=["x"]),  # not a number
    syscall(T0 + 8 * S),  # no stack at all
]


def test_flamegraph_nested_set_for_grafana(api):
    post(api, STACK_RECORDS).raise_for_status()
    assert get(api, "/api/v1/flamegraph", domain="stack", kind="cpu_stack") == [
        {"level": 0, "value": 18, "self": 0, "label": "total"},
        {"level": 1, "value": 18, "self": 0, "label": "_start"},
        {"level": 2, "value": 18, "self": 7, "label": "main"},
        {"level": 3, "value": 2, "self": 2, "label": "gc"},
        {"level": 3, "value": 9, "self": 3, "label": "serve"},
        {"level": 4, "value": 6, "self": 6, "label": "read"},
    ]
    rows = get(api, "/api/v1/flamegraph", pid=100, **{"from": str((T0 + 2 * S) // 10**6)})
    assert [(r["label"], r["value"]) for r in rows] == [
        ("total", 7), ("_start", 7), ("main", 7), ("gc", 2), ("malloc", 1), ("serve", 4), ("read", 1)]
    rows = get(api, "/api/v1/flamegraph", field="bytes")
    assert [(r["level"], r["label"], r["value"], r["self"]) for r in rows] == [
        (0, "total", 4096, 0), (1, "_start", 4096, 0), (2, "main", 4096, 0), (3, "malloc", 4096, 4096)]
    assert get(api, "/api/v1/flamegraph", comm="nobody") == [{"level": 0, "value": 0, "self": 0, "label": "total"}]


def test_flamegraph_tree_for_the_page(api):
    post(api, STACK_RECORDS).raise_for_status()
    tree = get(api, "/api/v1/flamegraph", kind="cpu_stack", comm="curl", format="tree")
    assert tree == {"name": "total", "value": 7, "self": 0, "children": [
        {"name": "_start", "value": 7, "self": 0, "children": [
            {"name": "main", "value": 7, "self": 7, "children": []}]}]}


def test_flamegraph_latest_takes_each_hosts_newest_snapshot_not_a_sum(api):
    """alloc_stack rows are snapshots of what is outstanding: three reads of one leak are one
    leak, and a second host's newest read adds its own."""
    def snap(ts, host, nbytes, frames=("main", "leak")):
        return rec("stack", "alloc_stack", ts, host, pid=7, comm="leak", labels={"space": "user"},
                   values={"outstanding_bytes": nbytes, "outstanding_count": nbytes // 4096}, stack=list(frames))
    post(api, [snap(T0 + i * S, "node-a", 4096 * (i + 1)) for i in range(3)]
         + [snap(T0 + 2 * S, "node-a", 100, ("main", "other")), snap(T0 + S, "node-b", 8192)]).raise_for_status()
    q = {"kind": "alloc_stack", "field": "outstanding_bytes", "format": "tree"}
    assert get(api, "/api/v1/flamegraph", **q)["value"] == 4096 * 6 + 100 + 8192  # summed: wrong for snapshots
    tree = get(api, "/api/v1/flamegraph", **q, latest="true")
    assert tree["value"] == 3 * 4096 + 100 + 8192
    assert [(c["name"], c["value"]) for c in tree["children"][0]["children"]] == [("leak", 3 * 4096 + 8192),
                                                                                    ("other", 100)]
    # within a time range: the newest read inside it
    tree = get(api, "/api/v1/flamegraph", **q, latest="true", host="node-a", to=str((T0 + S) // 10**6))
    assert tree["value"] == 2 * 4096


def test_flamegraph_deep_stacks_both_formats(api):
    frames = [f"frame_{i}" for i in range(300)]  # kernel + user stacks reach a few hundred frames
    post(api, [rec("stack", "cpu_stack", T0, values={"count": 2}, stack=frames)]).raise_for_status()
    rows = get(api, "/api/v1/flamegraph")
    assert len(rows) == 301 and rows[-1] == {"level": 300, "value": 2, "self": 2, "label": "frame_299"}
    node, depth = get(api, "/api/v1/flamegraph", format="tree"), 0
    while node["children"]:
        node, depth = node["children"][0], depth + 1
    assert depth == 300 and node["name"] == "frame_299"


THREAD_STATES = [
    rec("proc", "thread_state", T0, pid=100, tid=101, comm="nginx", labels={"state": "running"},
        values={"duration_ns": 40 * 10**6}),
    rec("proc", "thread_state", T0 + 40 * 10**6, pid=100, tid=101, comm="nginx", labels={"state": "sleeping"},
        values={"duration_ns": 60 * 10**6}),
    rec("proc", "thread_state", T0 + 20 * 10**6, pid=100, tid=102, comm="nginx", labels={"state": "blocked"},
        values={"duration_ns": 10 * 10**6}),
    rec("proc", "lifecycle", T0, pid=100, comm="nginx", labels={"event": "exec"}),  # another kind
]


def test_timeline_rows_for_state_timeline(api):
    post(api, THREAD_STATES).raise_for_status()
    t = T0 // 10**6
    assert get(api, "/api/v1/timeline") == [
        {"time": t, "nginx:101": "running", "nginx:102": None},
        {"time": t + 20, "nginx:101": "running", "nginx:102": "blocked"},
        {"time": t + 30, "nginx:101": "running", "nginx:102": None},
        {"time": t + 40, "nginx:101": "sleeping", "nginx:102": None},
        {"time": t + 100, "nginx:101": None, "nginx:102": None},
    ]
    assert get(api, "/api/v1/timeline", domain="proc", kind="thread_state", host="node-a") == \
        get(api, "/api/v1/timeline")  # the defaults
    rows = get(api, "/api/v1/timeline", series="pid", label="state:blocked")
    assert rows == [{"time": t + 20, "100": "blocked"}, {"time": t + 30, "100": None}]
    rows = get(api, "/api/v1/timeline", kind="lifecycle", state="event")
    assert rows == [{"time": t, "nginx:?": "exec"}]
    assert len(get(api, "/api/v1/timeline", limit=1)) == 2  # the newest record only: sleeping, then its end


@pytest.mark.parametrize("path, params, fragment", [
    ("/api/v1/overview", {"from": "soon"}, "from: bad time 'soon'"),
    ("/api/v1/overview", {"from": "-1h", "to": "-2h"}, "from must be before to"),
    ("/api/v1/flamegraph", {"format": "svg"}, "bad format 'svg'"),
    ("/api/v1/flamegraph", {"field": 'a"b'}, "bad field"),
    ("/api/v1/flamegraph", {"label": "x"}, "bad label 'x'"),
    ("/api/v1/flamegraph", {"pid": "me"}, "bad parameter pid"),
    ("/api/v1/timeline", {"series": "comm::tid"}, "bad series 'comm::tid'"),
    ("/api/v1/timeline", {"max_series": "0"}, "max_series must be between 1 and 1000"),
    ("/api/v1/timeline", {"limit": "100001"}, "limit must be between 0 and 100000"),
    ("/api/v1/timeline", {"state": ""}, "state must name"),
    ("/api/v1/timeline", {"to": "later"}, "to: bad time 'later'"),
])
def test_new_endpoints_bad_params_are_400(api, path, params, fragment):
    r = api.get(path, params=params)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"] and "\n" not in r.json()["error"]


# -- retention ---------------------------------------------------------------------------------


def test_retention_by_age(tmp_path):
    now = time.time_ns()
    store = Store(f"sqlite:///{tmp_path}/r.db", retention_s=3600)
    old = [rec(ts=now - 2 * 3600 * S + i, pid=1) for i in range(4)]
    new = [rec(ts=now - 60 * S + i, pid=2) for i in range(3)]
    store.insert(old + new)
    assert store.apply_retention() == 4
    assert sorted(r["ts"] for r in store.query()) == [r["ts"] for r in new]
    assert store.apply_retention() == 0
    store.close()


def test_retention_by_rows_keeps_the_newest(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.db", max_rows=5)
    # inserted out of time order: retention must go by ts, not by insertion order
    batch = [rec(ts=T0 + i * S, pid=i) for i in (7, 2, 5, 0, 6, 1, 4, 3)]
    store.insert(batch)
    assert store.apply_retention() == 3
    assert sorted(r["pid"] for r in store.query()) == [3, 4, 5, 6, 7]
    assert store.apply_retention() == 0
    store.close()


def test_retention_runs_in_the_background_and_is_counted(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.db", max_rows=2)
    with serving(store, retention_interval_s=0.05) as api:
        post(api, good(5)).raise_for_status()
        deadline = time.monotonic() + 10
        while store.count() > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.count() == 2
        assert metrics(api)["bpfscope_collector_retention_deleted_total"] == 3
    store.close()


# -- store errors, the process entry point, bpfscope query --------------------------------------


@pytest.mark.parametrize("url, fragment", [
    ("foo://", "bad --db URL 'foo://': Can't load plugin"),
    ("not a url", "bad --db URL 'not a url'"),
    ("postgresql+psycopg://u:secret@127.0.0.1:1/db", "cannot open database"),
    ("sqlite:////proc/no/such/dir/x.db", "cannot create the directory"),
])
def test_bad_store_url_is_one_line(url, fragment):
    with pytest.raises(StoreError) as exc:
        Store(url)
    message = str(exc.value)
    assert fragment in message and "\n" not in message and "secret" not in message


def collector_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bpfscope.collector", *args]


def test_module_entry_bad_arguments_exit_2_with_one_line(tmp_path):
    for args in (["--db", "foo://"], ["--db", f"sqlite:///{tmp_path}/x.db", "--listen", "nowhere"],
                 ["--db", f"sqlite:///{tmp_path}/x.db", "--retention", "7x"]):
        p = subprocess.run(collector_cmd(*args), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("bpfscope collector: ") and p.stderr.count("\n") == 1, p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_entry_serves_and_stops_cleanly(tmp_path, sig):
    port = free_port()
    db = tmp_path / "sub" / "dir" / "c.db"  # the directory is created
    proc = subprocess.Popen(collector_cmd("--db", f"sqlite:///{db}", "--listen", f"127.0.0.1:{port}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/records", content=orjson.dumps(good(2)))
        assert r.json() == {"stored": 2}
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert db.exists()


def test_query_cli_table_and_json(api, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich sizes the table to the (here absent) terminal
    post(api, DATASET).raise_for_status()
    url = str(api.base_url)
    since = datetime.fromtimestamp(T0 / 1e9 - 1, tz=timezone.utc).isoformat()
    assert run_query(url, "net", None, since, None, None, ["dir=out"], 10, True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line) for line in lines] == [DATASET[2], DATASET[1]]
    assert run_query(url, None, None, since, 100, "nginx", [], 10, False) == 0
    out = capsys.readouterr().out
    assert "cpu_stack" in out and "tcp_conn" in out and "bytes_acked=1500" in out and "curl" not in out
    assert run_query(url, None, None, "-3x", None, None, [], 10, False) == 2
    assert capsys.readouterr().err.startswith("bpfscope: --since: bad time '-3x'")


def test_query_cli_unreachable_collector_is_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert run_query(url, None, None, "-15m", None, None, [], 10, False) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"bpfscope: cannot reach collector at {url}: ") and err.count("\n") == 1


"""The generated Grafana dashboards: committed JSON up to date, fixed uids, the shared
variables, and every Infinity query (variables and panels) executed against a real
collector that holds real records, with Grafana's macros expanded the way Grafana would.

Records come from the real `bpfscope sys` exporter when BPF can load here; without root
the test posts schema-v1 records built by bpfscope.schema.make_record instead (under
BPFSCOPE_REQUIRE_BPF=1 that fallback is a failure). Grafana itself and the Infinity plugin
are not run: the test plays their part (macro expansion, one GET per query, columns read
by gjson-style dotted paths).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import BPFSCOPE, REPO, REQUIRE_BPF, _bpf_unavailable, free_port, skip_or_fail
from proc_workloads.build import build as build_workloads

from bpfscope.bpf import wait_for_links
from bpfscope.dashboards import DASHBOARDS, generate
from bpfscope.dashboards.common import INFINITY_UID, TAG, infinity_queries, panels

DASHBOARD_DIR = REPO / "grafana/dashboards"
MODELS = {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}
MACRO = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
RANGE_S = 15 * 60


def run_dashboards(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bpfscope.dashboards", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, check=False)


# ---- the generated files ----------------------------------------------------------------

def test_committed_dashboards_match_the_generator():
    r = run_dashboards("--check")
    assert r.returncode == 0, r.stderr
    assert set(MODELS) == set(generate()), "one committed JSON file per registered dashboard, no strays"


def test_check_fails_on_a_hand_edited_dashboard(tmp_path):
    assert run_dashboards("--out", str(tmp_path)).returncode == 0
    path = tmp_path / "bpfscope-system.json"
    path.write_text(path.read_text().replace("System calls", "Syscalls", 1))
    r = run_dashboards("--out", str(tmp_path), "--check")
    assert r.returncode == 1 and "bpfscope-system.json: differs" in r.stderr
    path.unlink()
    r = run_dashboards("--out", str(tmp_path), "--check")
    assert r.returncode == 1 and "missing" in r.stderr


def test_every_dashboard_has_a_fixed_unique_uid_and_the_shared_variables():
    uids = [m["uid"] for m in MODELS.values()]
    assert len(uids) == len(set(uids))
    assert sorted(uids) == sorted(module.UID for module in DASHBOARDS)
    for name, model in MODELS.items():
        assert name == f"{model['uid']}.json"
        assert TAG in model["tags"]
        variables = [v["name"] for v in model["templating"]["list"]]
        assert variables[:3] == ["host", "comm", "pid"], name
        ids = [p["id"] for p in panels(model)]
        assert len(ids) == len(set(ids)) and 0 not in ids, f"{name}: panel ids"
        for panel in panels(model):
            ref_ids = [t["refId"] for t in panel.get("targets", [])]
            assert len(ref_ids) == len(set(ref_ids)) and "" not in ref_ids, f"{name}: {panel['title']}"


# ---- a real collector with real records ------------------------------------------------

def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def _records_from_the_sys_exporter(url: str) -> None:
    """Real records: the sys, net, proc, stack cpu and fuse trace exporters for 4 s, with a few short TCP
    connections and a busy FUSE mount."""
    from fuse_helpers import busy_mount

    from bpfscope.hostenv import ensure_mounts

    ensure_mounts()
    with busy_mount():
        _run_exporters(url)


def _run_exporters(url: str) -> None:
    import socket

    # built before the exporters start: their 4 s must hold the traffic below
    bins = build_workloads(Path(tempfile.mkdtemp(prefix="bpfscope-dash-")))
    assert bins, "no C compiler for the proc workloads"
    procs = [subprocess.Popen(BPFSCOPE + [*domain, "--collector", url, "--interval", "1", "--duration", "4",
                                          "--quiet"], stderr=subprocess.PIPE, text=True)
             for domain in (["sys"], ["net"], ["proc"], ["stack", "cpu", "--freq", "199"], ["fuse", "trace"])]
    # a portrait (bpfscope proc -- COMMAND): summaries and thread state spans
    portrait = subprocess.Popen(BPFSCOPE + ["proc", "--collector", url, "--interval", "0.5", "--quiet", "--",
                                            "sh", "-c", "sleep 0.3; exit 5"], stderr=subprocess.PIPE, text=True)
    procs.append(portrait)
    # a portrait with locks (--pthread): futex waits and pthread holds of two threads on one
    # mutex, kernel lock (mmap_lock) waits of 8 threads mapping memory
    procs.append(subprocess.Popen(BPFSCOPE + ["proc", "--pthread", "--collector", url, "--interval", "0.5", "--quiet",
                                              "--", "sh", "-c", 'echo go | "$0" >/dev/null & echo go | "$1" 1.5; wait',
                                              str(bins["mutex"]), str(bins["mmap_storm"])],
                                  stderr=subprocess.PIPE, text=True))
    # the connections below need the net exporter attached (its start-up is slow on a busy machine)
    assert wait_for_links(procs[1], at_least=3), procs[1].stderr.read() if procs[1].poll() is not None else "net"
    time.sleep(0.5)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    for _ in range(5):
        c = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
        c.sendall(b"x" * 100_000)
        a.recv(1 << 20)
        c.close()
        a.close()
    srv.close()
    for p in procs:
        p.wait(60)
        # the portrait exits with its command's code (5), the exporters with 0
        assert p.returncode == (5 if p is portrait else 0), p.stderr.read()


def _records_posted(url: str) -> None:
    from bpfscope.schema import make_record

    now = time.time_ns()
    records = [make_record("system", "syscall", ts=now - i * 1_000_000_000, pid=4000 + i % 3, comm=f"worker-{i % 3}",
                           labels={"syscall": ("read", "write", "futex")[i % 3]},
                           values={"count": 10 * i + 1, "rate_per_s": float(10 * i + 1)})
               for i in range(60)]
    records += [make_record("fuse", "fuse_op", ts=now - i * 1_000_000_000,
                            labels={"mount": "/mnt/fuse", "connection": "42", "opcode": ("LOOKUP", "READ")[i % 2]},
                            values={"count": 100 + i, "errors": i % 3, "request_bytes": 4000, "reply_bytes": 9000,
                                    "rate_per_s": 100.0 + i, "avg_us": 25.0, "p50_us": 16.384, "p99_us": 65.536})
                for i in range(20)]
    records += [make_record("proc", kind, ts=now, pid=4100, tid=4101, comm="locker",
                            labels={"addr": "0x7f0000001000", **extra},
                            values={"count": 100, f"{what}_ns": 10**9, f"max_{what}_ns": 2 * 10**7,
                                    f"avg_{what}_ns": 10**7})
                for kind, what, extra in (("futex_wait_summary", "wait", {}),
                                          ("lock_wait_summary", "wait", {"lock_type": "rwsem-write", "symbol": ""}),
                                          ("pthread_hold_summary", "hold", {"lock_type": "mutex"}))]
    assert httpx.post(url + "/api/v1/records", json=records, timeout=30).status_code == 200


@pytest.fixture(scope="module")
def collector_url(tmp_path_factory):
    port = free_port()
    db = tmp_path_factory.mktemp("collector") / "records.db"
    proc = subprocess.Popen(BPFSCOPE[:1] + ["-m", "bpfscope.collector", "--db", f"sqlite:///{db}",
                                            "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/api/v1/health", proc)
        reason = _bpf_unavailable()
        if reason is None:
            _records_from_the_sys_exporter(url)
        elif REQUIRE_BPF:
            skip_or_fail(reason)  # fails: CI must use the real exporter
        else:
            _records_posted(url)
        assert httpx.get(url + "/api/v1/health", timeout=10).json()["records"] > 0
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- Grafana's part: macros, variables, one GET per query --------------------------------

def expand(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"unknown Grafana variable or macro ${name} in {text!r}")
        return values[name]
    return MACRO.sub(one, text)


def run_infinity(base: str, query: dict, values: dict[str, str]) -> list[dict]:
    assert query["datasource"]["uid"] == INFINITY_UID
    assert query["type"] == "json" and query["source"] == "url" and query["url_options"]["method"] == "GET"
    assert query["url"].startswith("/"), "a path: Infinity prefixes the datasource URL"
    params = [(p["key"], expand(p["value"], values)) for p in query["url_options"]["params"]]
    r = httpx.get(base + expand(query["url"], values), params=params, timeout=30)
    assert r.status_code == 200, f"{r.url}: {r.status_code} {r.text}"
    rows = r.json()
    assert isinstance(rows, list), f"{r.url}: Infinity reads a flat array of rows"
    return rows


def dig(row: dict, selector: str):
    """gjson-style dotted path, what Infinity's backend parser does with a column selector."""
    value = row
    for key in selector.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(selector)
        value = value[key]
    return value


TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "timestamp_epoch": lambda v: isinstance(v, int) and 1_000_000_000_000 < v < 10_000_000_000_000,  # ms
}


def assert_columns(where: str, query: dict, rows: list[dict]) -> None:
    assert rows, f"{where}: no rows although the collector holds records"
    for column in query["columns"]:
        selector, kind = column["selector"], column["type"]
        values = []
        for row in rows:
            try:
                values.append(dig(row, selector))
            except KeyError:
                raise AssertionError(f"{where}: a row has no {selector!r} (column {column['text']!r}): {row}") from None
        present = [v for v in values if v is not None]
        assert present, f"{where}: column {column['text']!r} is null in every row"
        bad = [v for v in present if not TYPE_CHECKS[kind](v)]
        assert not bad, f"{where}: column {column['text']!r} should be {kind}, got {bad[:3]}"


def first_value(variable: dict, rows: list[dict]) -> str:
    """The value Grafana selects: the first of the de-duplicated options in the variable's sort."""
    (column,) = variable["query"]["infinityQuery"]["columns"]
    options = {str(v) for v in (row.get(column["selector"]) for row in rows) if v not in (None, "")}
    assert options, f"variable {variable['name']}: no values"
    if variable.get("sort") == 3:  # numerical ascending
        return min(options, key=float)
    return min(options, key=str.lower)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_infinity_query_returns_the_columns_it_declares(collector_url, name):
    model = MODELS[name]
    now_ms = int(time.time() * 1000)
    values = {"__from": str(now_ms - RANGE_S * 1000), "__to": str(now_ms)}
    # Variables in dashboard order, each query seeing the values chosen before it (as Grafana chains them).
    for variable in model["templating"]["list"]:
        if variable["type"] == "custom":
            values[variable["name"]] = variable["current"]["value"]
        elif variable["datasource"]["uid"] == INFINITY_UID:
            query = variable["query"]["infinityQuery"]
            rows = run_infinity(collector_url, query, values)
            assert_columns(f"variable {variable['name']}", query, rows)
            values[variable["name"]] = first_value(variable, rows)
    queries = [(w, q) for w, q in infinity_queries(model) if w.startswith("panel")]
    assert queries, f"{name}: has Infinity panels"
    for where, query in queries:
        rows = run_infinity(collector_url, query, values)
        assert_columns(f"{name} {where}", query, rows)
        if query["format"] == "timeseries":
            times = [dig(r, query["columns"][0]["selector"]) for r in rows]
            assert times == sorted(times), f"{where}: time ascending (Infinity's long-to-wide needs it)"

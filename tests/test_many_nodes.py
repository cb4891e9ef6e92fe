"""Many nodes: two `bpfscope up` with different --host write to one real PostgreSQL,
and one query returns records of both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from conftest import BPFSCOPE, free_port, pg_server, run_cli  # noqa: F401  (pg_server: fixture)

pytestmark = [pytest.mark.bpf, pytest.mark.postgres]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(pred, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (v := pred()):
            return v
        time.sleep(0.3)
    return None


def test_two_hosts_write_to_one_postgres_and_one_query_returns_both(pg_server):
    import psycopg

    host, port = pg_server
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE many_nodes")
    db = f"postgresql+psycopg://postgres@{host}:{port}/many_nodes"
    procs, urls = [], []
    try:
        for node in ("node-a", "node-b"):
            listen = f"127.0.0.1:{free_port()}"
            procs.append(subprocess.Popen(BPFSCOPE + ["up", "--domains", "sys", "--host", node, "--db", db,
                                                      "--listen", listen,
                                                      "--interval", "1", "--metrics-port", "0"],
                                          stdout=subprocess.DEVNULL, start_new_session=True))
            urls.append(f"http://{listen}")
            assert _wait(lambda: _healthy(urls[-1]), 30), f"collector of {node} did not start"

        def hosts_seen():
            q = run_cli("query", "--url", urls[0], "--domain", "system", "--since", "-5m", "--limit", "5000", "--json")
            seen = {json.loads(line)["host"] for line in q.stdout.splitlines()}
            return seen if {"node-a", "node-b"} <= seen else None

        assert _wait(hosts_seen, 30) == {"node-a", "node-b"}
        # filtering by host through the other collector gives only that host
        rows = httpx.get(f"{urls[1]}/api/v1/records", params={"host": "node-a", "limit": 100}).json()
        assert rows and {r["host"] for r in rows} == {"node-a"}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

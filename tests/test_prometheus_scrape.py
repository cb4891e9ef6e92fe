"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes a real `bpfscope up`, and every
PromQL expression of every generated dashboard returns at least one series.

The Prometheus config is prometheus/prometheus.yml (the compose one: same job names) with
the targets moved to this test's free ports and a 1 s scrape interval. Grafana's macros
are expanded as Grafana would: ${host} to this machine's node name (the host every record
carries), $__rate_interval to a window holding several 1 s scrapes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import BPFSCOPE, REPO, free_port
from fuse_helpers import busy_mount

from bpfscope.dashboards import generate
from bpfscope.dashboards.common import promql_expressions

PROMETHEUS = "/usr/bin/prometheus"
MACROS = {"host": os.uname().nodename, "__rate_interval": "10s", "stage": "l2_to_tcp"}
MACRO = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

pytestmark = [
    pytest.mark.bpf,
    pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="Debian's prometheus is not installed (make test does)"),
]


def _expand(expr: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in MACROS, f"unknown Grafana variable or macro ${name} in {expr!r}"
        return MACROS[name]
    return MACRO.sub(one, expr)


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    # A session of its own: teardown signals the whole group (up's collector and exporters too).
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


DOMAINS = ("sys", "net", "proc", "stack", "fuse")  # the exporters whose metrics the dashboards use


def _churn(seconds: float) -> None:
    """Short TCP connections on loopback, so that the net counters of closes move."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    end = time.monotonic() + seconds
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a connect gets a reset (a NO_SOCKET drop)
    while time.monotonic() < end:
        c = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
        c.sendall(b"x" * 10_000)
        a.recv(1 << 16)
        c.close()
        a.close()
        try:
            socket.create_connection(closed.getsockname(), timeout=1).close()
        except ConnectionRefusedError:
            pass
        time.sleep(0.05)
    srv.close()
    closed.close()


def _scrape_config(collector_port: int, exporter_port: int, latency_port: int) -> dict:
    config = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = {"bpfscope-collector": [f"127.0.0.1:{collector_port}"],
               "bpfscope-exporters": [f"127.0.0.1:{exporter_port + i}" for i in range(len(DOMAINS))]
               + [f"127.0.0.1:{latency_port}"]}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets.pop(job["job_name"])}]
    assert not targets, f"jobs missing from prometheus/prometheus.yml: {sorted(targets)}"
    return config


def _metrics_port() -> int:
    while (port := free_port()) > 65000:  # `up --metrics-port` accepts at most 65000
        pass
    return port


@pytest.fixture
def prometheus_url(tmp_path):
    # A busy FUSE mount the whole time: `fuse trace` under `up` counts its requests.
    with busy_mount():
        yield from _up_and_prometheus(tmp_path)


def _up_and_prometheus(tmp_path):
    collector_port, exporter_port, prom_port, latency_port = free_port(), _metrics_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(_start(BPFSCOPE + ["up", "--domains", ",".join(DOMAINS),
                                        "--db", f"sqlite:///{tmp_path / 'records.db'}",
                                        "--listen", f"127.0.0.1:{collector_port}", "--interval", "1",
                                        "--metrics-port", str(exporter_port)], tmp_path / "up.log"))
        # the Network dashboard's layer latency panels: an exporter with --latency (up runs net without)
        procs.append(_start(BPFSCOPE + ["net", "--latency", "--sample", "1", "--quiet", "--interval", "1",
                                        "--metrics-port", str(latency_port)], tmp_path / "net-latency.log"))
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(_scrape_config(collector_port, exporter_port, latency_port)))
        procs.append(_start([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log"))
        url = f"http://127.0.0.1:{prom_port}"
        _wait_targets_up(url, procs, tmp_path)
        yield url
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _wait_targets_up(url: str, procs: list[subprocess.Popen], tmp_path: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    health: dict = {}
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
                raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode}\n{logs}")
        try:
            active = httpx.get(url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health = {t["scrapeUrl"]: t["health"] for t in active}
            if len(health) == 2 + len(DOMAINS) and set(health.values()) == {"up"}:
                return
        except (httpx.TransportError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"targets not up within {timeout_s} s: {health}")


def _query(url: str, expr: str) -> list:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_dashboard_promql_expression_returns_series(prometheus_url):
    exprs = sorted({_expand(e) for model in generate().values() for e in promql_expressions(model)})
    assert len(exprs) >= 10
    # Counters need two samples inside the rate window, the syscall counters a first interval:
    # give each expression up to 30 s, then report every one still empty.
    deadline = time.monotonic() + 30
    empty = list(exprs)
    while empty and time.monotonic() < deadline:
        empty = [e for e in empty if not _query(prometheus_url, e)]
        if empty:
            _churn(1.0)  # closes for the net counters, instead of sleeping
    assert not empty, "PromQL of the dashboards that returned no series:\n" + "\n".join(empty)

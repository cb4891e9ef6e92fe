"""Cost of a Prometheus scrape of bpfscope: every exporter's and the collector's /metrics.

Starts `bpfscope up` (default 5 s interval, this machine's usual load) on free ports, lets
two intervals pass so the exporters have seen the host's syscalls, then scrapes all
/metrics endpoints 50 times over one keep-alive client, as Prometheus does. Prints p50/p95
per endpoint and of a whole round (the endpoints one after another: an upper bound of
Prometheus' parallel scrapes), the series count, and the ratio to scraping a
bare prometheus_client registry with one counter (another process, same client).
Targets (issue 3): a round under 200 ms, under 2,000 series in total.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 50
WARMUP_S = 11.0  # two 5 s intervals
TARGET_ROUND_MS = 200.0
TARGET_SERIES = 2000
BASELINE = """
import sys, time
from prometheus_client import CollectorRegistry, Counter, start_http_server
registry = CollectorRegistry()
Counter("baseline_events", "One counter", registry=registry).inc()
start_http_server(int(sys.argv[1]), addr="127.0.0.1", registry=registry)
time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(client: httpx.Client, url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s} s")


def series_count(text: str) -> int:
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def scrape_rounds(client: httpx.Client, urls: list[str]) -> tuple[list[float], dict[str, list[float]], int]:
    """ms per round, ms per endpoint, series of the last round."""
    rounds, per_url, bodies = [], {u: [] for u in urls}, []
    for _ in range(ROUNDS):
        bodies = []
        for url in urls:
            t0 = time.perf_counter()
            r = client.get(url)
            per_url[url].append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            bodies.append(r.text)  # parsed after the clock stops: Prometheus' own parsing is not ours
        rounds.append(sum(times[-1] for times in per_url.values()))
    return rounds, per_url, sum(series_count(body) for body in bodies)


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("bench/metrics_scrape.py needs root (bpfscope up loads BPF)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    collector_port, metrics_port, baseline_port = free_port(), free_port(), free_port()
    while metrics_port > 65000:
        metrics_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=10) as client:
        up = subprocess.Popen([sys.executable, "-m", "bpfscope", "up", "--db", f"sqlite:///{tmp}/bench.db",
                               "--listen", f"127.0.0.1:{collector_port}", "--metrics-port", str(metrics_port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        baseline = subprocess.Popen([sys.executable, "-c", BASELINE, str(baseline_port)], env=env,
                                    start_new_session=True)
        try:
            from bpfscope.supervisor import EXPORTER_DOMAINS

            names = ["collector", *EXPORTER_DOMAINS]  # `up` runs every exporter: port + i each
            urls = [f"http://127.0.0.1:{collector_port}/metrics",
                    *(f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(len(EXPORTER_DOMAINS)))]
            for url in urls:
                wait_ok(client, url, up)
            base_url = f"http://127.0.0.1:{baseline_port}/metrics"
            wait_ok(client, base_url, baseline)
            time.sleep(WARMUP_S)
            rounds, per_url, series = scrape_rounds(client, urls)
            base_rounds, _, base_series = scrape_rounds(client, [base_url])
        finally:
            stop(up)
            stop(baseline)

    print(f"bpfscope /metrics scrape: {len(urls)} endpoints ({', '.join(names)}), {ROUNDS} rounds, "
          f"`bpfscope up` at its default 5 s interval")
    print(f"{'endpoint':<42} {'p50 ms':>8} {'p95 ms':>8}")
    for name, times in zip((f"{n} /metrics" for n in names), per_url.values()):
        print(f"{name:<42} {p(times, 50):>8.2f} {p(times, 95):>8.2f}")
    print(f"{'all endpoints (one scrape round)':<42} {p(rounds, 50):>8.2f} {p(rounds, 95):>8.2f}")
    print(f"{'baseline: bare registry, one counter':<42} {p(base_rounds, 50):>8.2f} {p(base_rounds, 95):>8.2f}")
    print(f"series: {series} in total (baseline {base_series})")
    print(f"ratio round/baseline: p50 {p(rounds, 50) / p(base_rounds, 50):.1f}x, "
          f"p95 {p(rounds, 95) / p(base_rounds, 95):.1f}x")
    ok_time, ok_series = p(rounds, 95) < TARGET_ROUND_MS, series < TARGET_SERIES
    print(f"target round p95 < {TARGET_ROUND_MS:.0f} ms: {'PASS' if ok_time else 'FAIL'}; "
          f"series < {TARGET_SERIES}: {'PASS' if ok_series else 'FAIL'}")
    return 0 if ok_time and ok_series else 1


if __name__ == "__main__":
    sys.exit(main())

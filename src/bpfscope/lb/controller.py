"""`bpfscope lb run`: keep the kernel's services in line with a file and with backend health.

Every `--interval` seconds: reload the file when it changed (a bad edit is reported and
the running configuration kept), probe the backends whose check is due (a TCP connect or
an HTTP GET, from this process, which is outside the balanced cgroup; each service's
`health.interval`, default `--interval`), read the kernel's passive counts (connects of
clients that failed), and apply the file with unhealthy backends left out of the choice.
A backend is unhealthy after `fall` failed probes in a row, or `passive_failures` failed
client connects in a row, and healthy again after `rise` good probes. A backend removed
from the file takes no new connection at once; with `--drain-timeout` its remaining
connections are closed that many seconds later. The kernel state is pinned, so stopping
or killing the controller changes nothing for running applications.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from .config import ConfigError, Service, ServicesFile, load
from .kernel import Endpoint, LbKernel


@dataclass
class Health:
    healthy: bool = True
    fails: int = 0
    oks: int = 0
    changes: int = 0
    due: float = 0.0  # monotonic time of the next probe


@dataclass(frozen=True)
class Check:
    """How one service checks its backends; backends with the same check share a state."""
    kind: str = "tcp"
    path: str = "/"
    interval_s: float = 2.0
    timeout_s: float = 1.0
    fall: int = 1
    rise: int = 1
    passive: int = 0  # failed client connects in a row that take a backend out (0: off)


def tcp_probe(ep: Endpoint, timeout_s: float) -> bool:
    family = socket.AF_INET6 if ":" in ep.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect((ep.address, ep.port))
            return True
        except OSError:
            return False


def http_probe(ep: Endpoint, path: str, timeout_s: float) -> bool:
    """GET path: healthy when it answers 2xx or 3xx within the timeout."""
    conn = http.client.HTTPConnection(ep.address, ep.port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": "bpfscope-lb-health"})
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def probe(ep: Endpoint, check: Check) -> bool:
    return http_probe(ep, check.path, check.timeout_s) if check.kind == "http" else tcp_probe(ep, check.timeout_s)


class Controller:
    def __init__(self, kernel: LbKernel, path: str, interval_s: float = 2.0, timeout_s: float = 1.0,
                 fall: int = 1, rise: int = 1, log=print, drain_timeout_s: float | None = None):
        self.kernel = kernel
        self.path = Path(path)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.fall, self.rise = fall, rise
        self.log = log
        self.config: ServicesFile = load(path)
        self.mtime = self.path.stat().st_mtime_ns
        self.health: dict[tuple[Endpoint, Check], Health] = {}
        self.stop = threading.Event()
        self.reload_errors = 0
        self.drain_timeout_s = drain_timeout_s
        if drain_timeout_s is not None:
            kernel.origins = True  # draining finds a backend's connections by their record
        self.removed: dict[Endpoint, float] = {}  # backend removed from the file -> when
        self._pool = ThreadPoolExecutor(max_workers=16)

    def check(self, svc: Service) -> Check:
        h = svc.health
        if h is None:
            return Check("tcp", "/", self.interval_s, self.timeout_s, self.fall, self.rise, 0)
        return Check(h.type, h.path, h.interval or self.interval_s, h.timeout or self.timeout_s,
                     h.fall or self.fall, h.rise or self.rise, h.passive_failures)

    def checks(self) -> set[tuple[Endpoint, Check]]:
        return {(Endpoint(b.address, b.port, "tcp"), self.check(s)) for s in self.config.services
                if s.protocol == "tcp" for b in s.backends}

    def all_backends(self) -> set[Endpoint]:
        return {Endpoint(b.address, b.port, s.protocol) for s in self.config.services for b in s.backends}

    def reload_if_changed(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            self.log(f"bpfscope lb: cannot read {self.path}: {exc.strerror}; keeping the running configuration")
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        try:
            before = self.all_backends()
            self.config = load(self.path)
            self.log(f"bpfscope lb: reloaded {self.path}")
            now, after = time.monotonic(), self.all_backends()
            for ep in before - after:
                self.removed.setdefault(ep, now)
            for ep in after:
                self.removed.pop(ep, None)  # back in the file before its drain: nothing to close
        except ConfigError as exc:
            self.reload_errors += 1
            self.log(f"bpfscope lb: {exc}; keeping the running configuration")

    def probe_all(self) -> None:
        now = time.monotonic()
        wanted = self.checks()
        for key in [k for k in self.health if k not in wanted]:
            del self.health[key]
        due = sorted((k for k in wanted if self.health.setdefault(k, Health()).due <= now),
                     key=lambda k: (k[0].address, k[0].port))
        results = dict(zip(due, self._pool.map(lambda k: probe(*k), due)))
        for (ep, check), ok in results.items():
            h = self.health[(ep, check)]
            h.due = now + check.interval_s
            h.oks, h.fails = (h.oks + 1, 0) if ok else (0, h.fails + 1)
            if h.healthy and h.fails >= check.fall:
                self._mark(ep, h, False, f"failed {h.fails} {check.kind} check(s)")
            elif not h.healthy and h.oks >= check.rise:
                self._mark(ep, h, True, f"passed {h.oks} {check.kind} check(s)")
                if check.passive:
                    self.kernel.forget_failures(ep)

    def passive_all(self) -> None:
        """Backends whose clients' connects failed `passive` times in a row go out."""
        if not any(c.passive for _, c in self.health):
            return
        counts = self.kernel.passive()
        for (ep, check), h in self.health.items():
            in_a_row = counts.get(ep, (0, 0, 0))[0]
            if check.passive and h.healthy and in_a_row >= check.passive:
                h.oks = 0  # back only after `rise` good probes from now
                self._mark(ep, h, False, f"{in_a_row} client connects failed in a row")

    def _mark(self, ep: Endpoint, h: Health, healthy: bool, why: str) -> None:
        h.healthy, h.changes = healthy, h.changes + 1
        self.log(f"bpfscope lb: backend {ep.address}:{ep.port} is {'back' if healthy else 'down'}: {why}")

    def desired(self):
        """The file's services with unhealthy TCP backends left out of the choice."""
        out = []
        for s in self.config.services:
            check = self.check(s)
            keep = [b for b in s.backends if s.protocol != "tcp"
                    or self.health.get((Endpoint(b.address, b.port, "tcp"), check), Health()).healthy]
            out.append(s.model_copy(update={"backends": keep}))
        return out

    def drain_due(self) -> None:
        """Close the remaining connections of backends removed `drain_timeout_s` ago."""
        if self.drain_timeout_s is None:
            self.removed.clear()
            return
        now = time.monotonic()
        due = [ep for ep, t in self.removed.items() if now - t >= self.drain_timeout_s]
        if not due:
            return
        for ep in due:
            del self.removed[ep]
        closed = self.kernel.drain([ep for ep in due if ep.protocol == "tcp"])
        names = ", ".join(f"{ep.address}:{ep.port}" for ep in due)
        self.log(f"bpfscope lb: drained {names}: closed {closed} remaining connection(s)")

    def step(self) -> None:
        self.reload_if_changed()
        self.probe_all()
        self.passive_all()
        self.kernel.apply(self.desired())
        self.drain_due()

    def run(self) -> int:
        while True:
            self.step()
            if self.stop.wait(self.interval_s):
                return 0

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class _LbMetrics:
    def __init__(self, ctl: Controller):
        self.ctl = ctl

    def collect(self):
        k = self.ctl.kernel
        chosen = CounterMetricFamily("bpfscope_lb_backend_choices", "Connects sent to each backend",
                                     labels=["service", "backend"])
        healthy = GaugeMetricFamily("bpfscope_lb_backend_healthy", "1 when the backend passes its checks",
                                    labels=["backend"])
        open_conns = GaugeMetricFamily("bpfscope_lb_backend_open_connections",
                                       "Open connections per backend (least-conn services)",
                                       labels=["service", "backend"])
        counts = k.choices()
        for s in k.status():
            for b in s["backends"]:
                ep = f"{b['address']}:{b['port']}"
                chosen.add_metric([s["name"], ep], counts.get(Endpoint(b["address"], b["port"], s["protocol"]), 0))
                if "active" in b:
                    open_conns.add_metric([s["name"], ep], b["active"])
        for (ep, _), h in self.ctl.health.items():
            healthy.add_metric([f"{ep.address}:{ep.port}"], 1.0 if h.healthy else 0.0)
        refused = CounterMetricFamily("bpfscope_lb_no_backend_refusals", "Connects refused: no healthy backend")
        refused.add_metric([], k.no_backend_refusals())
        reloads = CounterMetricFamily("bpfscope_lb_reload_errors", "Edits of the file that were refused")
        reloads.add_metric([], self.ctl.reload_errors)
        yield from (chosen, healthy, refused, reloads, open_conns)


def serve_metrics(ctl: Controller, host: str, port: int) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LbMetrics(ctl))
    start_http_server(port, addr=host, registry=registry)


def run_controller(kernel: LbKernel, path: str, interval_s: float, timeout_s: float, fall: int, rise: int,
                   metrics: tuple[str, int] | None, drain_timeout_s: float | None = None) -> int:
    import signal

    ctl = Controller(kernel, path, interval_s, timeout_s, fall, rise,
                     log=lambda m: print(m, file=sys.stderr, flush=True), drain_timeout_s=drain_timeout_s)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: ctl.stop.set())
    if metrics:
        serve_metrics(ctl, *metrics)
    try:
        return ctl.run()
    finally:
        ctl.close()

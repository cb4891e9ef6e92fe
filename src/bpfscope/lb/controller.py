"""`bpfscope lb run`: keep the kernel's services in line with a file and with backend health.

Every `--interval` seconds: reload the file when it changed (a bad edit is reported and
the running configuration kept), probe every backend with a TCP connect (from this
process, which is outside the balanced cgroup), and apply the file with unhealthy
backends left out of the choice. A backend is unhealthy after `fall` failed probes in a
row and healthy again after `rise` good ones. The kernel state is pinned, so stopping or
killing the controller changes nothing for running applications.
"""

from __future__ import annotations

import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from .config import ConfigError, ServicesFile, load
from .kernel import Endpoint, LbKernel


@dataclass
class Health:
    healthy: bool = True
    fails: int = 0
    oks: int = 0
    changes: int = 0


def tcp_probe(ep: Endpoint, timeout_s: float) -> bool:
    family = socket.AF_INET6 if ":" in ep.address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect((ep.address, ep.port))
            return True
        except OSError:
            return False


class Controller:
    def __init__(self, kernel: LbKernel, path: str, interval_s: float = 2.0, timeout_s: float = 1.0,
                 fall: int = 1, rise: int = 1, log=print):
        self.kernel = kernel
        self.path = Path(path)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.fall, self.rise = fall, rise
        self.log = log
        self.config: ServicesFile = load(path)
        self.mtime = self.path.stat().st_mtime_ns
        self.health: dict[Endpoint, Health] = {}
        self.stop = threading.Event()
        self.reload_errors = 0
        self._pool = ThreadPoolExecutor(max_workers=16)

    def backends(self) -> set[Endpoint]:
        return {Endpoint(b.address, b.port, "tcp") for s in self.config.services if s.protocol == "tcp"
                for b in s.backends}

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
            self.config = load(self.path)
            self.log(f"bpfscope lb: reloaded {self.path}")
        except ConfigError as exc:
            self.reload_errors += 1
            self.log(f"bpfscope lb: {exc}; keeping the running configuration")

    def probe_all(self) -> None:
        eps = sorted(self.backends(), key=lambda e: (e.address, e.port))
        results = dict(zip(eps, self._pool.map(lambda e: tcp_probe(e, self.timeout_s), eps)))
        for ep, ok in results.items():
            h = self.health.setdefault(ep, Health())
            h.oks, h.fails = (h.oks + 1, 0) if ok else (0, h.fails + 1)
            if h.healthy and h.fails >= self.fall:
                h.healthy, h.changes = False, h.changes + 1
                self.log(f"bpfscope lb: backend {ep.address}:{ep.port} is down")
            elif not h.healthy and h.oks >= self.rise:
                h.healthy, h.changes = True, h.changes + 1
                self.log(f"bpfscope lb: backend {ep.address}:{ep.port} is back")

    def desired(self):
        """The file's services with unhealthy TCP backends left out of the choice."""
        out = []
        for s in self.config.services:
            keep = [b for b in s.backends
                    if s.protocol != "tcp" or self.health.get(Endpoint(b.address, b.port, "tcp"), Health()).healthy]
            out.append(s.model_copy(update={"backends": keep}))
        return out

    def step(self) -> None:
        self.reload_if_changed()
        self.probe_all()
        self.kernel.apply(self.desired())

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
        counts = k.choices()
        for s in k.status():
            for b in s["backends"]:
                ep = f"{b['address']}:{b['port']}"
                chosen.add_metric([s["name"], ep], counts.get(Endpoint(b["address"], b["port"], s["protocol"]), 0))
        for ep, h in self.ctl.health.items():
            healthy.add_metric([f"{ep.address}:{ep.port}"], 1.0 if h.healthy else 0.0)
        refused = CounterMetricFamily("bpfscope_lb_no_backend_refusals", "Connects refused: no healthy backend")
        refused.add_metric([], k.no_backend_refusals())
        reloads = CounterMetricFamily("bpfscope_lb_reload_errors", "Edits of the file that were refused")
        reloads.add_metric([], self.ctl.reload_errors)
        yield from (chosen, healthy, refused, reloads)


def serve_metrics(ctl: Controller, host: str, port: int) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LbMetrics(ctl))
    start_http_server(port, addr=host, registry=registry)


def run_controller(kernel: LbKernel, path: str, interval_s: float, timeout_s: float, fall: int, rise: int,
                   metrics: tuple[str, int] | None) -> int:
    import signal

    ctl = Controller(kernel, path, interval_s, timeout_s, fall, rise,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: ctl.stop.set())
    if metrics:
        serve_metrics(ctl, *metrics)
    try:
        return ctl.run()
    finally:
        ctl.close()

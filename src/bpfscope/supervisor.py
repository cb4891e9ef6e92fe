"""bpfscope up: the collector and the chosen exporters as separate processes.

A crashed child is restarted with exponential backoff (1 s doubling to 30 s, reset after
it has run for a minute); Ctrl-C or SIGTERM stops every child, then `up` itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

EXPORTER_DOMAINS = ("sys", "net", "stack", "proc", "fuse")  # grows as domains land
# the command line of a domain whose exporter is a sub-command (stack has modes)
# net with retransmits, resets, congestion changes and drops: what the Network dashboard
# shows besides the connections (each a hook on a rare path, or one lookup per segment)
DOMAIN_ARGV = {"stack": ["stack", "cpu"], "fuse": ["fuse", "trace"], "net": ["net", "--events", "--drops"]}
HEALTHY_AFTER_S = 60.0
USAGE_ERROR = 2  # a child that exits 2 was misconfigured (bad port, bad URL): restarting cannot help


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff_s: float = 1.0
    history: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        self.started_at = time.monotonic()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def child_commands(db: str, listen: str, domains: list[str], interval: float, metrics_port: int = 0,
                   metrics_host: str = "127.0.0.1") -> list[Child]:
    """The collector first, then one exporter per domain; exporter i serves /metrics on metrics_port + i."""
    py = [sys.executable, "-m", "bpfscope"]
    url = f"http://{listen}"
    children = [Child("collector", py + ["collector", "--db", db, "--listen", listen])]
    for i, domain in enumerate(domains):
        argv = py + DOMAIN_ARGV.get(domain, [domain]) + ["--collector", url, "--quiet", "--interval", str(interval)]
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port + i), "--metrics-host", metrics_host]
        children.append(Child(domain, argv))
    return children


class Supervisor:
    def __init__(self, children: list[Child], log=print):
        self.children = children
        self.stop_event = threading.Event()
        self.log = log

    def _on_signal(self, signum, frame) -> None:
        self.stop_event.set()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        for child in self.children:
            child.start()
        self.exit_code = 0
        try:
            while not self.stop_event.wait(0.5):
                self.tick()
        finally:
            for child in reversed(self.children):
                child.stop()
        return self.exit_code

    def tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    child.start()
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_S:
                    child.backoff_s = 1.0
                continue
            child.history.append(code)
            child.proc = None
            if code == USAGE_ERROR:
                self.log(f"bpfscope up: {child.name} refused its configuration; stopping")
                self.exit_code = USAGE_ERROR
                self.stop_event.set()
                return
            child.restarts += 1
            child.next_start = now + child.backoff_s
            self.log(f"bpfscope up: {child.name} exited with {code}; restarting in {child.backoff_s:.0f} s")
            child.backoff_s = min(child.backoff_s * 2, 30.0)

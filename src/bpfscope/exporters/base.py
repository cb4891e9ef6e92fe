"""The loop every exporter shares.

load BPF -> every --interval: read aggregated maps -> records -> (live table | --json lines)
                                                            -> Sender (bounded buffer, HTTP batches)
and its own /metrics (prometheus-client, built on scrape from what the exporter knows).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from typing import Iterable

import httpx
import orjson
from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from rich.console import Console
from rich.live import Live
from rich.table import Table


class Exporter:
    """One domain's kernel side and its normalisation. Subclasses fill these in."""

    name = "exporter"
    domain = "system"
    # False when only the live table reads the records (no --json, no collector): an
    # exporter may then skip building records the table does not show, and only count them.
    records_wanted = True

    def open(self) -> None:
        """Load and attach the BPF programs."""

    def collect(self, elapsed_s: float) -> list[dict]:
        """Read the maps once and return schema-v1 record dicts for the interval."""
        raise NotImplementedError

    def table(self, records: list[dict]) -> Table:
        """The live view of one interval's records."""
        raise NotImplementedError

    def metrics(self) -> Iterable:
        """Prometheus metric families for this domain, built on scrape."""
        return []

    def close(self) -> None:
        """Detach and free everything (links are fds: closing them detaches)."""

    def bind(self, stop: threading.Event) -> None:
        """The loop's stop event: an exporter that is done by itself (what it followed has
        exited) sets it."""

    def final(self) -> list[dict]:
        """Records that summarise the whole run, emitted once at the end (most: none)."""
        return []

    def exit_code(self) -> int:
        """The status the command exits with once closed (an exporter that ran a command:
        the command's, as `time` and `strace` do)."""
        return 0


class Sender:
    """Sends records to the collector from a thread. offer() never blocks: when the
    buffer is full the oldest records are dropped and counted."""

    def __init__(self, url: str, max_buffer: int = 100_000, batch: int = 1000, timeout_s: float = 5.0):
        self.url = url.rstrip("/") + "/api/v1/records"
        self.batch = batch
        self.buffer: deque[dict] = deque()
        self.max_buffer = max_buffer
        self.sent = self.dropped = self.failed_posts = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout_s)
        self._thread = threading.Thread(target=self._run, name="bpfscope-sender", daemon=True)
        self._thread.start()

    def offer(self, records: list[dict]) -> None:
        with self._lock:
            self.buffer.extend(records)
            overflow = len(self.buffer) - self.max_buffer
            for _ in range(max(overflow, 0)):
                self.buffer.popleft()
            self.dropped += max(overflow, 0)
        self._wake.set()

    def _take(self) -> list[dict]:
        with self._lock:
            n = min(self.batch, len(self.buffer))
            return [self.buffer.popleft() for _ in range(n)]

    def _put_back(self, records: list[dict]) -> None:
        with self._lock:
            self.buffer.extendleft(reversed(records))
            overflow = len(self.buffer) - self.max_buffer
            for _ in range(max(overflow, 0)):
                self.buffer.pop()
            self.dropped += max(overflow, 0)

    def _post(self, records: list[dict]) -> bool:
        try:
            r = self._client.post(self.url, content=orjson.dumps(records),
                                  headers={"content-type": "application/json"})
        except httpx.HTTPError:
            return False
        if r.status_code == 200:
            self.sent += len(records)
            return True
        if 400 <= r.status_code < 500:  # the collector refused them: retrying cannot help
            self.dropped += len(records)
            print(f"bpfscope: collector rejected {len(records)} records: {r.text[:200]}", file=sys.stderr)
            return True
        return False

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while (records := self._take()):
                if self._post(records):
                    backoff = 0.5
                    continue
                self.failed_posts += 1
                self._put_back(records)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                if self._stop.is_set():
                    break

    def flush(self, timeout_s: float = 3.0) -> None:
        """Try to send what is buffered before exit (bounded in time)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self.buffer:
                    return
            records = self._take()
            if not self._post(records):
                self._put_back(records)
                return

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
        self.flush()
        self._client.close()


class _ExporterCollector:
    """prometheus-client custom collector: everything is read at scrape time."""

    def __init__(self, loop: "ExporterLoop"):
        self.loop = loop
        self.last_scrape_s = 0.0

    def collect(self):
        # Building the families is the scrape's cost; report the previous one (this one is not over).
        t0 = time.monotonic()
        yield from self._families()
        scrape = GaugeMetricFamily("bpfscope_exporter_scrape_duration_seconds",
                                   "Time the previous /metrics scrape of this exporter took to build",
                                   labels=["exporter"])
        scrape.add_metric([self.loop.exporter.name], self.last_scrape_s)
        yield scrape
        self.last_scrape_s = time.monotonic() - t0

    def _families(self):
        exp, loop = self.loop.exporter, self.loop
        up = GaugeMetricFamily("bpfscope_up", "1 while the exporter's BPF programs are attached", labels=["exporter"])
        up.add_metric([exp.name], 1.0 if loop.running else 0.0)
        yield up
        dur = GaugeMetricFamily("bpfscope_exporter_collect_duration_seconds",
                                "Time the last interval's map read and normalisation took", labels=["exporter"])
        dur.add_metric([exp.name], loop.last_collect_s)
        yield dur
        recs = CounterMetricFamily("bpfscope_exporter_records", "Records produced", labels=["exporter"])
        recs.add_metric([exp.name], loop.records_total)
        yield recs
        if loop.sender:
            for name, help_, value in (
                ("bpfscope_exporter_sent_records", "Records accepted by the collector", loop.sender.sent),
                ("bpfscope_exporter_dropped_records", "Records dropped (buffer full or rejected)", loop.sender.dropped),
                ("bpfscope_exporter_failed_posts", "Batches the collector did not take (retried)", loop.sender.failed_posts),
            ):
                c = CounterMetricFamily(name, help_, labels=["exporter"])
                c.add_metric([exp.name], value)
                yield c
            g = GaugeMetricFamily("bpfscope_exporter_buffered_records", "Records waiting to be sent", labels=["exporter"])
            g.add_metric([exp.name], len(loop.sender.buffer))
            yield g
        yield from exp.metrics()


class ExporterLoop:
    def __init__(self, exporter: Exporter, interval_s: float = 5.0, duration_s: float | None = None,
                 json_out: bool = False, collector_url: str | None = None, metrics_addr: str | None = None,
                 view: bool = True):
        self.exporter = exporter
        self.interval_s = interval_s
        self.duration_s = duration_s
        self.json_out = json_out
        self.tables = view and not json_out  # --quiet: no table at all, tty or not
        self.view = self.tables and sys.stdout.isatty()
        self.sender = Sender(collector_url) if collector_url else None
        exporter.records_wanted = bool(json_out or self.sender)
        self.metrics_addr = metrics_addr
        self.stop = threading.Event()
        self.running = False
        self.records_total = 0
        self.last_collect_s = 0.0

    def _on_signal(self, signum, frame) -> None:
        self.stop.set()

    def _emit(self, records: list[dict], live: Live | None) -> None:
        self.records_total += len(records)
        if self.sender:
            self.sender.offer(records)
        if self.json_out:
            out = sys.stdout.buffer
            for r in records:
                out.write(orjson.dumps(r) + b"\n")
            out.flush()
        elif live is not None:
            live.update(self.exporter.table(records))
        elif self.tables and (not self.sender or sys.stdout.isatty()):
            Console().print(self.exporter.table(records))

    def _collect(self, elapsed: float) -> list[dict]:
        t0 = time.monotonic()
        records = self.exporter.collect(elapsed)
        self.last_collect_s = time.monotonic() - t0
        return records

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        if self.metrics_addr:
            host, _, port = self.metrics_addr.rpartition(":")
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_ExporterCollector(self))
            start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
        self.exporter.bind(self.stop)
        self.exporter.open()
        self.running = True
        start = last = time.monotonic()
        live = Live(auto_refresh=False, screen=False) if self.view else None
        try:
            if live:
                live.start()
            while not self.stop.is_set():
                remaining = None if self.duration_s is None else start + self.duration_s - time.monotonic()
                wait = self.interval_s if remaining is None else max(0.0, min(self.interval_s, remaining))
                self.stop.wait(wait)
                now = time.monotonic()
                self._emit(self._collect(now - last), live)
                if live:
                    live.refresh()
                last = now
                if self.duration_s is not None and now - start >= self.duration_s:
                    break
        finally:
            self.running = False
            if live:
                live.stop()
            final: list[dict] = []
            try:
                final = self.exporter.final()
            finally:
                self.exporter.close()
                if final:  # the run's summary: after the last view, before the sender stops
                    self._emit(final, None)
            if self.sender:
                self.sender.close()
        return self.exporter.exit_code()

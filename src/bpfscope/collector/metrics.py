"""The collector's own Prometheus metrics: counters kept per app, rendered by a custom Collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from bpfscope.storage import Store, StoreError


class IngestStats:
    """Counters of one collector app; updated from the event loop and worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records_ingested = 0
        self.records_rejected = 0
        self.batches_stored = 0
        self.batches_rejected = 0
        self.ingest_seconds = 0.0
        self.retention_deleted = 0
        self.started_ns = time.time_ns()

    def stored(self, records: int, seconds: float) -> None:
        with self._lock:
            self.records_ingested += records
            self.batches_stored += 1
            self.ingest_seconds += seconds

    def rejected(self, records: int, seconds: float) -> None:
        with self._lock:
            self.records_rejected += records
            self.batches_rejected += 1
            self.ingest_seconds += seconds

    def retained(self, deleted: int) -> None:
        with self._lock:
            self.retention_deleted += deleted

    def snapshot(self) -> dict:
        """The totals since this collector started, as the overview endpoint serves them."""
        with self._lock:
            return {"records_ingested": self.records_ingested, "records_rejected": self.records_rejected,
                    "batches_stored": self.batches_stored, "batches_rejected": self.batches_rejected,
                    "ingest_seconds": round(self.ingest_seconds, 6), "retention_deleted": self.retention_deleted,
                    "started": self.started_ns // 1_000_000,
                    "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 3)}


class CollectorMetrics(Collector):
    def __init__(self, store: Store, stats: IngestStats) -> None:
        self.store = store
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily("bpfscope_collector_records_ingested", "Records stored.", value=s.records_ingested)
        yield CounterMetricFamily("bpfscope_collector_records_rejected", "Records in rejected batches.",
                                  value=s.records_rejected)
        batches = CounterMetricFamily("bpfscope_collector_batches", "POSTed batches by outcome.", labels=["result"])
        batches.add_metric(["stored"], s.batches_stored)
        batches.add_metric(["rejected"], s.batches_rejected)
        yield batches
        yield CounterMetricFamily("bpfscope_collector_ingest_seconds", "Time spent handling POSTed batches.",
                                  value=s.ingest_seconds)
        yield CounterMetricFamily("bpfscope_collector_retention_deleted", "Records deleted by retention.",
                                  value=s.retention_deleted)
        try:
            stored = self.store.count()
        except StoreError:
            return  # a scrape must not fail because the database hiccups
        yield GaugeMetricFamily("bpfscope_collector_stored_records", "Records in the database now.", value=stored)


def make_registry(store: Store, stats: IngestStats) -> CollectorRegistry:
    # A private registry: two apps in one process (tests) never share or clash on metrics.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(store, stats))
    return registry

"""The home dashboard: are the exporters attached, is data flowing, what is stored."""

from __future__ import annotations

from .common import (
    HOST_MATCH,
    RATE,
    TIME,
    Column,
    dashboard,
    infinity_table,
    prometheus,
    prometheus_timeseries,
    records_query,
    row,
    up_stat,
    value_stat,
)

UID = "bpfscope-overview"
RECORD_COLUMNS = (TIME, Column("domain", "domain"), Column("kind", "kind"), Column("pid", "pid", "number"),
                  Column("comm", "comm"))


def build():
    d = dashboard(UID, "bpfscope / Overview", "Exporters, delivery, the collector and the newest stored records.")

    d = (d.with_row(row("Exporters"))
         .with_panel(up_stat("Exporters attached", "bpfscope_up: 1 while an exporter's BPF programs are attached.",
                             prometheus(f"bpfscope_up{{{HOST_MATCH}}}", "{{exporter}}", instant=True), width=8))
         .with_panel(value_stat("Scrape targets up", "Targets of the bpfscope jobs Prometheus reaches now; the "
                                "ports reserved for domains not running yet count as down.",
                                prometheus(f'sum(up{{job=~"bpfscope.*", {HOST_MATCH}}})', "up", instant=True),
                                width=8))
         .with_panel(value_stat("Stored records", "Records in the collector's database now.",
                                prometheus(f"sum(bpfscope_collector_stored_records{{{HOST_MATCH}}})", "records",
                                           instant=True), width=8))
         .with_panel(prometheus_timeseries(
             "Records produced per second", "What each exporter read from its BPF maps, per second.",
             prometheus(f"sum by (exporter) (rate(bpfscope_exporter_records_total{{{HOST_MATCH}}}[{RATE}]))",
                        "{{exporter}}"), unit="ops"))
         .with_panel(prometheus_timeseries(
             "Delivery to the collector", "Records the collector accepted and records dropped (buffer full or "
             "refused), per second.",
             prometheus(f"sum by (exporter) (rate(bpfscope_exporter_sent_records_total{{{HOST_MATCH}}}[{RATE}]))",
                        "sent {{exporter}}"),
             prometheus(f"sum by (exporter) (rate(bpfscope_exporter_dropped_records_total{{{HOST_MATCH}}}[{RATE}]))",
                        "dropped {{exporter}}"), unit="ops"))
         .with_panel(prometheus_timeseries(
             "Map read and scrape time", "How long the last interval's map read and normalisation took, "
             "and how long the previous /metrics scrape took to build.",
             prometheus(f"max by (exporter) (bpfscope_exporter_collect_duration_seconds{{{HOST_MATCH}}})",
                        "read {{exporter}}"),
             prometheus(f"max by (exporter) (bpfscope_exporter_scrape_duration_seconds{{{HOST_MATCH}}})",
                        "scrape {{exporter}}"), unit="s"))
         .with_panel(prometheus_timeseries(
             "Records waiting to be sent", "Each exporter's send buffer; it grows while the collector is away.",
             prometheus(f"sum by (exporter) (bpfscope_exporter_buffered_records{{{HOST_MATCH}}})", "{{exporter}}"))))

    d = (d.with_row(row("Collector"))
         .with_panel(prometheus_timeseries(
             "Ingest", "Records stored and records in refused batches, per second.",
             prometheus(f"sum(rate(bpfscope_collector_records_ingested_total{{{HOST_MATCH}}}[{RATE}]))", "stored"),
             prometheus(f"sum(rate(bpfscope_collector_records_rejected_total{{{HOST_MATCH}}}[{RATE}]))", "rejected"),
             unit="ops", width=8))
         .with_panel(prometheus_timeseries(
             "Time per batch", "Mean time the collector spent on one POSTed batch (decode, validate, store).",
             prometheus(f"sum(rate(bpfscope_collector_ingest_seconds_total{{{HOST_MATCH}}}[{RATE}])) / "
                        f"sum(rate(bpfscope_collector_batches_total{{{HOST_MATCH}}}[{RATE}]))", "per batch"),
             unit="s", width=8))
         .with_panel(prometheus_timeseries(
             "Storage rows", "Records in the database; retention trims them.",
             prometheus(f"sum(bpfscope_collector_stored_records{{{HOST_MATCH}}})", "records"), width=8)))

    d = (d.with_row(row("System calls"))
         .with_panel(prometheus_timeseries(
             "Top system calls per second", "Every process on the host, by syscall name (bpfscope sys).",
             prometheus(f"topk(10, sum by (syscall) (rate(bpfscope_syscalls_total{{{HOST_MATCH}}}[{RATE}])))",
                        "{{syscall}}"), unit="ops", width=24)))

    d = (d.with_row(row("Stored records"))
         .with_panel(infinity_table("Newest records on ${host}", "Every domain, newest first (collector REST API).",
                                    records_query(columns=RECORD_COLUMNS, limit=100)))
         .with_panel(infinity_table("Newest records of ${comm} (pid ${pid})", "The process chosen above.",
                                    records_query(("pid", "${pid}"), columns=RECORD_COLUMNS, limit=100))))
    return d

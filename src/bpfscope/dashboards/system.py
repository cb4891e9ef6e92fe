"""bpfscope sys: system calls, from Prometheus (every process) and from stored records (per process)."""

from __future__ import annotations

from .common import (
    HOST_MATCH,
    RATE,
    TIME,
    Column,
    bucket_variable,
    dashboard,
    group_by,
    infinity_table,
    infinity_timeseries,
    prometheus,
    prometheus_timeseries,
    records_query,
    row,
    series_query,
    value_stat,
)

UID = "bpfscope-system"
SYSCALL_RECORDS = (("domain", "system"), ("kind", "syscall"))
SYSCALL = Column("labels.syscall", "syscall")
COUNT = Column("values.count", "count", "number")
RATE_PER_S = Column("values.rate_per_s", "rate_per_s", "number")


def _calls_per_bucket(*filters: tuple[str, str]):
    return series_query("count", *SYSCALL_RECORDS, *filters, agg="sum", group_by="syscall", group_name="syscall",
                        value_name="calls")


def build():
    d = dashboard(UID, "bpfscope / System calls", "System calls per process and syscall, counted in the kernel.",
                  tags=("system",), scope=SYSCALL_RECORDS).with_variable(bucket_variable())

    d = (d.with_row(row("Every process (Prometheus)"))
         .with_panel(prometheus_timeseries(
             "System calls per second, by syscall", "The 15 busiest syscalls over all processes.",
             prometheus(f"topk(15, sum by (syscall) (rate(bpfscope_syscalls_total{{{HOST_MATCH}}}[{RATE}])))",
                        "{{syscall}}"), unit="ops", width=16))
         .with_panel(value_stat("System calls per second", "All syscalls of all processes.",
                                prometheus(f"sum(rate(bpfscope_syscalls_total{{{HOST_MATCH}}}[{RATE}]))", "calls/s"),
                                unit="ops", width=4))
         .with_panel(value_stat("Not counted (map full)", "Syscalls the kernel could not count because the "
                                "per-process map was full; should stay 0.",
                                prometheus(f"sum(rate(bpfscope_sys_map_full_events_total{{{HOST_MATCH}}}[{RATE}]))",
                                           "missed/s"), unit="ops", width=4)))

    d = (d.with_row(row("Processes (stored records: the top processes of each interval)"))
         .with_panel(infinity_table(
             "Top processes", "System calls per process over the time range, summed from stored records.",
             records_query(*SYSCALL_RECORDS, columns=(TIME, Column("pid", "pid", "number"), Column("comm", "comm"),
                                                      SYSCALL, COUNT, RATE_PER_S), limit=5000),
             transformations=[group_by(("pid", "comm"), ("count",))], sort_by="count (sum)"))
         .with_panel(infinity_timeseries(
             "System calls per ${bucket} s, by syscall", "Stored records summed per time bucket (collector series API).",
             _calls_per_bucket(), legend_label="syscall")))

    d = (d.with_row(row("Process ${comm} (pid ${pid})"))
         .with_panel(infinity_timeseries(
             "System calls of ${comm} (pid ${pid}) per ${bucket} s", "The process chosen above, by syscall.",
             _calls_per_bucket(("pid", "${pid}")), legend_label="syscall"))
         .with_panel(infinity_table(
             "Newest records of ${comm} (pid ${pid})", "One row per syscall and interval, newest first.",
             records_query(*SYSCALL_RECORDS, ("pid", "${pid}"), columns=(TIME, SYSCALL, COUNT, RATE_PER_S),
                           limit=200))))
    return d

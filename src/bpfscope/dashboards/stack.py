"""bpfscope stack: flame graphs of stored stack records (collector /api/v1/flamegraph through
Infinity, in Grafana's nested-set frame), and the exporters' own counters from Prometheus."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Panel

from .common import (
    HOST_MATCH,
    INFINITY,
    RATE,
    TIME_RANGE,
    Column,
    Infinity,
    _ref_ids,
    dashboard,
    prometheus,
    prometheus_timeseries,
    row,
    value_stat,
)

UID = "bpfscope-stack"
CPU_RECORDS = (("domain", "stack"), ("kind", "cpu_stack"))
OFFCPU_RECORDS = (("domain", "stack"), ("kind", "offcpu_stack"))
# Grafana's flame graph panel reads exactly these four fields, depth first
FLAME_COLUMNS = (Column("level", "level", "number"), Column("value", "value", "number"),
                 Column("self", "self", "number"), Column("label", "label"))


def flame_query(field: str, *filters: tuple[str, str]) -> Infinity:
    """GET /api/v1/flamegraph: the matching records' stacks merged, weighted by values[field]."""
    params = (("field", field), ("host", "${host}"), *filters, *TIME_RANGE)
    return Infinity("/api/v1/flamegraph", params, FLAME_COLUMNS)


def flame_panel(title: str, description: str, query: Infinity, unit: str = "short", width: int = 24) -> Panel:
    return (Panel().type("flamegraph").title(title).description(description).datasource(INFINITY)
            .targets(_ref_ids([query])).unit(unit).span(width).height(14))


def build():
    d = dashboard(UID, "bpfscope / Stacks", "Where time goes: on-CPU and off-CPU stacks counted in the kernel "
                  "(bpfscope stack), merged into flame graphs by the collector.", tags=("stack",), scope=CPU_RECORDS)

    d = (d.with_row(row("Every process"))
         .with_panel(flame_panel(
             "On-CPU flame graph", "bpfscope stack cpu samples over the time range, every process (width: samples).",
             flame_query("count", *CPU_RECORDS)))
         .with_panel(prometheus_timeseries(
             "On-CPU samples per second, by command", "The 15 busiest commands (bpfscope stack cpu's /metrics).",
             prometheus(f"topk(15, sum by (comm) (rate(bpfscope_stack_cpu_samples_total{{{HOST_MATCH}}}[{RATE}])))",
                        "{{comm}}"), unit="short", width=16))
         .with_panel(value_stat("Stacks lost", "Stacks the kernel could not store (collision or full map); "
                                "should stay near 0.",
                                prometheus(f"sum(rate(bpfscope_stack_stack_errors_total{{{HOST_MATCH}}}[{RATE}]))",
                                           "lost/s"), unit="ops", width=8)))

    d = (d.with_row(row("Process ${comm} (pid ${pid})"))
         .with_panel(flame_panel(
             "On-CPU flame graph of ${comm} (pid ${pid})", "The process chosen above.",
             flame_query("count", *CPU_RECORDS, ("pid", "${pid}"))))
         .with_panel(flame_panel(
             "Off-CPU flame graph of ${comm} (pid ${pid})", "Time blocked (bpfscope stack offcpu), width: ns; "
             "empty unless an offcpu exporter sends to the collector.",
             flame_query("ns", *OFFCPU_RECORDS, ("pid", "${pid}")), unit="ns")))
    return d

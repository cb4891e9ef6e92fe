"""bpfscope net: TCP connections, from Prometheus (bounded labels) and stored records (per connection).

Retransmits and other events need `bpfscope net --events`, drops `--drops` (both on under
`bpfscope up`); the layer latency panels need `--latency`."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import CustomVariable
from grafana_foundation_sdk.models.dashboard import VariableOption

from .common import (
    HOST_MATCH,
    RATE,
    TIME,
    Column,
    bucket_variable,
    dashboard,
    infinity_table,
    infinity_timeseries,
    prometheus,
    prometheus_heatmap,
    prometheus_timeseries,
    records_query,
    row,
    series_query,
    value_stat,
)

UID = "bpfscope-network"
CONN_RECORDS = (("domain", "net"), ("kind", "tcp_conn"))
CLOSE_RECORDS = (("domain", "net"), ("kind", "tcp_close"))
PID, COMM = Column("pid", "pid", "number"), Column("comm", "comm")
LOCAL = (Column("labels.laddr", "local"), Column("labels.lport", "lport"))
REMOTE = (Column("labels.raddr", "remote"), Column("labels.rport", "rport"))
DIRECTION, STATE = Column("labels.direction", "direction"), Column("labels.state", "state")
MATCH = f"{{{HOST_MATCH}}}"
LATENCY = "bpfscope_net_layer_latency_seconds_bucket"
STAGES = ("device_to_l2", "l2_to_tcp", "tcp_to_app", "app_to_tcp", "tcp_to_device", "device_to_driver")


def _stage_variable() -> CustomVariable:
    """The layer stage the latency heatmap shows (net_kernel.LATENCY_STAGES)."""
    return (CustomVariable("stage").label("latency stage").values(",".join(STAGES))
            .current(VariableOption(text="tcp_to_app", value="tcp_to_app", selected=True)))


def _value(name: str, text: str | None = None) -> Column:
    return Column(f"values.{name}", text or name, "number")


def build():
    d = dashboard(UID, "bpfscope / Network", "Every TCP connection with its owner, direction and TCP internals.",
                  tags=("net",), scope=CONN_RECORDS).with_variable(bucket_variable()).with_variable(_stage_variable())

    d = (d.with_row(row("Every connection (Prometheus)"))
         .with_panel(prometheus_timeseries(
             "Connections by state and direction", "TCP sockets in the last snapshot of each interval.",
             prometheus(f"sum by (state, direction) (bpfscope_net_connections{{{HOST_MATCH}}})",
                        "{{state}} {{direction}}"), width=12))
         .with_panel(prometheus_timeseries(
             "Connections closed per second", "Final records, by direction (in: accepted here; out: connected).",
             prometheus(f"sum by (direction) (rate(bpfscope_net_closed_connections_total{{{HOST_MATCH}}}[{RATE}]))",
                        "{{direction}}"), unit="ops", width=6))
         .with_panel(value_stat("Ring-buffer records lost", "Events the exporter could not keep up with; "
                                "should stay 0.",
                                prometheus(f"sum(rate(bpfscope_net_lost_events_total{{{HOST_MATCH}}}[{RATE}]))",
                                           "lost/s"), unit="ops", width=6))
         .with_panel(prometheus_timeseries(
             "Smoothed RTT, p50 and p99 over connections", "From tcp_sock.srtt_us of every connection.",
             prometheus(f"histogram_quantile(0.5, sum by (le) (bpfscope_net_srtt_seconds_bucket{{{HOST_MATCH}}}))",
                        "p50"),
             prometheus(f"histogram_quantile(0.99, sum by (le) (bpfscope_net_srtt_seconds_bucket{{{HOST_MATCH}}}))",
                        "p99"), unit="s"))
         .with_panel(prometheus_timeseries(
             "Congestion window, p50 and p99 over connections", "tcp_sock.snd_cwnd in segments.",
             prometheus(f"histogram_quantile(0.5, sum by (le) (bpfscope_net_cwnd_segments_bucket{{{HOST_MATCH}}}))",
                        "p50"),
             prometheus(f"histogram_quantile(0.99, sum by (le) (bpfscope_net_cwnd_segments_bucket{{{HOST_MATCH}}}))",
                        "p99"))))

    d = (d.with_row(row("Retransmits, drops and time between layers (Prometheus)"))
         .with_panel(prometheus_timeseries(
             "TCP events per second", "Retransmitted segments, resets sent and received, congestion state "
             "changes, slow start left or entered, connects, accepts, closes (bpfscope net --events).",
             prometheus(f"sum by (kind) (rate(bpfscope_net_events_total{MATCH}[{RATE}]))", "{{kind}}"),
             unit="ops"))
         .with_panel(prometheus_timeseries(
             "Packets dropped per second, by reason", "skb:kfree_skb with the kernel's drop reason, named from "
             "its BTF (bpfscope net --drops).",
             prometheus(f"sum by (reason) (rate(bpfscope_net_drops_total{MATCH}[{RATE}]))", "{{reason}}"),
             unit="pps"))
         .with_panel(prometheus_timeseries(
             "Time between layers, p99 by stage", "Sampled packets (bpfscope net --latency): receive path "
             "device -> L2 -> TCP -> application, send path application -> TCP -> device queue -> driver.",
             prometheus(f"histogram_quantile(0.99, sum by (le, path, stage) (rate({LATENCY}{MATCH}[{RATE}])))",
                        "{{path}} {{stage}}"), unit="s"))
         .with_panel(prometheus_heatmap(
             "Time between layers: ${stage}", "Sampled packets per log2 bucket of the chosen stage over time "
             "(bpfscope net --latency).",
             prometheus(f'sum by (le) (rate({LATENCY}{{{HOST_MATCH}, stage="${{stage}}"}}[{RATE}]))', "{{le}}"))))

    d = (d.with_row(row("Connections (stored records)"))
         .with_panel(infinity_table(
             "Top talkers", "Snapshot rows of every connection, most bytes received first (sort by any column).",
             records_query(*CONN_RECORDS, columns=(TIME, PID, COMM, DIRECTION, *LOCAL, *REMOTE, STATE,
                                                   _value("bytes_acked", "acked"),
                                                   _value("bytes_received", "received"),
                                                   _value("srtt_us", "rtt us"), _value("snd_cwnd", "cwnd"),
                                                   _value("total_retrans", "retrans")), limit=500),
             width=24, sort_by="received"))
         .with_panel(infinity_timeseries(
             "Bytes received per ${bucket} s, by direction", "Sum of the connections' receive rates, stored records.",
             series_query("rx_bytes_per_s", *CONN_RECORDS, agg="sum", group_by="direction", group_name="direction",
                          value_name="rx B/s"), legend_label="direction", unit="Bps"))
         .with_panel(infinity_table(
             "Closed connections", "One final record per connection: lifetime and totals (what tcplife gives).",
             # lifetime_ns is left out: a connection older than the exporter has none, and a
             # column must be in every row
             records_query(*CLOSE_RECORDS, columns=(TIME, PID, COMM, DIRECTION, *LOCAL, *REMOTE,
                                                    _value("bytes_acked"), _value("bytes_received")), limit=200))))

    d = (d.with_row(row("Connections of ${comm} (pid ${pid})"))
         .with_panel(infinity_table(
             "Connections of ${comm} (pid ${pid})", "Newest snapshot rows of the process chosen above.",
             records_query(*CONN_RECORDS, ("pid", "${pid}"),
                           columns=(TIME, DIRECTION, *LOCAL, *REMOTE, STATE, _value("bytes_acked"),
                                    _value("bytes_received"), _value("snd_cwnd", "cwnd"),
                                    _value("snd_ssthresh", "ssthresh"), _value("srtt_us", "rtt us"),
                                    _value("sndbuf_bytes", "sndbuf")), limit=200), width=24)))
    return d

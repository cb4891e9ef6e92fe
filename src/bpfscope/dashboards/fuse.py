"""bpfscope fuse trace: every FUSE request, per mount and opcode. Prometheus for rates, errors,
bytes and latency quantiles (from the kernel's log2 histogram); stored records for the
per-mount table and requests per bucket.

FUSE records carry no process (a request is the kernel's, not a task's), so the comm/pid
variables list the processes of every domain and no panel here filters on them."""

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
    prometheus_heatmap,
    prometheus_timeseries,
    records_query,
    row,
    series_query,
    value_stat,
)

UID = "bpfscope-fuse"
FUSE_RECORDS = (("domain", "fuse"), ("kind", "fuse_op"))
MATCH = f"{{{HOST_MATCH}}}"


def _rate(metric: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{MATCH}[{RATE}]))"


def _quantile(q: float) -> str:
    # The buckets are the kernel's log2 slots, so a quantile is known to a factor of 2.
    return (f"histogram_quantile({q}, sum by (le, opcode) "
            f"(rate(bpfscope_fuse_latency_seconds_bucket{MATCH}[{RATE}])))")


def _value(name: str, text: str | None = None) -> Column:
    return Column(f"values.{name}", text or name, "number")


def build():
    d = dashboard(UID, "bpfscope / FUSE", "Every FUSE request from the fuse:fuse_request_send/end tracepoints: "
                  "requests, errors, bytes and latency per mount and opcode.",
                  tags=("fuse",)).with_variable(bucket_variable())

    d = (d.with_row(row("Every mount (Prometheus)"))
         .with_panel(prometheus_timeseries(
             "Requests per second, by opcode", "FUSE requests that ended, every mount.",
             prometheus(_rate("bpfscope_fuse_requests_total", "opcode"), "{{opcode}}"), unit="reqps", width=16))
         .with_panel(value_stat("Requests per second", "Every opcode of every mount.",
                                prometheus(f"sum(rate(bpfscope_fuse_requests_total{MATCH}[{RATE}]))", "req/s"),
                                unit="reqps", width=4))
         .with_panel(value_stat("Errors per second", "Requests the server answered with an error (ENOENT of a "
                                "lookup counts).",
                                prometheus(f"sum(rate(bpfscope_fuse_errors_total{MATCH}[{RATE}]))", "err/s"),
                                unit="reqps", width=4))
         .with_panel(prometheus_timeseries(
             "Requests per second, by mount", "All opcodes of each mount.",
             prometheus(_rate("bpfscope_fuse_requests_total", "mount"), "{{mount}}"), unit="reqps", width=8))
         .with_panel(prometheus_timeseries(
             "Errors per second, by opcode", "Replies with a negative errno.",
             prometheus(_rate("bpfscope_fuse_errors_total", "opcode"), "{{opcode}}"), unit="reqps", width=8))
         .with_panel(prometheus_timeseries(
             "Bytes per second, request and reply", "FUSE message bytes: requests carry WRITE data, "
             "replies READ data (with passthrough neither reaches the server).",
             prometheus(_rate("bpfscope_fuse_bytes_total", "direction"), "{{direction}}"), unit="Bps", width=8))
         .with_panel(prometheus_timeseries(
             "Latency p50 by opcode", "Kernel send to end of a request (a log2 bucket's upper bound).",
             prometheus(_quantile(0.5), "{{opcode}}"), unit="s"))
         .with_panel(prometheus_timeseries(
             "Latency p99 by opcode", "Kernel send to end of a request (a log2 bucket's upper bound).",
             prometheus(_quantile(0.99), "{{opcode}}"), unit="s"))
         .with_panel(prometheus_timeseries(
             "Mean latency by opcode", "Sum of latencies over the number of requests.",
             prometheus(f"{_rate('bpfscope_fuse_latency_seconds_sum', 'opcode')} / "
                        f"{_rate('bpfscope_fuse_latency_seconds_count', 'opcode')}", "{{opcode}}"),
             unit="s", width=12))
         .with_panel(prometheus_heatmap(
             "Latency distribution, every opcode", "Requests per log2 latency bucket over time (kernel send "
             "to end); the built-in FUSE page shows the same buckets per opcode.",
             prometheus(f"sum by (le) (rate(bpfscope_fuse_latency_seconds_bucket{MATCH}[{RATE}]))", "{{le}}"))))

    mount, opcode = Column("labels.mount", "mount"), Column("labels.opcode", "opcode")
    d = (d.with_row(row("Mounts and opcodes (stored records: one per interval, mount and opcode)"))
         .with_panel(infinity_table(
             "Requests per mount and opcode", "Summed over the time range from the records of `bpfscope fuse trace`.",
             records_query(*FUSE_RECORDS, columns=(TIME, mount, opcode, _value("count", "requests"),
                                                   _value("errors"), _value("request_bytes", "request bytes"),
                                                   _value("reply_bytes", "reply bytes")), limit=5000),
             transformations=[group_by(("mount", "opcode"),
                                       ("requests", "errors", "request bytes", "reply bytes"))],
             sort_by="requests (sum)"))
         .with_panel(infinity_timeseries(
             "Requests per ${bucket} s, by opcode", "Stored records summed per time bucket (collector series API).",
             series_query("count", *FUSE_RECORDS, agg="sum", group_by="opcode", group_name="opcode",
                          value_name="requests"), legend_label="opcode"))
         .with_panel(infinity_table(
             "Newest intervals", "One row per interval, mount and opcode, newest first: rate and latency "
             "(average, and the upper bound of the p99 log2 bucket).",
             records_query(*FUSE_RECORDS, columns=(TIME, mount, opcode, _value("count", "requests"),
                                                   _value("rate_per_s", "req/s"), _value("errors"),
                                                   _value("avg_us", "avg us"), _value("p50_us", "p50 us"),
                                                   _value("p99_us", "p99 us")), limit=500),
             width=24)))
    return d

"""Records for the collector and store tests: one time base and one data set of six records."""

from __future__ import annotations

from bpfscope.schema import make_record

T0 = 1_700_000_040 * 10**9  # 2023-11-14T22:14:00Z, a whole minute: series buckets start here
S = 10**9


def rec(domain="net", kind="tcp_conn", ts=T0, host="node-a", **kw) -> dict:
    r = make_record(domain, kind, ts=ts, **kw)
    r["host"] = host
    return r


def dataset(leaf: str = "serve") -> list[dict]:
    """Six records over three hosts, four domains, labels, values and a stack whose leaf is `leaf`,
    one second apart from T0 (index i at T0 + i s)."""
    return [
        rec("net", "tcp_conn", T0 + 0 * S, "node-a", pid=100, tid=101, comm="nginx",
            labels={"dir": "in", "svc": "web"}, values={"bytes_acked": 1500, "srtt_us": 12.5}),
        rec("net", "tcp_conn", T0 + 1 * S, "node-a", pid=100, tid=102, comm="nginx",
            labels={"dir": "out", "svc": "web"}, values={"bytes_acked": 10}),
        rec("net", "tcp_retrans", T0 + 2 * S, "node-b", pid=200, comm="curl", labels={"dir": "out"},
            values={"retrans_total": 3}),
        rec("proc", "lifecycle", T0 + 3 * S, "node-b", pid=300, comm="bash", labels={"event": "exec"},
            values={"filename": "/bin/ls"}),
        rec("stack", "cpu_stack", T0 + 4 * S, "node-a", pid=100, comm="nginx", values={"count": 5},
            stack=["_start", "main", leaf]),
        rec("system", "cpu", T0 + 5 * S, "node-c", values={"util": 0.5}),
    ]


# for the series API and Store.series: per-minute buckets M0 and M1 of field lat_us
SERIES = [
    rec(ts=T0 + 1 * S, labels={"dir": "in"}, values={"lat_us": 10}),
    rec(ts=T0 + 20 * S, labels={"dir": "in"}, values={"lat_us": 20}),
    rec(ts=T0 + 59 * S, labels={"dir": "out"}, values={"lat_us": 30}),
    rec(ts=T0 + 60 * S, labels={"dir": "in"}, values={"lat_us": 40.0}),
    rec(ts=T0 + 61 * S, labels={"dir": "out"}, values={"lat_us": 50}),
    rec(ts=T0 + 119 * S, labels={"dir": "out"}, values={"lat_us": 60}),
    rec(ts=T0 + 70 * S, labels={"dir": "out"}, values={"lat_us": "n/a"}),  # a string: never CAST, not aggregated
    rec(ts=T0 + 71 * S, labels={"dir": "out"}, values={"other": 1}),       # no such field
    rec("proc", "lifecycle", ts=T0 + 5 * S, values={"lat_us": 1000}),      # filtered out by domain
]
M0, M1 = T0 // 10**6, (T0 + 60 * S) // 10**6


def ts_of(rows) -> list[int]:
    return [r["ts"] for r in rows]

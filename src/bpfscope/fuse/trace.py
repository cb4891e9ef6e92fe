"""bpfscope fuse trace: every FUSE request from the fuse:fuse_request_send/end tracepoints,
aggregated in the kernel per (connection, opcode) with a log2 latency histogram
(bpf/fuse.bpf.c). User space reads the `ops` map in one batch per interval and takes deltas.

A fuse_op record carries the interval's histogram as values hist_<i>: the requests whose
latency was in [2^i, 2^(i+1)) ns, for the slots that counted any (they sum to count)."""

from __future__ import annotations

import os
import sys

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from rich.table import Table

from ..bpf import BpfObject
from ..exporters.base import Exporter
from ..schema import make_record
from .protocol import OPCODE_NAMES
from .umount import FUSECTL, connection_of, ensure_fusectl, fuse_mounts

FIELDS = ("count", "errors", "request_bytes", "reply_bytes", "total_ns")


def opcode_name(op: int) -> str:
    return OPCODE_NAMES.get(op, str(op))


def hist_values(hist: list[int]) -> dict[str, int]:
    """The non-empty log2 slots as record values (record values are scalars, not lists)."""
    return {f"hist_{i}": n for i, n in enumerate(hist) if n}


def quantile_ns(hist: list[int], q: float) -> float:
    """Upper bound of the log2 bucket that holds quantile q (slot i covers [2^i, 2^(i+1)) ns)."""
    total = sum(hist)
    if not total:
        return 0.0
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            return float(2 ** (i + 1))
    return float(2 ** len(hist))


def live_connections() -> set[int] | None:
    """Ids of the FUSE connections that exist (fusectl lists every one, in any mount namespace);
    None when fusectl cannot be read."""
    try:
        ensure_fusectl()
        if not os.path.ismount(FUSECTL):  # an empty directory would make every connection look dead
            return None
        return {int(n) for n in os.listdir(FUSECTL) if n.isdigit()}
    except OSError:
        return None


class FuseStats:
    """The kernel side: load, attach, and read cumulative per-(connection, opcode) stats."""

    def __init__(self, conn: int = 0, max_ops: int | None = None):
        self.obj = BpfObject.open("fuse", rodata={"target_conn": conn},
                                  max_entries={"ops": max_ops} if max_ops else None)
        self.obj.attach_all()
        self.ops = self.obj.maps["ops"]
        self.max_ops = self.ops.max_entries
        self.removed = 0  # (connection, opcode) pairs of dead connections taken out of `ops`

    def snapshot(self) -> dict[tuple[int, int], dict]:
        """Cumulative stats of the connections that exist; the pairs of dead ones are removed
        from the map, which would otherwise fill up (a bench run mounts ~40 times)."""
        rows = self.ops.batch()
        live = live_connections()  # listed after the map is read: a pair read is of a listed or dead conn
        out = {}
        for key, val in rows:
            if live is not None and key.conn not in live:
                if self.ops.delete(key):
                    self.removed += 1
                continue
            d = {f: getattr(val, f) for f in FIELDS}
            d["hist"] = list(val.hist)
            out[(key.conn, key.opcode)] = d
        return out

    def untracked(self) -> int:
        """Requests not counted since load because `ops` was full."""
        m = self.obj.maps["untracked"]
        return sum(m.cpu_values(m.lookup(0)))

    def close(self) -> None:
        if self.obj:
            self.obj.close()
            self.obj = None


def delta(now: dict, before: dict) -> dict[tuple[int, int], dict]:
    out = {}
    for k, v in now.items():
        b = before.get(k)
        if b is None or v["count"] < b["count"]:  # new, or a reused connection id counting afresh
            d = dict(v)
        else:
            d = {f: v[f] - b[f] for f in FIELDS}
            d["hist"] = [x - y for x, y in zip(v["hist"], b["hist"])]
        if d["count"]:
            out[k] = d
    return out


def by_opcode(d: dict[tuple[int, int], dict], conn: int | None = None) -> dict[str, int]:
    """Request counts by opcode name (of one connection, or all)."""
    out: dict[str, int] = {}
    for (c, op), v in d.items():
        if conn is None or c == conn:
            out[opcode_name(op)] = out.get(opcode_name(op), 0) + v["count"]
    return out


class FuseTraceExporter(Exporter):
    name = "fuse"
    domain = "fuse"

    def __init__(self, mount: str | None = None, max_ops: int | None = None):
        self.mount = mount
        self.max_ops = max_ops
        self.conn = 0
        if mount:
            conn = connection_of(mount)
            if conn is None:
                raise ValueError(f"{os.path.abspath(mount)} is not a fuse mount")
            self.conn = conn
        self.stats: FuseStats | None = None
        self.prev: dict = {}
        self.totals: dict = {}
        self.untracked = 0

    def open(self) -> None:
        self.stats = FuseStats(self.conn, self.max_ops)

    def _mount_names(self) -> dict[int, str]:
        return {conn: mp for mp, (conn, _t) in fuse_mounts().items()}

    def collect(self, elapsed_s: float) -> list[dict]:
        now = self.stats.snapshot()
        untracked = self.stats.untracked()
        if untracked > self.untracked:
            print(f"bpfscope fuse: {untracked - self.untracked} requests not counted: the map of "
                  f"(mount, opcode) pairs is full ({self.stats.max_ops} live pairs)", file=sys.stderr)
        self.untracked = untracked
        d = delta(now, self.prev)
        self.prev = self.totals = now
        names = self._mount_names()
        self.names = names
        out = []
        for (conn, op), v in sorted(d.items(), key=lambda kv: -kv[1]["count"]):
            out.append(make_record(
                "fuse", "fuse_op", labels={"mount": names.get(conn, f"conn{conn}"), "connection": str(conn),
                                           "opcode": opcode_name(op)},
                values={"count": v["count"], "errors": v["errors"], "request_bytes": v["request_bytes"],
                        "reply_bytes": v["reply_bytes"], "rate_per_s": round(v["count"] / max(elapsed_s, 1e-9), 3),
                        "avg_us": round(v["total_ns"] / v["count"] / 1000, 3),
                        "p50_us": quantile_ns(v["hist"], 0.5) / 1000, "p99_us": quantile_ns(v["hist"], 0.99) / 1000,
                        **hist_values(v["hist"])}))
        return out

    def table(self, records: list[dict]) -> Table:
        t = Table(title="FUSE requests (per interval; latency = kernel send to end)", title_justify="left")
        for col, just in (("MOUNT", "left"), ("OPCODE", "left"), ("COUNT", "right"), ("ERR", "right"),
                          ("REQ B", "right"), ("REPLY B", "right"), ("AVG us", "right"), ("P99 us", "right")):
            t.add_column(col, justify=just)
        for r in records:
            v = r["values"]
            t.add_row(r["labels"]["mount"], r["labels"]["opcode"], f"{v['count']:,}", f"{v['errors']:,}",
                      f"{v['request_bytes']:,}", f"{v['reply_bytes']:,}", f"{v['avg_us']:.1f}", f"<{v['p99_us']:.0f}")
        return t

    def metrics(self):
        names = getattr(self, "names", {})
        labels = ["mount", "opcode"]
        req = CounterMetricFamily("bpfscope_fuse_requests", "FUSE requests that ended", labels=labels)
        err = CounterMetricFamily("bpfscope_fuse_errors", "FUSE requests answered with an error", labels=labels)
        byt = CounterMetricFamily("bpfscope_fuse_bytes", "FUSE request and reply bytes",
                                  labels=labels + ["direction"])
        lat = HistogramMetricFamily("bpfscope_fuse_latency_seconds", "FUSE request latency, kernel send to end",
                                    labels=labels)
        for (conn, op), v in self.totals.items():
            lv = [names.get(conn, f"conn{conn}"), opcode_name(op)]
            req.add_metric(lv, v["count"])
            err.add_metric(lv, v["errors"])
            byt.add_metric(lv + ["request"], v["request_bytes"])
            byt.add_metric(lv + ["reply"], v["reply_bytes"])
            buckets, acc = [], 0
            for i, n in enumerate(v["hist"]):
                acc += n
                buckets.append((repr(2 ** (i + 1) / 1e9), acc))
            buckets[-1] = ("+Inf", acc)
            lat.add_metric(lv, buckets, v["total_ns"] / 1e9)
        lost = CounterMetricFamily("bpfscope_fuse_untracked_requests", "FUSE requests not counted: the map of "
                                   "(mount, opcode) pairs was full")
        lost.add_metric([], self.untracked)
        yield from (req, err, byt, lat, lost)

    def close(self) -> None:
        if self.stats:
            self.stats.close()
            self.stats = None

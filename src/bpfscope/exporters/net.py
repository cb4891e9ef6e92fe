"""bpfscope net: every TCP connection with its owner, direction and tcp_sock internals.

Kernel side: bpf/net.bpf.c, read through net_kernel.NetKernel. Each interval:
- a snapshot of every TCP socket (iter/tcp) -> one `tcp_conn` record per connection,
  with per-interval send/receive rates from the previous snapshot;
- the ring buffer's records since the last interval -> `tcp_close` (always: lifetime and
  totals), and with --events `tcp_connect`, `tcp_accept`, `tcp_retrans`,
  `tcp_reset_sent`, `tcp_reset_recv`, `tcp_cong_state`, `tcp_slow_start` (left it or
  back in it), `tcp_rcvq_full` (the receive window closed: the application does not read);
- with --drops, packets freed per drop reason and interval (`pkt_drops`, the reason
  named from kernel BTF) and one `pkt_drop` per dropped IP packet with its addresses
  and ports (from its socket when it has one, else from its headers);
- with --latency, per layer stage (receive: device -> L2 -> TCP -> application; send:
  application -> TCP -> device queue -> driver) the time of 1 in --sample packets
  (`net_latency`: count, mean, p50/p90/p99 from log2 histograms), a Prometheus histogram
  per stage, and per connection the mean time per stage (`lat_<stage>_mean_ns` in its
  `tcp_conn` record; RX/TX columns of the table).
How the owner of a socket is found: docs/design/net-attribution.md.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..decode import drop_reason_name, drop_reasons, port_class, tcp_ca_state_name, tcp_state_name
from ..schema import make_record
from .base import Exporter
from .net_kernel import (
    DIRECTIONS,
    LATENCY_STAGES,
    NET_EV_ACCEPT,
    NET_EV_CLOSE,
    NET_EV_CONG,
    NET_EV_CONNECT,
    NET_EV_DROP,
    NET_EV_RCVQ_FULL,
    NET_EV_RETRANS,
    NET_EV_RST_RECV,
    NET_EV_RST_SENT,
    NET_EV_SLOW_START,
    OWNER_SOURCES,
    TCP_CLOSE,
    TCP_LISTEN,
    NetKernel,
)

EVENT_KINDS = {NET_EV_CLOSE: "tcp_close", NET_EV_CONNECT: "tcp_connect", NET_EV_ACCEPT: "tcp_accept",
               NET_EV_RETRANS: "tcp_retrans", NET_EV_RST_SENT: "tcp_reset_sent", NET_EV_RST_RECV: "tcp_reset_recv",
               NET_EV_CONG: "tcp_cong_state", NET_EV_RCVQ_FULL: "tcp_rcvq_full", NET_EV_DROP: "pkt_drop",
               NET_EV_SLOW_START: "tcp_slow_start"}
IPPROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}

# --sort keys: the value a row is ordered by (largest first, except pid and age)
SORT_KEYS = {
    "rate": lambda r: r["values"].get("tx_bytes_per_s", 0) + r["values"].get("rx_bytes_per_s", 0),
    "tx": lambda r: r["values"]["bytes_acked"],
    "rx": lambda r: r["values"]["bytes_received"],
    "bytes": lambda r: r["values"]["bytes_acked"] + r["values"]["bytes_received"],
    "rtt": lambda r: r["values"]["srtt_us"],
    "cwnd": lambda r: r["values"]["snd_cwnd"],
    "retrans": lambda r: r["values"]["total_retrans"],
    "age": lambda r: r["values"].get("age_s", 0.0),
    "pid": lambda r: -(r["pid"] or 0),
}
# the values of struct net_tcp_info that a tcp_conn / tcp_close record carries as they are
_TCP_VALUES = ("bytes_acked", "bytes_received", "bytes_sent", "bytes_retrans", "segs_in", "segs_out", "snd_wnd",
               "rcv_wnd", "snd_cwnd", "snd_ssthresh", "srtt_us", "rttvar_us", "min_rtt_us", "total_retrans",
               "retrans_out", "lost_out", "sacked_out", "packets_out", "mss")


@dataclass
class ConnFilter:
    """What the user asked to see; a row passes when every given field matches."""

    pid: int | None = None
    comm: str | None = None
    port: int | None = None
    addr: str | None = None
    state: int | None = None
    direction: str | None = None

    def __post_init__(self):
        self._net = ipaddress.ip_network(self.addr, strict=False) if self.addr else None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.pid, self.comm, self.port, self.addr, self.state, self.direction))

    def match(self, pid: int | None, comm: str | None, info: dict, direction: str) -> bool:
        if self.pid is not None and pid != self.pid:
            return False
        if self.comm is not None and comm != self.comm:
            return False
        if self.port is not None and self.port not in (info["sport"], info["dport"]):
            return False
        if self._net is not None and not any(_in_net(a, self._net) for a in (info["saddr"], info["daddr"])):
            return False
        if self.state is not None and info["state"] != self.state:
            return False
        if self.direction is not None and direction != self.direction:
            return False
        return True


def _in_net(addr: str, net) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if ip.version != net.version and getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return ip.version == net.version and ip in net


class Owners:
    """Fills in what the kernel could not know: the direction of sockets older than
    bpfscope (accepted if a listener has their local port) and the owner of accepted
    sockets nobody has used yet (the listener's owner)."""

    def __init__(self):
        self.listeners: dict[tuple[int, int], dict] = {}

    def learn(self, rows: list[dict]) -> None:
        self.listeners = {(r["netns"], r["sport"]): r for r in rows if r["state"] == TCP_LISTEN}

    def resolve(self, info: dict) -> tuple[int | None, int | None, str | None, str, str]:
        """(pid, tid, comm, direction, owner source) of one socket record."""
        pid, tid, comm = info["pid"] or None, info["tid"] or None, info["comm"] or None
        direction, src = DIRECTIONS.get(info["dir"], "unknown"), OWNER_SOURCES.get(info["owner_src"], "none")
        listener = self.listeners.get((info["netns"], info["sport"]))
        if direction == "unknown" and info["state"] != TCP_LISTEN:
            direction = "in" if listener else "out"
        if pid is None and direction == "in" and listener and listener["pid"]:
            pid, tid, comm, src = listener["pid"], None, listener["comm"] or None, "listener"
        return pid, tid, comm, direction, src


def _identity(info: dict, direction: str, src: str) -> dict[str, str]:
    labels = {
        "conn_id": str(info["cookie"]), "direction": direction, "state": tcp_state_name(info["state"]),
        "family": "ipv4" if info["family"] == 2 else "ipv6", "laddr": info["saddr"], "lport": str(info["sport"]),
        "raddr": info["daddr"], "rport": str(info["dport"]), "owner": src, "netns": str(info["netns"]),
    }
    if not info["cookie"]:  # not a socket: a packet's addresses (a reset or drop without socket)
        for k in ("conn_id", "owner", "state", "direction"):
            labels.pop(k)
    return labels


# (record name, struct net_tcp_info name) of the byte counts of the socket's buffers
_BUF_VALUES = (("sndbuf_bytes", "sndbuf"), ("wmem_queued_bytes", "wmem_queued"), ("rcvbuf_bytes", "rcvbuf"),
               ("rmem_alloc_bytes", "rmem_alloc"), ("send_q_bytes", "send_q"), ("recv_q_bytes", "recv_q"))
_VALUE_NAMES = _TCP_VALUES + tuple(n for n, _ in _BUF_VALUES)
_VALUE_FIELDS = _TCP_VALUES + tuple(f for _, f in _BUF_VALUES)
_get_values = itemgetter(*_VALUE_FIELDS)


def tcp_values(info: dict) -> dict:
    """The measurements of one socket, units in the names."""
    v = dict(zip(_VALUE_NAMES, _get_values(info)))
    v["in_slow_start"] = int(info["snd_cwnd"] < info["snd_ssthresh"])
    v["delivery_rate_bytes_per_s"] = (info["rate_delivered"] * info["mss"] * 1_000_000 // info["rate_interval_us"]
                                      if info["rate_interval_us"] else 0)
    return v


class NetExporter(Exporter):
    name = "net"
    domain = "net"

    def __init__(self, filt: ConnFilter | None = None, sort: str = "rate", top: int = 30, events: bool = False,
                 drops: bool = False, latency_sample: int = 0, all_netns: bool = False, owner_slots: int | None = None):
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r} (have: {', '.join(SORT_KEYS)})")
        self.filt = filt or ConnFilter()
        self.sort = sort
        self.top = top
        self.events = events
        self.drops = drops
        self.latency_sample = latency_sample  # 0: no --latency; else follow 1 packet in N
        self.all_netns = all_netns
        self.owner_slots = owner_slots  # tests only: see NetKernel
        self._lat_prev: list[tuple[list[int], int, int]] | None = None
        self.lat_totals: list[tuple[list[int], int, int]] = []
        self.kernel: NetKernel | None = None
        self.owners = Owners()
        self._prev: dict[int, tuple[int, int]] = {}
        # Prometheus: bounded labels only
        self.conn_counts: Counter[tuple[str, str, str, str]] = Counter()  # state, direction, port class, comm
        self.closed: Counter[str] = Counter()
        self.event_counts: Counter[str] = Counter()
        self.drop_counts: Counter[str] = Counter()
        self.srtts_us: list[int] = []
        self.cwnds: list[int] = []
        self.lost = 0
        self.uncounted: Counter[str] = Counter()  # records counted but not built (records_wanted False)

    def open(self) -> None:
        self._template = make_record("net", "tcp_conn")
        self.kernel = NetKernel(events=self.events, drops=self.drops, latency_sample=self.latency_sample,
                                all_netns=self.all_netns,
                                # counted in the kernel only when nothing filters them (its
                                # counts are per direction, for the whole host)
                                close_records=self.records_wanted or self.filt.active,
                                owner_slots=self.owner_slots).open()
        self._values_of = self.kernel.info.getter(_VALUE_FIELDS)
        index = self.kernel.info.index
        self._state_i = index["state"]
        self._srtt_i, self._cwnd_i, self._acked_i, self._received_i = (
            index[k] for k in ("srtt_us", "snd_cwnd", "bytes_acked", "bytes_received"))
        self._rate_inputs = self.kernel.info.getter(("snd_cwnd", "snd_ssthresh", "rate_delivered", "mss",
                                                     "rate_interval_us"))
        if self.drops:
            drop_reasons()  # read the kernel's enum once, before the first interval

    def close(self) -> None:
        if self.kernel:
            self.kernel.close()
            self.kernel = None

    # --- records ---
    def _record(self, kind: str, ts: int, pid, tid, comm, labels: dict, values: dict) -> dict:
        """make_record's dict without its per-call host lookup (thousands per interval)."""
        rec = dict(self._template)
        rec.update(kind=kind, ts=ts, pid=pid, tid=tid, comm=comm, labels=labels, values=values)
        return rec

    def _tuple_values(self, tup: tuple) -> dict:
        """tcp_values() straight from a struct net_tcp_info tuple (no full dict per socket)."""
        values = dict(zip(_VALUE_NAMES, self._values_of(tup)))
        cwnd, ssthresh, delivered, mss, interval = self._rate_inputs(tup)
        values["in_slow_start"] = int(cwnd < ssthresh)
        values["delivery_rate_bytes_per_s"] = delivered * mss * 1_000_000 // interval if interval else 0
        return values

    def _conn_records(self, tuples: list[tuple], ts: int, elapsed_s: float,
                      conn_lat: dict[int, tuple[list[int], list[int]]]) -> list[dict]:
        """One tcp_conn per socket of the snapshot, built from its tuple: only the identity
        fields become a dict (10,000 connections: time and memory are per field)."""
        out, prev, now = [], {}, time.time_ns()
        counts: Counter[tuple[str, str, str, str]] = Counter()
        srtts, cwnds = [], []
        identity, boot = self.kernel.info.identity, self.kernel.boot_offset_ns
        state_i, srtt_i, cwnd_i = self._state_i, self._srtt_i, self._cwnd_i
        acked_i, received_i = self._acked_i, self._received_i
        for tup in tuples:
            if tup[state_i] == TCP_LISTEN and self.filt.state != TCP_LISTEN:
                continue
            info = identity(tup)
            pid, tid, comm, direction, src = self.owners.resolve(info)
            service_port = info["dport"] if direction == "out" else info["sport"]
            counts[(tcp_state_name(info["state"]), direction, port_class(service_port), comm or "unknown")] += 1
            srtts.append(tup[srtt_i])
            cwnds.append(tup[cwnd_i])
            acked, received = tup[acked_i], tup[received_i]
            prev[info["cookie"]] = (acked, received)
            if not self.filt.match(pid, comm, info, direction):
                continue
            values = self._tuple_values(tup)
            last = self._prev.get(info["cookie"])
            if last and elapsed_s > 0:
                values["tx_bytes_per_s"] = round((acked - last[0]) / elapsed_s, 1)
                values["rx_bytes_per_s"] = round((received - last[1]) / elapsed_s, 1)
            if info["start_ns"]:
                start = info["start_ns"] + boot
                values["start_ts_ns"] = start
                values["age_s"] = round((now - start) / 1e9, 3)
            lat = conn_lat.get(info["cookie"])
            if lat:
                for (_, stage), total, n in zip(LATENCY_STAGES, *lat):
                    if n:
                        values[f"lat_{stage}_mean_ns"] = total // n
                        values[f"lat_{stage}_samples"] = n
            labels = _identity(info, direction, src)
            labels["ca_state"] = tcp_ca_state_name(info["ca_state"])
            out.append(self._record("tcp_conn", ts, pid, tid, comm, labels, values))
        self._prev = prev
        self.conn_counts, self.srtts_us, self.cwnds = counts, srtts, cwnds
        return out

    def _close_record(self, ev: dict) -> dict | None:
        """tcp_close, the one record per connection: built from the event's tuple without
        the full dict (short connections make tens of thousands per second)."""
        tup = ev["tup"]
        info = self.kernel.info.identity(tup)
        pid, tid, comm, direction, src = self.owners.resolve(info)
        self.event_counts["tcp_close"] += 1
        self.closed[direction] += 1
        info["state"] = TCP_CLOSE  # what the record says: --state CLOSE keeps it, --state ESTABLISHED not
        if not self.filt.match(pid, comm, info, direction):
            return None
        labels = _identity(info, direction, src)
        labels["state"] = "CLOSE"
        labels["old_state"] = tcp_state_name(ev["arg"])
        values = self._tuple_values(tup) if info["is_tcp"] else {}
        if info["start_ns"]:
            start = info["start_ns"] + self.kernel.boot_offset_ns
            values["start_ts_ns"] = start
            values["lifetime_ns"] = max(ev["ts_ns"] - start, 0)
        return self._record("tcp_close", ev["ts_ns"], pid, tid, comm, labels, values)

    def _event_record(self, ev: dict) -> dict | None:
        if ev["type"] == NET_EV_CLOSE:
            return self._close_record(ev)
        info, etype = self.kernel.event_info(ev), ev["type"]
        kind = EVENT_KINDS.get(etype, f"net_event_{etype}")
        if etype == NET_EV_DROP:
            pid, tid, comm, direction, src = None, None, None, "unknown", "none"
        else:
            pid, tid, comm, direction, src = self.owners.resolve(info)
        self.event_counts[kind] += 1
        if etype == NET_EV_CLOSE:
            self.closed[direction] += 1
        if not self.filt.match(pid, comm, info, direction):
            return None
        labels = _identity(info, direction, src)
        values: dict = {}
        if etype == NET_EV_DROP:
            labels["reason"] = drop_reason_name(ev["arg"])
            labels["protocol"] = IPPROTO.get(ev["arg2"], str(ev["arg2"]))
            for k in ("conn_id", "owner", "direction", "state"):
                labels.pop(k, None)  # a packet, not a connection
            if info["cookie"] or info["state"]:
                labels["state"] = tcp_state_name(info["state"]) if ev["arg2"] == 6 else str(info["state"])
            values["count"] = 1
        else:
            if info["is_tcp"]:
                values = tcp_values(info)
            if etype == NET_EV_CLOSE:
                labels["state"] = "CLOSE"
                labels["old_state"] = tcp_state_name(ev["arg"])
                if info["start_ns"]:
                    values["start_ts_ns"] = info["start_ns"]
                    values["lifetime_ns"] = max(ev["ts_ns"] - info["start_ns"], 0)
            elif etype == NET_EV_CONG:
                labels["old_ca_state"] = tcp_ca_state_name(info["ca_state"])
                labels["ca_state"] = tcp_ca_state_name(ev["arg"])
            elif etype in (NET_EV_CONNECT, NET_EV_ACCEPT):
                labels["state"] = "ESTABLISHED"
                if ev["arg2"]:
                    values["handshake_us"] = ev["arg2"]
            elif etype in (NET_EV_RETRANS, NET_EV_RST_SENT, NET_EV_RST_RECV):
                if ev["arg"]:
                    labels["state"] = tcp_state_name(ev["arg"])
            elif etype == NET_EV_SLOW_START:  # values: cwnd and ssthresh when it happened
                labels["slow_start"] = "left" if ev["arg2"] else "entered"
            elif etype == NET_EV_RCVQ_FULL:  # the window this host offers closed
                values["unread_bytes"] = ev["arg"]
        return self._record(kind, ev["ts_ns"], pid, tid, comm, labels, values)

    def _drop_records(self, ts: int) -> list[dict]:
        out = []
        for reason, n in sorted(self.kernel.take_drops().items()):
            name = drop_reason_name(reason)
            self.drop_counts[name] += n
            out.append(self._record("pkt_drops", ts, None, None, None, {"reason": name}, {"count": n}))
        return out

    def _latency_records(self, ts: int) -> list[dict]:
        """One record per layer stage with this interval's sampled packets: count, mean and
        percentiles (the upper bound of the log2 bucket the percentile falls in)."""
        totals = self.kernel.latency_histograms()
        prev = self._lat_prev or [([0] * len(s), 0, 0) for s, _, _ in totals]
        self._lat_prev = self.lat_totals = totals
        out = []
        for (path, stage), (slots, count, total), (pslots, pcount, ptotal) in zip(LATENCY_STAGES, totals, prev):
            n = count - pcount
            if n <= 0:
                continue
            delta = [a - b for a, b in zip(slots, pslots)]
            values = {"count": n, "mean_ns": (total - ptotal) // n, "sample_1_in": self.latency_sample}
            for q in (50, 90, 99):
                values[f"p{q}_ns"] = log2_quantile(delta, q / 100)
            out.append(self._record("net_latency", ts, None, None, None, {"path": path, "stage": stage}, values))
        return out

    def collect(self, elapsed_s: float) -> list[dict]:
        ts = time.time_ns()
        tuples = self.kernel.snapshot_tuples()
        identity = self.kernel.info.identity
        self.owners.learn([identity(t) for t in tuples if t[self._state_i] == TCP_LISTEN])
        out = self._conn_records(tuples, ts, elapsed_s, self.kernel.connection_latency() if self.latency_sample else {})
        self.uncounted = Counter()
        if not self.kernel.close_records:  # the kernel counted the closes (no record per connection)
            closed = Counter({d: n for d, n in self.kernel.closed_counts().items() if n})
            self.uncounted["tcp_close"] = sum((closed - self.closed).values())
            self.event_counts["tcp_close"] += self.uncounted["tcp_close"]
            self.closed = closed
        for ev in self.kernel.take_events(full=False):
            rec = self._event_record(ev)
            if rec is not None:
                out.append(rec)
        if self.drops:
            out.extend(self._drop_records(ts))
        if self.latency_sample:
            out.extend(self._latency_records(ts))
        self.lost = self.kernel.lost_events()
        return out

    # --- live view ---
    def table(self, records: list[dict]) -> Table | Group:
        """The connections; below them, with --events, --drops or --latency, what those saw."""
        conns = sorted((r for r in records if r["kind"] == "tcp_conn"), key=SORT_KEYS[self.sort],
                       reverse=self.sort not in ("pid",))
        shown = conns[: self.top] if self.top else conns
        t = Table(title=f"TCP connections ({len(shown)} of {len(conns)}, by {self.sort}; totals and internals: --json)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
        if self.all_netns:
            t.add_column("NETNS", justify="right", no_wrap=True)
        for col, just in (("PID", "right"), ("COMM", "left"), ("DIR", "left"), ("LOCAL", "left"), ("REMOTE", "left"),
                          ("STATE", "left"), ("TX/s", "right"), ("RX/s", "right"), ("RTTms", "right"),
                          ("CWND", "right"), ("RETR", "right")):
            t.add_column(col, justify=just, no_wrap=True)
        if self.latency_sample:  # mean time of sampled packets through the stack, per direction
            t.add_column("RX-LATus", justify="right", no_wrap=True)
            t.add_column("TX-LATus", justify="right", no_wrap=True)
        for r in shown:
            lab, v = r["labels"], r["values"]
            cells = [str(r["pid"] or "-"), Text(r["comm"] or "-"), lab["direction"], f"{lab['laddr']}:{lab['lport']}",
                     f"{lab['raddr']}:{lab['rport']}", _SHORT_STATES.get(lab["state"], lab["state"]),
                     _human(v.get("tx_bytes_per_s")), _human(v.get("rx_bytes_per_s")), f"{v['srtt_us'] / 1000:.2f}",
                     str(v["snd_cwnd"]), str(v["total_retrans"])]
            if self.latency_sample:
                cells += [_path_latency_us(v, "rx"), _path_latency_us(v, "tx")]
            if self.all_netns:
                cells.insert(0, lab["netns"])
            t.add_row(*cells)
        others = Counter(r["kind"] for r in records if r["kind"] != "tcp_conn") + self.uncounted
        if others:
            t.caption = "  ".join(f"{k}: {n}" for k, n in sorted(others.items()))
        parts = [t]
        if self.events:
            parts.append(self._events_table(records))
        if self.drops:
            parts.append(self._drops_table(records))
        if self.latency_sample:
            parts.append(self._latency_table(records))
        return Group(*parts) if len(parts) > 1 else t

    def _events_table(self, records: list[dict]) -> Table:
        """The interval's last events, newest first (every one is in --json)."""
        evs = sorted((r for r in records if r["kind"] in _EVENT_ROWS), key=lambda r: r["ts"], reverse=True)
        shown = evs[: self.top or None]
        t = _small_table(f"Events ({len(shown)} of {len(evs)} this interval, newest first)",
                         "TIME", "EVENT", "PID", "COMM", "LOCAL", "REMOTE", "DETAIL")
        for r in shown:
            lab = r["labels"]
            t.add_row(time.strftime("%H:%M:%S", time.localtime(r["ts"] / 1e9)), _EVENT_ROWS[r["kind"]],
                      str(r["pid"] or "-"), Text(r["comm"] or "-"), f"{lab.get('laddr')}:{lab.get('lport')}",
                      f"{lab.get('raddr')}:{lab.get('rport')}", _event_detail(r))
        return t

    def _drops_table(self, records: list[dict]) -> Table:
        """Packets dropped per kernel drop reason: this interval and since the start."""
        now = {r["labels"]["reason"]: r["values"]["count"] for r in records if r["kind"] == "pkt_drops"}
        t = _small_table("Drops by reason", "REASON", "PACKETS", "TOTAL")
        for reason, total in sorted(self.drop_counts.items(), key=lambda kv: (-now.get(kv[0], 0), -kv[1])):
            t.add_row(reason, str(now.get(reason, 0)), str(total))
        return t

    def _latency_table(self, records: list[dict]) -> Table:
        """Time per sampled packet between layers this interval (log2 bucket upper bounds)."""
        by_stage = {(r["labels"]["path"], r["labels"]["stage"]): r["values"] for r in records
                    if r["kind"] == "net_latency"}
        t = _small_table(f"Time between layers, 1 packet in {self.latency_sample} (us)",
                         "PATH", "STAGE", "PACKETS", "MEAN", "P50", "P90", "P99")
        for path, stage in LATENCY_STAGES:
            v = by_stage.get((path, stage))
            if v:
                t.add_row(path, stage, str(v["count"]), *(f"{v[k] / 1000:.1f}" for k in
                                                          ("mean_ns", "p50_ns", "p90_ns", "p99_ns")))
            else:
                t.add_row(path, stage, "0", "-", "-", "-", "-")
        return t

    def metrics(self):
        g = GaugeMetricFamily("bpfscope_net_connections", "TCP connections in the last snapshot",
                              labels=["state", "direction", "port", "comm"])
        for key, n in self.conn_counts.items():
            g.add_metric(list(key), n)
        yield g
        c = CounterMetricFamily("bpfscope_net_closed_connections", "TCP connections closed", labels=["direction"])
        for direction, n in self.closed.items():
            c.add_metric([direction], n)
        yield c
        e = CounterMetricFamily("bpfscope_net_events", "TCP events seen, by kind", labels=["kind"])
        for kind, n in self.event_counts.items():
            e.add_metric([kind], n)
        yield e
        d = CounterMetricFamily("bpfscope_net_drops", "Packets freed with a drop reason", labels=["reason"])
        for reason, n in self.drop_counts.items():
            d.add_metric([reason], n)
        yield d
        lost = CounterMetricFamily("bpfscope_net_lost_events", "Ring-buffer records lost (buffer full)")
        lost.add_metric([], self.lost)
        yield lost
        yield _histogram("bpfscope_net_srtt_seconds", "Smoothed RTT of the connections in the last snapshot",
                         [x / 1e6 for x in self.srtts_us], (1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0))
        if self.lat_totals:
            h = HistogramMetricFamily("bpfscope_net_layer_latency_seconds",
                                      f"Time per sampled packet (1 in {self.latency_sample}) between layers",
                                      labels=["path", "stage"])
            for (path, stage), (slots, count, total) in zip(LATENCY_STAGES, self.lat_totals):
                acc, buckets = 0, []
                for i, n in enumerate(slots[:-1]):
                    acc += n
                    buckets.append((repr((1 << (i + 1)) / 1e9), acc))
                buckets.append(("+Inf", count))
                h.add_metric([path, stage], buckets, sum_value=total / 1e9)
            yield h
        yield _histogram("bpfscope_net_cwnd_segments", "Congestion window of the connections in the last snapshot",
                         self.cwnds, (1, 2, 4, 10, 20, 50, 100, 200, 500, 1000))


def _path_latency_us(values: dict, path: str) -> str:
    """The sum of a connection's mean stage times along one path (rx or tx), in us."""
    means = [values.get(f"lat_{stage}_mean_ns") for p, stage in LATENCY_STAGES if p == path]
    known = [m for m in means if m is not None]
    return f"{sum(known) / 1000:.1f}" if known else "-"


def log2_quantile(slots: list[int], q: float) -> int:
    """The q-quantile of a log2 histogram (slot i counts values in [2^i, 2^(i+1))), as the
    upper bound of the slot it falls in: never below the true value, at most 2x above."""
    total = sum(slots)
    if not total:
        return 0
    rank, acc = q * total, 0
    for i, n in enumerate(slots):
        acc += n
        if acc >= rank:
            return 1 << (i + 1)
    return 1 << len(slots)


def _histogram(name: str, help_: str, samples: list, bounds: tuple) -> HistogramMetricFamily:
    buckets, acc = [], 0
    ordered = sorted(samples)
    i = 0
    for b in bounds:
        while i < len(ordered) and ordered[i] <= b:
            i += 1
        acc = i
        buckets.append((repr(float(b)), acc))
    buckets.append(("+Inf", len(ordered)))
    h = HistogramMetricFamily(name, help_)
    h.add_metric([], buckets, sum_value=float(sum(ordered)))
    return h


# ss's short state names, for the table only (records carry the kernel's names)
_EVENT_ROWS = {"tcp_close": "close", "tcp_connect": "connect", "tcp_accept": "accept", "tcp_retrans": "retransmit",
               "tcp_reset_sent": "reset sent", "tcp_reset_recv": "reset received", "tcp_cong_state": "congestion",
               "tcp_rcvq_full": "receive queue full", "pkt_drop": "drop", "tcp_slow_start": "slow start"}


def _event_detail(r: dict) -> str:
    lab, v = r["labels"], r["values"]
    if r["kind"] == "tcp_cong_state":
        return f"{lab['old_ca_state']} -> {lab['ca_state']}"
    if r["kind"] == "pkt_drop":
        return f"{lab['reason']} ({lab['protocol']})"
    if r["kind"] == "tcp_slow_start":
        return f"{lab['slow_start']}: cwnd {v.get('snd_cwnd')} ssthresh {v.get('snd_ssthresh')}"
    if r["kind"] == "tcp_close":
        life = v.get("lifetime_ns")
        return f"after {life / 1e9:.3f} s" if life is not None else ""
    if r["kind"] == "tcp_rcvq_full":
        return f"window closed, {v.get('unread_bytes')} bytes unread"
    if r["kind"] in ("tcp_connect", "tcp_accept") and "handshake_us" in v:
        return f"handshake {v['handshake_us']} us"
    return lab.get("state", "")


_NUMBER_COLUMNS = ("PID", "PACKETS", "TOTAL", "MEAN", "P50", "P90", "P99")


def _small_table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
              collapse_padding=True)
    for col in columns:
        t.add_column(col, no_wrap=True, justify="right" if col in _NUMBER_COLUMNS else "left")
    return t


_SHORT_STATES = {"ESTABLISHED": "ESTAB", "SYN_SENT": "SYN-SENT", "SYN_RECV": "SYN-RECV", "FIN_WAIT1": "FIN-WAIT-1",
                 "FIN_WAIT2": "FIN-WAIT-2", "CLOSE_WAIT": "CLOSE-WAIT", "LAST_ACK": "LAST-ACK"}


def _human(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)

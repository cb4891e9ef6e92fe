"""The kernel side of `bpfscope net` as plain Python rows (bpf/net.bpf.c, bpf/include/net.h).

    with NetKernel(events=True, drops=True) as k:
        conns = k.snapshot()          # one dict per TCP socket, owners included
        evs = k.take_events()         # (type, ts_ns, arg, arg2, cur_pid, info dict)
        per_reason = k.take_drops()   # {reason: count} since the last call

The snapshot is one run of the iter/tcp program: the kernel writes one fixed-size
`struct net_tcp_info` per socket and Python decodes the whole buffer with one
struct.iter_unpack (format built from the object's BTF), so there is no per-socket
syscall. Owners of sockets that no hook has named yet (sockets older than bpfscope)
are filled in by the iter/task_file program, run only when such sockets exist.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import struct
import sys
import threading
import time
from collections import deque
from operator import itemgetter

from ..bpf import BpfObject
from ..bpf import libbpf as L
from ..netns import call_in, network_namespaces, own_namespace
from .net_ringbuf import FixedRingReader

NET_EV_CLOSE, NET_EV_CONNECT, NET_EV_ACCEPT, NET_EV_RETRANS = 1, 2, 3, 4
NET_EV_RST_SENT, NET_EV_RST_RECV, NET_EV_CONG, NET_EV_RCVQ_FULL, NET_EV_DROP, NET_EV_SLOW_START = 5, 6, 7, 8, 9, 10
DIRECTIONS = {0: "unknown", 1: "out", 2: "in"}
OWNER_SOURCES = {0: "none", 1: "syscall", 2: "io", 3: "fd_table"}
TCP_CLOSE, TCP_LISTEN = 7, 10

CORE_PROGRAMS = ["net_state", "net_send", "net_recv", "net_iter_tcp", "net_iter_owner"]
ESSENTIAL_PROGRAMS = ("net_state", "net_iter_tcp")  # the rest degrade: owners come later, or an option is off
EVENT_PROGRAMS = ["net_retransmit", "net_send_reset", "net_receive_reset", "net_cong_state", "net_tcp_seen"]
DROP_PROGRAMS = ["net_kfree_skb"]
LATENCY_PROGRAMS = ["net_lat_rx_dev", "net_lat_rx_gro", "net_lat_rx_entry", "net_lat_rx_list", "net_lat_rx_l2",
                    "net_lat_rx_tcp", "net_lat_rx_app", "net_lat_tx_send", "net_lat_tx_queue", "net_lat_tx_xmit"]
# enum net_lat_stage: (path, stage label)
LATENCY_STAGES = (("rx", "device_to_l2"), ("rx", "l2_to_tcp"), ("rx", "tcp_to_app"),
                  ("tx", "app_to_tcp"), ("tx", "tcp_to_device"), ("tx", "device_to_driver"))
MAX_PENDING_EVENTS = 200_000
# struct net_tcp_info fields (besides comm and the addresses) that name a socket and its owner
IDENTITY_FIELDS = ("cookie", "start_ns", "pid", "tid", "sport", "dport", "family", "state", "dir", "owner_src",
                   "ca_state", "is_tcp", "netns")

_CODES = {ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_uint16: "H", ctypes.c_int16: "h",
          ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q", ctypes.c_int64: "q",
          ctypes.c_char: "c"}


def _is_pad(name: str) -> bool:
    return name.startswith(("_pad", "pad"))


def struct_codec(ctype: type, merge_arrays: bool = False) -> tuple[struct.Struct, list]:
    """A struct.Struct with the same layout as a BTF-built ctypes structure, and the name of
    each unpacked item. Padding is skipped ('x'); arrays become bytes. With merge_arrays,
    adjacent arrays come out as one bytes item named by a tuple of (name, size) (fewer
    Python objects per record: that is what unpacking costs)."""
    items: list[list] = []  # [code, size]; code "s" for bytes
    names: list = []
    for name, ft in ctype._fields_:
        size = ctypes.sizeof(ft)
        if _is_pad(name):
            items.append(["x", size])
        elif issubclass(ft, ctypes.Array):
            if merge_arrays and items and items[-1][0] == "s":
                items[-1][1] += size
                names[-1] = names[-1] + ((name, size),)
            else:
                items.append(["s", size])
                names.append(((name, size),) if merge_arrays else name)
        elif ft in _CODES:
            items.append([_CODES[ft], 1])
            names.append(name)
        else:
            raise TypeError(f"{ctype.__name__}.{name}: no struct code for {ft}")
    fmt = "<" + "".join(code if code not in "sx" else f"{n}{code}" for code, n in items)
    codec = struct.Struct(fmt)
    if codec.size != ctypes.sizeof(ctype):
        raise TypeError(f"{ctype.__name__}: struct size {codec.size} != ctypes size {ctypes.sizeof(ctype)}")
    return codec, names


def boot_to_epoch_ns() -> int:
    """Add this to a CLOCK_BOOTTIME timestamp (bpf_ktime_get_boot_ns) to get Unix time."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class InfoDecoder:
    """struct net_tcp_info bytes -> tuples (fast, every field a number or bytes) -> dicts
    with addresses and strings decoded (addresses and names repeat: they are cached)."""

    def __init__(self, ctype: type):
        self.codec, names = struct_codec(ctype, merge_arrays=True)
        self.size = self.codec.size
        self.index, self._names, self._blobs = {}, [], []
        for i, n in enumerate(names):
            if isinstance(n, tuple):  # adjacent arrays (comm, saddr, daddr) in one bytes item
                pos, parts = 0, []
                for name, size in n:
                    parts.append((name, pos, pos + size))
                    pos += size
                self._blobs.append((f"_blob{i}", parts))
                self._names.append(f"_blob{i}")
            else:
                self.index[n] = i
                self._names.append(n)
        self._blob_pos = {name: i for i, name in enumerate(self._names) if name.startswith("_blob")}
        self._identity_of = self.getter(IDENTITY_FIELDS)
        self._addr_cache: dict[int, dict[bytes, str]] = {}  # per address family
        self._comm_cache: dict[bytes, str] = {}

    def getter(self, names: tuple[str, ...]):
        """A function tuple -> the values of these fields, in this order (one C call)."""
        return itemgetter(*(self.index[n] for n in names))

    def identity(self, tup: tuple) -> dict:
        """Only the fields that name a socket and its owner (what filters and labels need),
        cheaper than as_dict for the many close records of short connections."""
        row = dict(zip(IDENTITY_FIELDS, self._identity_of(tup)))
        fam = row["family"]
        for key, parts in self._blobs:
            blob = tup[self._blob_pos[key]]
            for name, a, b in parts:
                raw = blob[a:b]
                if name == "comm":
                    row[name] = self._comm(raw)
                else:
                    row[name] = self._addr(fam, raw)
        return row

    def _addr(self, family: int, raw: bytes) -> str:
        cache = self._addr_cache.setdefault(family, {})
        s = cache.get(raw)
        if s is None:
            from ..decode import inet_addr

            if len(cache) > 100_000:
                cache.clear()
            s = cache[raw] = inet_addr(raw, family)
        return s

    def as_dict(self, tup: tuple) -> dict:
        row = dict(zip(self._names, tup))
        for key, parts in self._blobs:
            blob = row.pop(key)
            for name, a, b in parts:
                row[name] = blob[a:b]
        # addresses and names repeat (one server, many peers): decode each once
        cache = self._addr_cache.get(row["family"])
        if cache is not None and (s := cache.get(row["saddr"])) is not None and (d := cache.get(row["daddr"])):
            row["saddr"], row["daddr"] = s, d
        else:
            row["saddr"] = self._addr(row["family"], row["saddr"])
            row["daddr"] = self._addr(row["family"], row["daddr"])
        row["comm"] = self._comm(row["comm"])
        return row

    def _comm(self, raw: bytes) -> str:
        comm = self._comm_cache.get(raw)
        if comm is None:
            if len(self._comm_cache) > 100_000:
                self._comm_cache.clear()
            comm = self._comm_cache[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
        return comm


class NetKernel:
    """Loads net.bpf.o with the programs the options need and reads it."""

    def __init__(self, events: bool = False, drops: bool = False, latency_sample: int = 0, all_netns: bool = False,
                 close_records: bool = True, owner_slots: int | None = None):
        self.events_on = events
        self.close_records = close_records  # False: closes only counted per direction (closed_counts)
        self.all_netns = all_netns  # snapshot every network namespace, not only the exporter's
        self._own_netns = own_namespace()
        self.drops_on = drops
        self.latency_sample = latency_sample  # 0: no --latency
        # owner slots (a power of two; None: the object's NET_OWNER_SLOTS). Tests use a few
        # to make sockets share slots and take the socket-storage fallback.
        self.owner_slots = owner_slots
        self.missing: list[str] = []  # programs this kernel refused
        self.obj: BpfObject | None = None
        self.ring: FixedRingReader | None = None
        self._pending: deque = deque()
        self._pending_records = 0
        self._pending_lock = threading.Lock()
        self.events_overflow = 0  # records we could not keep in Python (consumer too slow)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._need_owner_pass = True
        self.boot_offset_ns = boot_to_epoch_ns()

    # --- life cycle ---
    def _load(self, only: list[str]) -> BpfObject:
        """Load the programs asked for; a program this kernel refuses (a tracepoint it lacks,
        an older signature) is left out with one line on stderr, unless the snapshot or the
        close records need it."""
        rodata = {"emit_events": self.events_on, "latency_sample": max(self.latency_sample, 1),
                  "close_records": self.close_records, "latency_on": bool(self.latency_sample)}
        sizes = {}
        if self.owner_slots:
            if self.owner_slots & (self.owner_slots - 1):
                raise ValueError(f"owner_slots {self.owner_slots}: not a power of two")
            rodata["owner_mask"], sizes["owner_slots"] = self.owner_slots - 1, self.owner_slots
        while True:
            try:
                return BpfObject.open("net", rodata=rodata, max_entries=sizes, only=only)
            except L.BpfError as exc:
                failed = re.findall(r"prog '(\w+)'", exc.log or "")
                bad = failed[-1] if failed else None
                if bad is None or bad not in only or bad in ESSENTIAL_PROGRAMS:
                    raise
                print(f"bpfscope: this kernel refused {bad} (left out): {str(exc).splitlines()[0]}", file=sys.stderr)
                self.missing.append(bad)
                only = [p for p in only if p != bad]

    def open(self) -> NetKernel:
        only = (CORE_PROGRAMS + (EVENT_PROGRAMS if self.events_on else []) + (DROP_PROGRAMS if self.drops_on else [])
                + (LATENCY_PROGRAMS if self.latency_sample else []))
        self.obj = self._load(only)
        for name in only:
            if name in self.missing:
                continue
            prog = self.obj.programs[name]
            if not prog.section.startswith("iter/"):
                prog.attach()
        self.info = InfoDecoder(self.obj.struct("net_tcp_info"))
        self._tcp_link = self.obj.programs["net_iter_tcp"].attach_iter()
        # with --latency each snapshot record is a net_tcp_info and the socket's net_conn_lat
        self._snap_codec, self._conn_lat = self.info.codec, {}
        if self.latency_sample:
            t, n = self.obj.struct("net_conn_lat"), len(LATENCY_STAGES)
            if t.sum_ns.offset != 0 or t.count.offset != 8 * n:  # the layout the codec below assumes
                raise TypeError("struct net_conn_lat: unexpected layout")
            self._snap_codec = struct.Struct(f"{self.info.codec.format}{n}Q{n}I{ctypes.sizeof(t) - 12 * n}x")
        ev_t = self.obj.struct("net_event")
        # the head's field order is fixed by net.h; its size is checked against BTF here
        head = "QIIII"
        if ev_t.info.offset != struct.calcsize("<" + head):
            raise TypeError(f"struct net_event: info at {ev_t.info.offset}")
        rb = self.obj.maps["events"]
        self.ring = FixedRingReader(rb.fd, rb.max_entries, ctypes.sizeof(ev_t))
        pad = self.ring.stride - 8 - ctypes.sizeof(ev_t)
        tail = ctypes.sizeof(ev_t) - ev_t.info.offset - self.info.size
        self._ev_codec = struct.Struct(f"<8x{head}{self.info.codec.format[1:]}{tail + pad}x")
        self._poller = threading.Thread(target=self._poll, name="bpfscope-net-ringbuf", daemon=True)
        self._poller.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=2)
            self._poller = None
        if self.ring:
            self.ring.close()
            self.ring = None
        if self.obj:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> NetKernel:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the ring buffer, drained by a thread so the kernel side never waits for an interval ---
    def _drain(self) -> None:
        blob = self.ring.drain()
        if blob:
            with self._pending_lock:
                if self._pending_records >= MAX_PENDING_EVENTS:
                    self.events_overflow += len(blob) // self.ring.stride
                    return
                self._pending.append(blob)
                self._pending_records += len(blob) // self.ring.stride

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._drain()

    def take_events(self, full: bool = True) -> list[dict]:
        """Every ring-buffer record since the last call, oldest first: type, ts_ns (Unix),
        arg, arg2, cur_pid, `tup` (the struct net_tcp_info tuple, times CLOCK_BOOTTIME) and,
        with full, `info` (InfoDecoder.as_dict of it, times in Unix ns)."""
        self._drain()
        with self._pending_lock:
            blobs, self._pending, self._pending_records = list(self._pending), deque(), 0
        out, off = [], self.boot_offset_ns
        for blob in blobs:
            for tup in self._ev_codec.iter_unpack(blob):
                ev = {"type": tup[1], "ts_ns": tup[0] + off, "arg": tup[2], "arg2": tup[3], "cur_pid": tup[4],
                      "tup": tup[5:]}
                if full:
                    ev["info"] = self.event_info(ev)
                out.append(ev)
        return out

    def event_info(self, ev: dict) -> dict:
        info = self.info.as_dict(ev["tup"])
        if info["start_ns"]:
            info["start_ns"] += self.boot_offset_ns
        return info

    def closed_counts(self) -> dict[str, int]:
        """{direction: connections closed} since load, when close records are off."""
        m = self.obj.maps["closes"]
        return {name: sum(int(getattr(c, "value", c)) for c in m.cpu_values(m.lookup(d)))
                for d, name in DIRECTIONS.items()}

    def lost_events(self) -> int:
        m = self.obj.maps["lost"]
        return sum(m.cpu_values(m.lookup(0))) + self.events_overflow

    def latency_histograms(self) -> list[tuple[list[int], int, int]]:
        """Per stage (enum net_lat_stage order): (log2 slot counts, count, sum_ns), cumulative
        since the programs were loaded, summed over CPUs."""
        m = self.obj.maps["lat_hist"]
        out = []
        for stage in range(len(LATENCY_STAGES)):
            slots, count, total = None, 0, 0
            for h in m.cpu_values(m.lookup(stage)):
                cur = list(h.slots)
                slots = cur if slots is None else [a + b for a, b in zip(slots, cur)]
                count += h.count
                total += h.sum_ns
            out.append((slots, count, total))
        return out

    def connection_latency(self) -> dict[int, tuple[list[int], list[int]]]:
        """{socket cookie: (sum_ns per stage, samples per stage)} of every socket of the last
        snapshot that had a sampled packet (cumulative over its life)."""
        return self._conn_lat

    def _iter_fds(self, link, name: str) -> list[int]:
        """Iterator fds to read: this network namespace's, and with all_netns every other's
        (each created inside its namespace: iter/tcp walks the creator's)."""
        fds = [L.check_int(L.bpf_iter_create(link.fd), f"create iterator {name}")]
        if self.all_netns:
            others = [path for ino, path in network_namespaces().items() if ino != self._own_netns]
            fds += [fd for fd in call_in(others, lambda: L.check_int(L.bpf_iter_create(link.fd), name)) if fd]
        return fds

    def take_drops(self) -> dict[int, int]:
        """{drop reason: packets} since the last call (read and deleted in one batch)."""
        m = self.obj.maps["drops"]
        return {int(k.value if hasattr(k, "value") else k): sum(int(getattr(c, "value", c)) for c in m.cpu_values(v))
                for k, v in m.batch(delete=True)}

    # --- the snapshot ---
    def fill_owners(self) -> None:
        """Name the owners of sockets that no hook has seen (walks every task's file table)."""
        if "net_iter_owner" not in self.missing:
            self.obj.programs["net_iter_owner"].run_iter()

    def snapshot_tuples(self) -> list[tuple]:
        """Every full TCP socket of this network namespace as a tuple of struct net_tcp_info
        fields (self.info.index names them; times are CLOCK_BOOTTIME).

        The kernel fills the iterator's buffer while Python unpacks the previous chunk:
        os.read releases the GIL, so a reader thread overlaps the two."""
        if self._need_owner_pass:
            self.fill_owners()
        fds = self._iter_fds(self._tcp_link, "net_iter_tcp")
        chunks: queue.SimpleQueue = queue.SimpleQueue()

        def reader() -> None:
            try:
                for fd in fds:
                    while chunk := os.read(fd, 1 << 20):
                        chunks.put(chunk)
            except OSError as exc:
                chunks.put(exc)
            finally:
                chunks.put(None)

        thread = threading.Thread(target=reader, name="bpfscope-net-iter", daemon=True)
        thread.start()
        out: list[tuple] = []
        rest, size, unpack = b"", self._snap_codec.size, self._snap_codec.iter_unpack
        try:
            while (chunk := chunks.get()) is not None:
                if isinstance(chunk, OSError):
                    raise chunk
                buf = rest + chunk if rest else chunk
                usable = len(buf) - len(buf) % size
                out.extend(unpack(memoryview(buf)[:usable]))
                rest = buf[usable:]
        finally:
            thread.join()
            for fd in fds:
                os.close(fd)
        if self.latency_sample:
            out = self._split_latency(out)
        # a socket no hook has named yet: look in the fd tables before the next snapshot
        pid_i, state_i = self.info.index["pid"], self.info.index["state"]
        self._need_owner_pass = any(t[pid_i] == 0 and t[state_i] != TCP_LISTEN for t in out)
        return out

    def _split_latency(self, records: list[tuple]) -> list[tuple]:
        """Records of net_tcp_info + net_conn_lat -> net_tcp_info tuples; the latency sums of
        sockets that have some go to connection_latency()."""
        k, n, cookie_i = len(self.info.codec.unpack(bytes(self.info.size))), len(LATENCY_STAGES), self.info.index["cookie"]
        lat, out = {}, []
        for rec in records:
            out.append(rec[:k])
            if any(rec[k + n:]):
                lat[rec[cookie_i]] = (list(rec[k:k + n]), list(rec[k + n:]))
        self._conn_lat = lat
        return out

    def snapshot(self) -> list[dict]:
        """Every full TCP socket of this network namespace, with owner and internals."""
        rows = [self.info.as_dict(t) for t in self.snapshot_tuples()]
        for r in rows:
            if r["start_ns"]:
                r["start_ns"] += self.boot_offset_ns
        return rows

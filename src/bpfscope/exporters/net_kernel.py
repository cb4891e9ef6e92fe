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
import struct
import threading
import time
from collections import deque

from ..bpf import BpfObject, RingBuffer
from ..decode import AF_INET

NET_EV_CLOSE, NET_EV_CONNECT, NET_EV_ACCEPT, NET_EV_RETRANS = 1, 2, 3, 4
NET_EV_RST_SENT, NET_EV_RST_RECV, NET_EV_CONG, NET_EV_RCVQ_FULL, NET_EV_DROP = 5, 6, 7, 8, 9
DIRECTIONS = {0: "unknown", 1: "out", 2: "in"}
OWNER_SOURCES = {0: "none", 1: "syscall", 2: "io", 3: "fd_table"}
TCP_LISTEN = 10

CORE_PROGRAMS = ["net_state", "net_send", "net_recv", "net_iter_tcp", "net_iter_owner"]
EVENT_PROGRAMS = ["net_retransmit", "net_send_reset", "net_receive_reset", "net_cong_state", "net_rcvq_full"]
DROP_PROGRAMS = ["net_kfree_skb"]
MAX_PENDING_EVENTS = 200_000

_CODES = {ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_uint16: "H", ctypes.c_int16: "h",
          ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q", ctypes.c_int64: "q",
          ctypes.c_char: "c"}


def struct_codec(ctype: type) -> tuple[struct.Struct, list[str]]:
    """A struct.Struct with the same layout as a BTF-built ctypes structure, and the field
    names (arrays become bytes; padding fields are named `_pad*`)."""
    fmt, names = "<", []
    for name, ft in ctype._fields_:
        if issubclass(ft, ctypes.Array):
            fmt += f"{ctypes.sizeof(ft)}s"
        elif ft in _CODES:
            fmt += _CODES[ft]
        else:
            raise TypeError(f"{ctype.__name__}.{name}: no struct code for {ft}")
        names.append(name)
    codec = struct.Struct(fmt)
    if codec.size != ctypes.sizeof(ctype):
        raise TypeError(f"{ctype.__name__}: struct size {codec.size} != ctypes size {ctypes.sizeof(ctype)}")
    return codec, names


def boot_to_epoch_ns() -> int:
    """Add this to a CLOCK_BOOTTIME timestamp (bpf_ktime_get_boot_ns) to get Unix time."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class InfoDecoder:
    """struct net_tcp_info bytes -> dicts with addresses and strings decoded."""

    def __init__(self, ctype: type):
        self.codec, names = struct_codec(ctype)
        self.names = names
        self._keep = [i for i, n in enumerate(names) if not n.startswith("_") and not n.startswith("pad")]
        self.size = self.codec.size

    def rows(self, data: bytes | memoryview) -> list[dict]:
        from ..decode import inet_addr

        names, keep = self.names, self._keep
        out = []
        for tup in self.codec.iter_unpack(data):
            row = {names[i]: tup[i] for i in keep}
            fam = row["family"]
            if fam == AF_INET:
                row["saddr"] = ".".join(map(str, row["saddr"][:4]))
                row["daddr"] = ".".join(map(str, row["daddr"][:4]))
            else:
                row["saddr"] = inet_addr(row["saddr"], fam)
                row["daddr"] = inet_addr(row["daddr"], fam)
            row["comm"] = row["comm"].split(b"\0", 1)[0].decode(errors="replace")
            out.append(row)
        return out

    def one(self, data: bytes | memoryview) -> dict:
        return self.rows(data[: self.size])[0]


class NetKernel:
    """Loads net.bpf.o with the programs the options need and reads it."""

    def __init__(self, events: bool = False, drops: bool = False):
        self.events_on = events
        self.drops_on = drops
        self.obj: BpfObject | None = None
        self.rb: RingBuffer | None = None
        self._pending: deque = deque()
        self._pending_lock = threading.Lock()
        self.events_overflow = 0  # records we could not keep in Python (consumer too slow)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._need_owner_pass = True
        self.boot_offset_ns = boot_to_epoch_ns()

    # --- life cycle ---
    def open(self) -> "NetKernel":
        only = CORE_PROGRAMS + (EVENT_PROGRAMS if self.events_on else []) + (DROP_PROGRAMS if self.drops_on else [])
        self.obj = BpfObject.open("net", rodata={"emit_events": self.events_on}, only=only)
        for name in only:
            prog = self.obj.programs[name]
            if not prog.section.startswith("iter/"):
                prog.attach()
        self.info = InfoDecoder(self.obj.struct("net_tcp_info"))
        ev_t = self.obj.struct("net_event")
        self._ev_head = struct.Struct("<QIIII")
        # the head's field order is fixed by net.h; its size is checked against BTF here
        self._ev_info_off = getattr(ev_t, "info").offset
        if self._ev_info_off != self._ev_head.size:
            raise TypeError(f"struct net_event: info at {self._ev_info_off}, expected {self._ev_head.size}")
        self.rb = RingBuffer(self.obj.maps["events"], self._on_event)
        self._poller = threading.Thread(target=self._poll, name="bpfscope-net-ringbuf", daemon=True)
        self._poller.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=2)
            self._poller = None
        if self.rb:
            self.rb.close()
            self.rb = None
        if self.obj:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "NetKernel":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the ring buffer, drained by a thread so the kernel side never waits for an interval ---
    def _on_event(self, raw: bytes) -> None:
        with self._pending_lock:
            if len(self._pending) >= MAX_PENDING_EVENTS:
                self.events_overflow += 1
                return
            self._pending.append(raw)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.rb.poll(100)

    def take_events(self) -> list[dict]:
        """Every ring-buffer record since the last call, decoded, oldest first."""
        with self._pending_lock:
            raws, self._pending = list(self._pending), deque()
        out = []
        for raw in raws:
            ts, etype, arg, arg2, cur_pid = self._ev_head.unpack_from(raw)
            info = self.info.one(memoryview(raw)[self._ev_info_off:])
            out.append({"type": etype, "ts_ns": ts + self.boot_offset_ns, "arg": arg, "arg2": arg2,
                        "cur_pid": cur_pid, "info": info})
        return out

    def lost_events(self) -> int:
        m = self.obj.maps["lost"]
        return sum(m.cpu_values(m.lookup(0))) + self.events_overflow

    def take_drops(self) -> dict[int, int]:
        """{drop reason: packets} since the last call (read and deleted in one batch)."""
        m = self.obj.maps["drops"]
        return {int(k.value if hasattr(k, "value") else k): sum(int(getattr(c, "value", c)) for c in m.cpu_values(v))
                for k, v in m.batch(delete=True)}

    # --- the snapshot ---
    def fill_owners(self) -> None:
        """Name the owners of sockets that no hook has seen (walks every task's file table)."""
        self.obj.programs["net_iter_owner"].run_iter()

    def snapshot(self) -> list[dict]:
        """Every full TCP socket of this network namespace, with owner and internals."""
        if self._need_owner_pass:
            self.fill_owners()
        data = self.obj.programs["net_iter_tcp"].run_iter()
        rows = self.info.rows(data)
        # a socket no hook has named yet: look in the fd tables before the next snapshot
        self._need_owner_pass = any(r["pid"] == 0 and r["state"] != TCP_LISTEN for r in rows)
        for r in rows:
            if r["start_ns"]:
                r["start_ns"] += self.boot_offset_ns
        return rows

"""bpfscope proc: processes over their life, from the scheduler's point of view.

Kernel side: bpf/proc.bpf.c; one iter/task read per interval dumps every thread
(`proc_row`).

Two modes share the object:
- system-wide (this module, ProcTop): a top-like table of every process, per-interval
  deltas of cumulative counters the kernel keeps per task anyway (sum_exec_runtime,
  sched_info.run_delay, nvcsw/nivcsw) read by the iterator, plus kernel lock waits: no
  scheduler hook and no per-event work in Python;
- portrait (proc_portrait.ProcPortrait, --pid / --comm --follow / -- COMMAND): the
  kernel follows one process tree (fork adds children to `followed`) and also sends its
  lifecycle and state spans through a ring buffer and counts switch reasons per stack,
  futex waits per address and kernel lock waits per lock.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from rich.table import Table
from rich.text import Text

from ..bpf import BpfError, BpfObject
from ..bpf.perf import perf_event_open_task_switches
from ..decode import c_string
from ..schema import make_record
from .base import Exporter

STATES = ("running", "runnable", "sleeping", "iowait", "disk", "stopped", "other")  # PROC_* of proc.h
PAGE = os.sysconf("SC_PAGE_SIZE")
SORT_KEYS = {"cpu": "running_ns", "runq": "runnable_ns", "vcsw": "vcsw", "ivcsw": "ivcsw", "rss": "rss_bytes",
             "lock": "lock_wait_ns", "threads": "threads", "pid": "pid"}
# system-wide: the kernel's own counters are read by the iterator; only waits are hooked
TOP_PROGRAMS = ("proc_lock_begin", "proc_lock_end")
FUTEX_PROGRAMS = ("proc_futex_enter", "proc_futex_exit")
# follow: one scheduler hook, on the followed threads' own context-switch perf events
# (proc_switch_out, attached per thread, last); wake-ups and switch-ins are read from the
# kernel's sched_info. SWITCH_TP: the same on sched_switch for the whole host (the fallback)
FOLLOW_PROGRAMS = ("proc_fork", "proc_exec", "proc_exit", "proc_lock_begin", "proc_lock_end", "proc_switch_out")
SWITCH_TP = "proc_switch"


def open_object(follow: bool, timeline: bool = True, stacks: bool = True, futex: bool = True,
                roots: tuple[int, ...] = (), switch_hook: str = "perf") -> BpfObject:
    """Load proc.bpf.o and attach what the mode needs. The iterators are run, not attached.
    futex (system-wide only): the futex syscall tracepoints; enabling any syscall tracepoint
    sends every system call on the host through the kernel's slower traced path (measured:
    ~4%). Follow mode needs none: a followed thread's futex waits are read at switch-out.
    switch_hook (follow): "perf", a perf event on each followed thread (inherited by the
    threads and children they create); "tp_btf", sched_switch for every task of the host
    (also used when this kernel refuses the perf events)."""
    obj = BpfObject.open("proc", rodata={"follow": follow, "timeline": timeline, "stacks": stacks,
                                         "self_tgid": os.getpid()},
                         max_entries={"follow_bits": pid_max() // 64 + 1})
    try:
        for tgid in roots:  # followed before any program is attached: a link means "following"
            follow_tgid(obj, tgid)
        if not follow:
            for name in TOP_PROGRAMS + (FUTEX_PROGRAMS if futex else ()):
                obj.programs[name].attach()
            return obj
        for name in FOLLOW_PROGRAMS[:-1]:
            obj.programs[name].attach()
        if switch_hook == "perf":
            try:
                follow_switches(obj, set(roots))
                return obj
            except BpfError as e:
                if obj.links[len(FOLLOW_PROGRAMS) - 1:]:
                    raise
                print(f"bpfscope proc: {e}; following with sched_switch for every task instead", file=sys.stderr)
        obj.programs[SWITCH_TP].attach()
    except BaseException:
        obj.close()
        raise
    return obj


def threads_of(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def follow_switches(obj: BpfObject, roots: set[int]) -> None:
    """proc_switch_out on a context-switches perf event of every thread of the followed
    processes (the roots and their descendants). Threads and processes they create from
    now on inherit the event; one created while these were being opened is found by the
    next scan of /proc (a thread given two events is counted once: proc.bpf.c)."""
    from .proc_portrait import descendants

    prog = obj.programs["proc_switch_out"]
    opened: set[int] = set()
    while True:
        new = {tid for pid in descendants(roots) for tid in threads_of(pid)} - opened
        if not new:
            return
        for tid in sorted(new):
            opened.add(tid)
            try:
                fd = perf_event_open_task_switches(tid)
            except BpfError as e:
                if e.errno == errno.ESRCH:  # exited meanwhile
                    continue
                raise
            prog.attach_perf_fd(fd, f"the context-switches event of thread {tid}")


def pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22  # the kernel's ceiling (PID_MAX_LIMIT on 64-bit)


def follow_tgid(obj: BpfObject, tgid: int) -> None:
    """Set tgid's bit in the kernel's bitmap of followed processes."""
    bits = obj.maps["follow_bits"]
    word = bits.lookup(tgid // 64)
    bits.update(tgid // 64, (word.value if word is not None else 0) | (1 << (tgid % 64)))


LCB_SPIN, LCB_READ, LCB_WRITE, LCB_RT, LCB_PERCPU, LCB_MUTEX = 1, 2, 4, 8, 16, 32  # PROC_LCB_* of proc.h


def lock_type(flags: int) -> str:
    """LCB_F_* of lock:contention_begin -> a lock type name."""
    rw = "write" if flags & LCB_WRITE else "read"
    if flags & LCB_PERCPU:
        return f"percpu-rwsem-{rw}"
    if flags & LCB_MUTEX:
        return "mutex"
    if flags & LCB_RT:
        return "rtmutex"
    if flags & LCB_SPIN:
        return f"rwlock-{rw}" if flags & (LCB_READ | LCB_WRITE) else "spinlock"
    if flags & (LCB_READ | LCB_WRITE):
        return f"rwsem-{rw}"
    return "other"


def task_state(kstate: int) -> str:
    """task->__state as a word (what ps shows as R, S, D, T, I)."""
    if kstate == 0:
        return "running"
    if kstate & 1:
        return "sleeping"
    if kstate & 2:
        return "idle" if kstate & 0x400 else "disk"
    if kstate & (4 | 8):
        return "stopped"
    return "other"


def read_rows(obj: BpfObject) -> list:
    """Every accounted thread (proc_row), in one iterator read."""
    row_t = obj.struct("proc_row")
    data = obj.programs["proc_dump"].run_iter()
    size = ctypes.sizeof(row_t)
    return [row_t.from_buffer_copy(data, off) for off in range(0, len(data) - size + 1, size)]


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of a process (the 0:: line of /proc/PID/cgroup)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def in_cgroup(path: str | None, wanted: str) -> bool:
    wanted = "/" + wanted.strip("/")
    return path is not None and (wanted == "/" or path == wanted or path.startswith(wanted + "/"))


@dataclass
class ProcRow:
    """One process over one interval: the sum of its threads' deltas."""
    pid: int
    comm: str = ""
    ns: list[int] = field(default_factory=lambda: [0] * len(STATES))
    vcsw: int = 0
    ivcsw: int = 0
    lock_wait_ns: int = 0
    futex_wait_ns: int = 0
    threads: int = 0
    state: str = "sleeping"
    kthread: bool = False


class ProcTop(Exporter):
    """The system-wide table: per process and interval, time on CPU and waiting for one,
    switches (the kernel's own per-task counters, read by the iterator: no scheduler hook
    at all), kernel lock waits (and futex waits with futex=True)."""

    name = "proc"
    domain = "proc"

    def __init__(self, comm: str | None = None, cgroup: str | None = None, sort: str = "cpu", top: int = 30,
                 include_kthreads: bool = True, futex: bool = False):
        self.futex = futex
        self.first_read = True
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}")
        self.comm, self.cgroup, self.sort, self.top = comm, cgroup, sort, top
        self.include_kthreads = include_kthreads
        self.obj: BpfObject | None = None
        self.prev: dict[tuple[int, int], tuple] = {}  # (tid, start_time) -> cumulative counters
        self.totals: Counter[tuple[str, str]] = Counter()  # (comm, state) -> ns, for Prometheus
        self.switches: Counter[tuple[str, str]] = Counter()  # (comm, voluntary|involuntary)
        self.lock_wait: Counter[tuple[str, str]] = Counter()  # (comm, futex | kernel lock type)
        self.comms: dict[int, str] = {}  # tgid -> comm at the last read
        self.elapsed_s = 1.0

    def open(self) -> None:
        self.obj = open_object(follow=False, futex=self.futex)
        self.first_read = True
        procs = self._deltas(read_rows(self.obj))  # threads alive now: the baseline of the first interval
        self.comms = {p.pid: p.comm for p in procs.values()}
        self._kernel_lock_waits()  # the same baseline for the waits per lock type

    def _kernel_lock_waits(self) -> Counter[tuple[int, str]]:
        """(tgid, lock type) -> ns of kernel lock waits since the last read (`klocks`: per
        thread and LCB_F_* flags, system-wide)."""
        out: Counter[tuple[int, str]] = Counter()
        for key, val in self.obj.maps["klocks"].batch(delete=True):
            out[(key.tgid, lock_type(key.flags))] += val.ns
        return out

    def _deltas(self, rows) -> dict[int, ProcRow]:
        procs: dict[int, ProcRow] = {}
        seen: dict[tuple[int, int], tuple] = {}
        for r in rows:
            key = (r.tid, r.start_time)
            cur = (r.sum_exec_ns, r.run_delay_ns, r.knvcsw, r.knivcsw, r.lock_ns, r.futex_ns)
            seen[key] = cur
            before = self.prev.get(key, (0,) * len(cur))  # a new thread: all of its life so far
            if key not in self.prev and self.first_read:
                before = cur  # the first read is the baseline, not an interval
            p = procs.get(r.tgid)
            if p is None:
                p = procs[r.tgid] = ProcRow(pid=r.tgid, kthread=bool(r.kthread))
            if r.tid == r.tgid or not p.comm:
                p.comm = c_string(bytes(r.comm))
            if r.tid == r.tgid:
                p.state = task_state(r.kstate)
            p.threads += 1
            d = [max(c - b, 0) for c, b in zip(cur, before)]
            p.ns[0] += d[0]
            p.ns[1] += d[1]
            p.vcsw += d[2]
            p.ivcsw += d[3]
            p.lock_wait_ns += d[4]
            p.futex_wait_ns += d[5]
        self.prev = seen  # threads gone since are forgotten
        self.first_read = False
        return procs

    def collect(self, elapsed_s: float) -> list[dict]:
        self.elapsed_s = max(elapsed_s, 1e-9)
        procs = self._deltas(read_rows(self.obj))
        before, self.comms = self.comms, {p.pid: p.comm for p in procs.values()}
        for (tgid, ltype), ns in self._kernel_lock_waits().items():
            # a process gone before this read is named by the one before
            self.lock_wait[(self.comms.get(tgid) or before.get(tgid, "?"), ltype)] += ns
        for p in procs.values():
            for i, st in enumerate(STATES[:2]):
                if p.ns[i]:
                    self.totals[(p.comm, st)] += p.ns[i]
            self.switches[(p.comm, "voluntary")] += p.vcsw
            self.switches[(p.comm, "involuntary")] += p.ivcsw
            if p.futex_wait_ns:
                self.lock_wait[(p.comm, "futex")] += p.futex_wait_ns
        chosen = [p for p in procs.values()
                  if (self.include_kthreads or not p.kthread) and (not self.comm or p.comm == self.comm)]
        if self.cgroup:
            chosen = [p for p in chosen if in_cgroup(cgroup_of(p.pid), self.cgroup)]
        key = SORT_KEYS[self.sort]
        rss: dict[int, int] = {}

        def rss_of(pid: int) -> int:
            # read once: the row shows the value it was sorted by (a process gone holds none)
            if pid not in rss:
                rss[pid] = rss_bytes(pid) or 0
            return rss[pid]

        def sort_value(p: ProcRow):
            if key == "pid":
                return -p.pid
            if key == "rss_bytes":
                return rss_of(p.pid)
            if key == "threads":
                return p.threads
            if key == "lock_wait_ns":
                return p.lock_wait_ns + p.futex_wait_ns
            if key in ("vcsw", "ivcsw"):
                return getattr(p, key)
            return p.ns[STATES.index(key[:-3])]

        chosen.sort(key=sort_value, reverse=True)
        if self.top:
            chosen = chosen[: self.top]
        records, ts = [], None
        per_s = self.elapsed_s
        for p in chosen:
            values = {"running_ns": p.ns[0], "runnable_ns": p.ns[1]}
            values.update(cpu_pct=round(100.0 * p.ns[0] / (per_s * 1e9), 2),
                          vcsw_per_s=round(p.vcsw / per_s, 2), ivcsw_per_s=round(p.ivcsw / per_s, 2),
                          threads=p.threads, lock_wait_ns=p.lock_wait_ns, futex_wait_ns=p.futex_wait_ns)
            # every row keeps the field (a table of them has no holes)
            values["rss_bytes"] = rss_of(p.pid)
            rec = make_record("proc", "process", ts=ts, pid=p.pid, comm=p.comm,
                              labels={"state": p.state}, values=values)
            ts = rec["ts"]
            records.append(rec)
        return records

    def table(self, records: list[dict]) -> Table:
        t = Table(title=f"processes (top {self.top or 'all'} by {self.sort}, per interval)", title_justify="left")
        for col in ("PID", "COMM", "CPU%", "ONCPU", "RUNQ", "VCSW/s", "IVCSW/s", "RSS", "THR", "STATE", "LOCKWAIT"):
            t.add_column(col, justify="left" if col in ("COMM", "STATE") else "right")
        for r in records:
            v = r["values"]
            t.add_row(str(r["pid"]), Text(r["comm"] or ""), f"{v['cpu_pct']:.1f}", fmt_ns(v["running_ns"]),
                      fmt_ns(v["runnable_ns"]), f"{v['vcsw_per_s']:,.0f}", f"{v['ivcsw_per_s']:,.0f}",
                      fmt_bytes(v.get("rss_bytes")), str(v["threads"]), r["labels"]["state"],
                      fmt_ns(v["lock_wait_ns"] + v["futex_wait_ns"]))
        return t

    def metrics(self):
        # bounded labels: comm and state (top comms only: a host has few hundred names)
        t = CounterMetricFamily("bpfscope_proc_state_seconds", "Time threads spent per state, by command",
                                labels=["comm", "state"])
        for (comm, st), ns in self.totals.most_common(2000):
            t.add_metric([comm, st], ns / 1e9)
        yield t
        s = CounterMetricFamily("bpfscope_proc_context_switches", "Context switches (switch-outs), by command and kind",
                                labels=["comm", "kind"])
        for (comm, kind), n in self.switches.most_common(1000):
            s.add_metric([comm, kind], n)
        yield s
        w = CounterMetricFamily("bpfscope_proc_lock_wait_seconds", "Time waiting for locks, by command and lock type (futex, or "
                                "the kernel lock's: spinlock, rwlock-*, mutex, rtmutex, rwsem-*, percpu-rwsem-*)",
                                labels=["comm", "lock_type"])
        for (comm, kind), ns in self.lock_wait.most_common(1000):
            w.add_metric([comm, kind], ns / 1e9)
        yield w
        g = GaugeMetricFamily("bpfscope_proc_threads_accounted", "Threads with accounting in the kernel")
        g.add_metric([], len(self.prev))
        yield g

    def close(self) -> None:
        if self.obj:
            self.obj.close()
            self.obj = None


def fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns >= 1e9:
        return f"{ns / 1e9:.2f}s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f}ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.0f}us"
    return f"{int(ns)}ns"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)

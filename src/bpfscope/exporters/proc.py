"""bpfscope proc: processes over their life, from the scheduler's point of view.

Kernel side: bpf/proc.bpf.c. Every thread's time per state (running, runnable,
sleeping, iowait, disk, stopped), its voluntary and involuntary switches, futex waits
and kernel lock waits are accounted in task storage by tp_btf programs on sched_switch
and sched_wakeup; one iter/task read per interval dumps them all (`proc_row`).

Two modes share the object:
- system-wide (this module, ProcTop): a top-like table of every process, per-interval
  deltas of the iterator's cumulative counters, no per-event work in Python;
- portrait (proc_portrait.ProcPortrait, --pid / --comm --follow / -- COMMAND): the
  kernel follows one process tree (fork adds children to `followed`) and also sends its
  lifecycle and state spans through a ring buffer and counts switch reasons per stack,
  futex waits per address and kernel lock waits per lock.
"""

from __future__ import annotations

import ctypes
import os
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from rich.table import Table
from rich.text import Text

from ..bpf import BpfObject
from ..decode import c_string
from ..schema import make_record
from .base import Exporter

STATES = ("running", "runnable", "sleeping", "iowait", "disk", "stopped", "other")  # PROC_* of proc.h
PAGE = os.sysconf("SC_PAGE_SIZE")
SORT_KEYS = {"cpu": "running_ns", "runq": "runnable_ns", "vcsw": "vcsw", "ivcsw": "ivcsw", "rss": "rss_bytes",
             "lock": "lock_wait_ns", "threads": "threads", "pid": "pid"}
# the programs every mode attaches (the iterator is run, not attached)
PROGRAMS = ("proc_switch", "proc_wakeup", "proc_wakeup_new", "proc_futex_enter", "proc_futex_exit",
            "proc_lock_begin", "proc_lock_end")
FOLLOW_PROGRAMS = ("proc_fork", "proc_exec", "proc_exit")


def open_object(follow: bool, timeline: bool = True, stacks: bool = True) -> BpfObject:
    obj = BpfObject.open("proc", rodata={"follow": follow, "timeline": timeline, "stacks": stacks,
                                         "self_tgid": os.getpid()})
    try:
        for name in PROGRAMS + (FOLLOW_PROGRAMS if follow else ()):
            obj.programs[name].attach()
    except BaseException:
        obj.close()
        raise
    return obj


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
    """The system-wide table."""

    name = "proc"
    domain = "proc"

    def __init__(self, comm: str | None = None, cgroup: str | None = None, sort: str = "cpu", top: int = 30,
                 include_kthreads: bool = True):
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}")
        self.comm, self.cgroup, self.sort, self.top = comm, cgroup, sort, top
        self.include_kthreads = include_kthreads
        self.obj: BpfObject | None = None
        self.prev: dict[tuple[int, int], tuple] = {}  # (tid, start_time) -> cumulative counters
        self.totals: Counter[tuple[str, str]] = Counter()  # (comm, state) -> ns, for Prometheus
        self.switches: Counter[tuple[str, str]] = Counter()  # (comm, voluntary|involuntary)
        self.lock_wait: Counter[tuple[str, str]] = Counter()  # (comm, futex|kernel)
        self.elapsed_s = 1.0

    def open(self) -> None:
        self.obj = open_object(follow=False)

    def _deltas(self, rows) -> dict[int, ProcRow]:
        procs: dict[int, ProcRow] = {}
        seen: dict[tuple[int, int], tuple] = {}
        for r in rows:
            key = (r.tid, r.start_time)
            cur = (tuple(r.ns[: len(STATES)]), r.nvcsw, r.nivcsw, r.lock_ns, r.futex_ns)
            seen[key] = cur
            before = self.prev.get(key)
            p = procs.get(r.tgid)
            if p is None:
                p = procs[r.tgid] = ProcRow(pid=r.tgid, kthread=bool(r.kthread))
            if r.tid == r.tgid or not p.comm:
                p.comm = c_string(bytes(r.comm))
            if r.tid == r.tgid:
                p.state = STATES[r.state] if r.state < len(STATES) else "other"
            p.threads += 1
            if before is None:
                before = ((0,) * len(STATES), 0, 0, 0, 0)
            for i in range(len(STATES)):
                p.ns[i] += max(cur[0][i] - before[0][i], 0)
            p.vcsw += max(cur[1] - before[1], 0)
            p.ivcsw += max(cur[2] - before[2], 0)
            p.lock_wait_ns += max(cur[3] - before[3], 0)
            p.futex_wait_ns += max(cur[4] - before[4], 0)
        self.prev = seen  # threads gone since are forgotten
        return procs

    def collect(self, elapsed_s: float) -> list[dict]:
        self.elapsed_s = max(elapsed_s, 1e-9)
        procs = self._deltas(read_rows(self.obj))
        for p in procs.values():
            for i, st in enumerate(STATES):
                if p.ns[i]:
                    self.totals[(p.comm, st)] += p.ns[i]
            self.switches[(p.comm, "voluntary")] += p.vcsw
            self.switches[(p.comm, "involuntary")] += p.ivcsw
            self.lock_wait[(p.comm, "futex")] += p.futex_wait_ns
            self.lock_wait[(p.comm, "kernel")] += p.lock_wait_ns
        chosen = [p for p in procs.values()
                  if (self.include_kthreads or not p.kthread) and (not self.comm or p.comm == self.comm)]
        if self.cgroup:
            chosen = [p for p in chosen if in_cgroup(cgroup_of(p.pid), self.cgroup)]
        key = SORT_KEYS[self.sort]

        def sort_value(p: ProcRow):
            if key == "pid":
                return -p.pid
            if key == "rss_bytes":
                return rss_bytes(p.pid) or 0
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
            values = {f"{st}_ns": p.ns[i] for i, st in enumerate(STATES[:6])}
            values.update(cpu_pct=round(100.0 * p.ns[0] / (per_s * 1e9), 2),
                          vcsw_per_s=round(p.vcsw / per_s, 2), ivcsw_per_s=round(p.ivcsw / per_s, 2),
                          threads=p.threads, lock_wait_ns=p.lock_wait_ns, futex_wait_ns=p.futex_wait_ns)
            rss = rss_bytes(p.pid)
            if rss is not None:
                values["rss_bytes"] = rss
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
        w = CounterMetricFamily("bpfscope_proc_lock_wait_seconds", "Time waiting for locks, by command and lock type",
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


def fmt_ns(ns: int | float | None) -> str:
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

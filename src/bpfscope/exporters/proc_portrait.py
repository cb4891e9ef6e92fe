"""bpfscope proc --pid / --comm --follow / -- COMMAND: the portrait of a process tree.

The kernel follows the tree itself (bpf/proc.bpf.c, follow mode): user space sets the
bits of the roots (and the descendants they already have) in `follow_bits`;
sched_process_fork sets every new child's before it runs. Their threads' switch-outs run
a program on each thread's own context-switches perf event (proc.follow_switches), which
threads and children created later inherit. For followed threads only, the kernel also sends fork,
exec and exit events and every state span (the timeline) through the ring buffer, and
counts switch-outs per (thread, kernel stack, user stack, state, preempted), futex waits
per user address and kernel lock waits per lock. A thread here drains the ring buffer;
each interval reads the iterator and the count maps.

Records (domain proc): thread (cumulative times per state), lifecycle (fork, exec, exit),
thread_state (one span: the timeline format of collector/formats.py), switch_reason,
futex_wait, lock_wait (per interval), resources (per process: CPU%, RSS, I/O bytes from
/proc), and at the end process_summary and thread_summary.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..bpf import BpfObject, RingBuffer
from ..decode import c_string
from ..schema import make_record
from ..symbolize import KERNEL_SUFFIX, Symbolizer
from ..symbolize.kallsyms import DATA, Kallsyms
from .base import Exporter
from .proc import STATES, fmt_bytes, fmt_ns, lock_type, open_object, read_rows

LOST_EVENTS, LOST_STORAGE = 0, 1  # keys of proc.bpf.c `lost`

EV_SPAN, EV_FORK, EV_EXEC, EV_EXIT = 1, 2, 3, 4
EEXIST, ENOMEM = 17, 12
# the scheduler's own frames at switch-out: what a thread blocked on is below them
SCHED_FRAMES = ("__schedule", "schedule", "io_schedule", "preempt_schedule", "__cond_resched", "_cond_resched",
                "bit_wait", "out_of_line_wait_on_bit", "__wait_on_bit", "rwsem_down", "__traceiter", "__bpf_trace",
                "__mutex_lock", "mutex_lock", "rt_mutex_schedule", "do_sched_yield", "__wait_for_common",
                "wait_for_completion", "wait_woken")  # wait_woken: sk_wait_data's, and other sockets' waits
CLK_TCK = os.sysconf("SC_CLK_TCK")
# --pthread: libc function, entry program, has a return probe (the first two are required)
PTHREAD_PROBES = (("pthread_mutex_lock", "pt_mutex_lock", True), ("pthread_mutex_unlock", "pt_unlock", False),
                  ("pthread_rwlock_rdlock", "pt_rdlock", True), ("pthread_rwlock_wrlock", "pt_wrlock", True),
                  ("pthread_rwlock_unlock", "pt_unlock", False), ("pthread_spin_lock", "pt_spin_lock", True),
                  ("pthread_spin_unlock", "pt_unlock", False))
PTHREAD_KINDS = {1: "mutex", 2: "rwlock-read", 3: "rwlock-write", 4: "spin"}  # PROC_PT_*
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
           8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM",
           15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS"}


def exit_status(code: int) -> tuple[int | None, str | None, bool]:
    """task->exit_code -> (exit code, signal name, core dumped), as wait(2) decodes it."""
    sig = code & 0x7F
    if sig:
        return None, SIGNALS.get(sig, f"SIG{sig}"), bool(code & 0x80)
    return (code >> 8) & 0xFF, None, False


def blocked_on(kframes_leaf_first: list[str]) -> str:
    """The first kernel function below the scheduler's own frames."""
    for f in kframes_leaf_first:
        name = f.removesuffix(KERNEL_SUFFIX)
        if not name.startswith(SCHED_FRAMES):
            return name
    return kframes_leaf_first[-1].removesuffix(KERNEL_SUFFIX) if kframes_leaf_first else "?"


def descendants(roots: set[int]) -> set[int]:
    """Processes whose ancestry (from /proc/PID/stat) reaches one of roots."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out = set()
    for pid in parent:
        p, hops = pid, 0
        while p in parent and hops < 64:
            if p in roots:
                out.add(pid)
                break
            p, hops = parent[p], hops + 1
    return out | roots


@dataclass
class ThreadInfo:
    tid: int
    tgid: int
    comm: str = ""
    ptid: int | None = None  # the thread that created it (fork/clone seen)
    start_ns: int = 0  # CLOCK_MONOTONIC
    exit_ns: int | None = None
    ns: list[int] = field(default_factory=lambda: [0] * len(STATES))
    vcsw: int = 0
    ivcsw: int = 0
    lock_ns: int = 0
    lock_count: int = 0
    futex_ns: int = 0
    futex_count: int = 0


@dataclass
class ProcessInfo:
    pid: int
    ppid: int | None = None
    comm: str = ""
    start_ns: int = 0
    exit_ns: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    core: bool = False
    execs: list[str] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    last_cpu: tuple[float, int] | None = None  # (monotonic s, utime+stime ticks)


class ProcPortrait(Exporter):
    name = "proc"
    domain = "proc"

    def __init__(self, pids: list[int] | None = None, command: list[str] | None = None, timeline: bool = True,
                 stacks: bool = True, max_spans: int = 100000, top: int = 30, symbolizer: Symbolizer | None = None,
                 pthread: bool = False):
        self.pthread = pthread
        self.roots = set(pids or [])
        self.command = command
        self.timeline, self.stacks = timeline, stacks
        self.max_spans = max_spans  # timeline records per interval (0: all); the rest are counted
        self.top = top
        self.sym = symbolizer or Symbolizer()
        self.obj: BpfObject | None = None
        self.child: subprocess.Popen | None = None
        self.stop: threading.Event | None = None
        self.clock_offset = time.time_ns() - time.monotonic_ns()  # CLOCK_MONOTONIC -> epoch
        self.threads: dict[int, ThreadInfo] = {}
        self.procs: dict[int, ProcessInfo] = {}
        self.alive: set[int] = set()
        self.pending: list = []  # events from the ring buffer thread, taken by collect()
        self.lock = threading.Lock()
        self.spans_dropped = 0
        self.reasons: Counter[tuple] = Counter()  # (pid, tid, reason, state, blocked_on, frames) -> count
        self.reason_ns: Counter[tuple] = Counter()
        self.waits: dict[tuple, list[int]] = {}  # (kind, pid, tid, addr, flags) -> [count, ns, max_ns]
        self._stack_cache: dict[int, tuple[int, ...]] = {}
        self._kdata: Kallsyms | None = None
        self._rb: RingBuffer | None = None
        self._rb_thread: threading.Thread | None = None
        self._rb_stop = threading.Event()
        self._warm: threading.Thread | None = None  # reads the kernel's symbol tables at open
        self.last_interval: list[dict] = []

    # ---- kernel side ----------------------------------------------------------------------
    def bind(self, stop: threading.Event) -> None:
        self.stop = stop

    def open(self) -> None:
        release = None
        if self.command:
            release = self._spawn()
            self.roots.add(self.child.pid)
        followed = descendants(self.roots)
        for pid in followed:  # their threads get their accounting at their next event
            self.alive.add(pid)
            self.procs.setdefault(pid, ProcessInfo(pid=pid))
        # BPFSCOPE_PROC_SWITCH_HOOK=tp_btf: the fallback hook (sched_switch for every task
        # of the host) on a kernel that takes the per-thread perf events too: to test it
        # and to measure what the per-thread hook saves
        hook = "tp_btf" if os.environ.get("BPFSCOPE_PROC_SWITCH_HOOK") == "tp_btf" else "perf"
        self.obj = open_object(follow=True, timeline=self.timeline, stacks=self.stacks, roots=tuple(followed),
                               switch_hook=hook)
        if self.pthread:
            self._attach_pthread()
        self._rb = RingBuffer(self.obj.maps["events"], self._on_event)
        self._rb_thread = threading.Thread(target=self._poll, name="bpfscope-proc-events", daemon=True)
        self._rb_thread.start()
        # The kernel's symbol tables (~0.3 s each here) are read while the first interval
        # runs (read by the first collect, they made every later sample late). Only now:
        # read before the programs were loaded, the table lacks their own bpf_prog_* frames,
        # which then cannot be told from the observed and named every switch-out after the
        # symbol below them (_einittext).
        self._warm = threading.Thread(target=self._warm_symbols, name="bpfscope-proc-symbols", daemon=True)
        self._warm.start()
        with self.lock:
            # a process that exited before it was followed (a zombie already, or gone while
            # the programs loaded) sends no exit event: not waited for (the run never ended)
            for pid in sorted(self.alive):
                if not running(pid):
                    self.alive.discard(pid)
                    print(f"bpfscope proc: pid {pid} exited before it could be followed", file=sys.stderr)
            if not self.alive and self.stop is not None:
                self.stop.set()
        if release is not None:
            os.write(release, b"\n")  # the command may exec now: it is followed
            os.close(release)
            shutil.rmtree(self._fifo_dir, ignore_errors=True)

    def _warm_symbols(self) -> None:
        if self.stacks:
            self.sym.kallsyms  # noqa: B018 (loads them)
        self._lock_symbol(0)

    def _attach_pthread(self) -> None:
        # Every process's calls trap (uprobes on the shared libc); the kernel keeps only the
        # followed ones. A function this libc lacks is skipped; the mutex pair is required.
        from ..bpf import BpfError
        from .stack import libc_path

        roots = sorted(self.roots)
        lib = libc_path(roots[0] if roots and not self.command else None)
        offsets = symbol_offsets(lib, {func for func, _, _ in PTHREAD_PROBES})
        progs = self.obj.programs
        for i, (func, prog, ret) in enumerate(PTHREAD_PROBES):
            try:
                if func not in offsets:
                    raise BpfError(2, f"{lib} has no {func}")
                # by file offset: libbpf 1.1 refuses names that two symbol versions share
                progs[prog].attach_uprobe(lib, func, offset=offsets[func])
                if ret:
                    progs["pt_lock_return"].attach_uprobe(lib, func, retprobe=True, offset=offsets[func])
            except BpfError:
                if i < 2:
                    raise

    def _spawn(self) -> int:
        # The child waits on a FIFO until its pid is in `followed`, then execs the command:
        # it is followed from the command's first instruction.
        self._fifo_dir = tempfile.mkdtemp(prefix="bpfscope-proc-")
        fifo = os.path.join(self._fifo_dir, "go")
        os.mkfifo(fifo, 0o600)
        w = os.open(fifo, os.O_RDWR)  # O_RDWR: does not wait for the reader
        wrapper = 'read _ < "$1"; shift; exec "$@"'
        self.child = subprocess.Popen(["/bin/sh", "-c", wrapper, "sh", fifo, *self.command])
        return w

    def _poll(self) -> None:
        # Spans do not wake this thread (the kernel submits them with BPF_RB_NO_WAKEUP);
        # lifecycle events do. Every 100 ms at most, whatever is there is drained.
        while not self._rb_stop.is_set():
            self._rb.poll(100)
            self._rb.consume()

    def _on_event(self, raw: bytes) -> None:
        etype = int.from_bytes(raw[:4], "little")
        t = self.obj.struct("proc_span") if etype == EV_SPAN else self.obj.struct("proc_life")
        ev = t.from_buffer_copy(raw[: ctypes.sizeof(t)])
        with self.lock:
            self.pending.append(ev)
            if etype == EV_EXIT and ev.group_dead:
                self.alive.discard(ev.tgid)
            elif etype == EV_FORK and not ev.thread:
                self.alive.add(ev.tgid)
            done = etype == EV_EXIT and not self.alive
        if done and self.stop is not None:
            self.stop.set()  # everything followed has exited: the loop's last interval comes now

    # ---- bookkeeping -------------------------------------------------------------------------
    def _thread(self, tid: int, tgid: int) -> ThreadInfo:
        th = self.threads.get(tid)
        if th is None:
            th = self.threads[tid] = ThreadInfo(tid=tid, tgid=tgid)
            self.procs.setdefault(tgid, ProcessInfo(pid=tgid)).threads.add(tid)
        return th

    def _epoch(self, mono_ns: int) -> int:
        return mono_ns + self.clock_offset

    def _lifecycle(self, ev) -> dict:
        comm = c_string(bytes(ev.comm))
        th = self._thread(ev.tid, ev.tgid)
        th.comm = comm
        proc = self.procs.setdefault(ev.tgid, ProcessInfo(pid=ev.tgid))
        labels: dict[str, str] = {}
        values: dict = {}
        if ev.type == EV_FORK:
            th.ptid, th.start_ns = ev.ptid, ev.start_time
            labels["event"] = "clone_thread" if ev.thread else "fork"
            values["parent_pid"], values["parent_tid"] = ev.ppid, ev.ptid
            if not ev.thread:
                proc.ppid, proc.comm, proc.start_ns = ev.ppid, comm, ev.start_time
        elif ev.type == EV_EXEC:
            name = c_string(bytes(ev.filename))
            labels["event"] = "exec"
            values["filename"] = name
            proc.execs.append(name)
            proc.comm = comm
        else:
            labels["event"] = "exit"
            th.exit_ns = ev.ts
            th.ns = list(ev.ns[: len(STATES)])
            th.vcsw, th.ivcsw = ev.nvcsw, ev.nivcsw
            th.lock_ns, th.lock_count, th.futex_ns, th.futex_count = (ev.lock_ns, ev.lock_count, ev.futex_ns,
                                                                      ev.futex_count)
            code, sig, core = exit_status(ev.exit_code)
            values["thread_lifetime_ns"] = ev.ts - ev.start_time if ev.start_time else None
            if ev.group_dead:
                proc.exit_ns, proc.exit_code, proc.signal, proc.core = ev.ts, code, sig, core
                if proc.ppid is None:
                    proc.ppid = ev.ppid
                if not proc.comm:
                    proc.comm = comm
                start = proc.start_ns or self.threads.get(ev.tgid, th).start_ns or ev.start_time
                values["lifetime_ns"] = ev.ts - start if start else None
            labels["group_exit"] = str(bool(ev.group_dead)).lower()
            if sig:
                labels["signal"] = sig
                values["core_dumped"] = int(core)
            else:
                values["exit_code"] = code
        values = {k: v for k, v in values.items() if v is not None}
        return make_record("proc", "lifecycle", ts=self._epoch(ev.ts), pid=ev.tgid, tid=ev.tid, comm=comm,
                           labels=labels, values=values)

    def _stack(self, stack_id: int) -> tuple[int, ...]:
        ips = self._stack_cache.get(stack_id)
        if ips is None:
            raw = self.obj.maps["stack_traces"].lookup(stack_id)
            ips = () if raw is None else tuple(itertools.takewhile(bool, memoryview(bytes(raw)).cast("Q")))
            self._stack_cache[stack_id] = ips
        return ips

    def _reasons(self, ts: int) -> list[dict]:
        records = []
        for key, val in self.obj.maps["reasons"].batch(delete=True):
            kframes = self.sym.kernel_stack(self._stack(key.kstack)) if key.kstack >= 0 else []
            uframes = self.sym.user_stack(self._maps_pid(key.tgid), self._stack(key.ustack)) if key.ustack >= 0 else []
            state = STATES[key.state] if key.state < len(STATES) else "other"
            if key.preempt or key.state == 1:
                # involuntary: a kernel preemption, or still runnable at schedule() (the
                # return to user space of a task whose slice is over)
                reason, what = "preempted", "preempted"
            else:
                reason, what = "voluntary", blocked_on(kframes)
            frames = tuple(reversed(uframes)) + tuple(reversed(kframes))
            k = (key.tgid, key.tid, reason, state, what, frames)
            self.reasons[k] += val.count
            self.reason_ns[k] += val.ns
            th = self.threads.get(key.tid)
            records.append(make_record("proc", "switch_reason", ts=ts, pid=key.tgid, tid=key.tid,
                                       comm=th.comm if th else None,
                                       labels={"reason": reason, "state": state, "blocked_on": what},
                                       values={"count": val.count, "off_cpu_ns": val.ns}, stack=list(frames) or None))
        return records

    def _maps_pid(self, pid: int) -> int:
        """Whose memory map names this process's addresses: its own while it lives; once it
        has exited, that of the nearest live ancestor it forked from without exec (a fork
        copies the map)."""
        seen = 0
        while not os.path.exists(f"/proc/{pid}/maps") and seen < 16:
            proc = self.procs.get(pid)
            if proc is None or proc.execs or proc.ppid is None or proc.ppid not in self.procs:
                break
            pid, seen = proc.ppid, seen + 1
        return pid

    def _waits(self, ts: int) -> list[dict]:
        records = []
        for kind, map_name in (("futex_wait", "futexes"), ("lock_wait", "klocks"), ("pthread_hold", "pholds")):
            for key, val in self.obj.maps[map_name].batch(delete=True):
                acc = self.waits.setdefault((kind, key.tgid, key.tid, key.addr, key.flags), [0, 0, 0])
                acc[0] += val.count
                acc[1] += val.ns
                acc[2] = max(acc[2], val.max_ns)
                th = self.threads.get(key.tid)
                labels = {"addr": f"0x{key.addr:x}"}
                if kind == "lock_wait":
                    labels["lock_type"] = lock_type(key.flags)
                    labels["symbol"] = self._lock_symbol(key.addr)
                    values = {"count": val.count, "wait_ns": val.ns, "max_wait_ns": val.max_ns}
                elif kind == "pthread_hold":
                    labels["lock_type"] = PTHREAD_KINDS.get(key.flags, "other")
                    values = {"count": val.count, "hold_ns": val.ns, "max_hold_ns": val.max_ns}
                else:
                    values = {"count": val.count, "wait_ns": val.ns, "max_wait_ns": val.max_ns}
                records.append(make_record("proc", kind, ts=ts, pid=key.tgid, tid=key.tid,
                                           comm=th.comm if th else None, labels=labels, values=values))
        return records

    def _lock_symbol(self, addr: int) -> str:
        if self._kdata is None:
            try:
                self._kdata = Kallsyms(types=DATA)
            except OSError:
                return ""
        return self._kdata.name_at(addr) or ""

    def _resources(self, ts: int) -> list[dict]:
        records = []
        now = time.monotonic()
        for pid in sorted(self.alive):
            proc = self.procs.setdefault(pid, ProcessInfo(pid=pid))
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])
                rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
            values: dict = {"rss_bytes": rss, "cpu_time_ns": ticks * 1_000_000_000 // CLK_TCK}
            if proc.last_cpu:
                dt = now - proc.last_cpu[0]
                if dt > 0:
                    values["cpu_pct"] = round(100.0 * (ticks - proc.last_cpu[1]) / CLK_TCK / dt, 2)
            proc.last_cpu = (now, ticks)
            try:
                with open(f"/proc/{pid}/io") as f:
                    io = dict(line.split(": ") for line in f.read().splitlines())
                values["read_bytes"], values["write_bytes"] = int(io["read_bytes"]), int(io["write_bytes"])
                values["rchar"], values["wchar"] = int(io["rchar"]), int(io["wchar"])
            except (OSError, KeyError, ValueError):
                pass
            records.append(make_record("proc", "resources", ts=ts, pid=pid, comm=proc.comm or None, values=values))
        return records

    def _thread_record(self, th: ThreadInfo, ts: int, kind: str = "thread") -> dict:
        values = {f"{st}_ns": th.ns[i] for i, st in enumerate(STATES[:6])}
        values.update(vcsw=th.vcsw, ivcsw=th.ivcsw, lock_wait_ns=th.lock_ns, lock_waits=th.lock_count,
                      futex_wait_ns=th.futex_ns, futex_waits=th.futex_count)
        if th.exit_ns and th.start_ns:
            values["lifetime_ns"] = th.exit_ns - th.start_ns
        labels = {"status": "exited" if th.exit_ns else "alive"}
        return make_record("proc", kind, ts=ts, pid=th.tgid, tid=th.tid, comm=th.comm, labels=labels, values=values)

    # ---- interval ------------------------------------------------------------------------------
    def collect(self, elapsed_s: float) -> list[dict]:
        ts = time.time_ns()
        if self._warm is not None:  # the symbol tables are this thread's from now on
            self._warm.join()
            self._warm = None
        for r in read_rows(self.obj):
            th = self._thread(r.tid, r.tgid)
            th.comm = c_string(bytes(r.comm))
            th.ns = list(r.ns[: len(STATES)])
            th.vcsw, th.ivcsw = r.nvcsw, r.nivcsw
            th.lock_ns, th.lock_count, th.futex_ns, th.futex_count = r.lock_ns, r.lock_count, r.futex_ns, r.futex_count
            th.start_ns = th.start_ns or r.start_time
            proc = self.procs[r.tgid]
            if r.tid == r.tgid:
                proc.comm, proc.start_ns = th.comm, proc.start_ns or r.start_time
                if proc.ppid is None:
                    proc.ppid = r.ppid
        with self.lock:
            events, self.pending = self.pending, []
        records, spans = [], 0
        for ev in events:
            if ev.type == EV_SPAN:
                if self.max_spans and spans >= self.max_spans:
                    self.spans_dropped += 1
                    continue
                spans += 1
                th = self.threads.get(ev.tid)
                records.append(make_record("proc", "thread_state", ts=self._epoch(ev.start), pid=ev.tgid, tid=ev.tid,
                                           comm=th.comm if th else None,
                                           labels={"state": STATES[ev.state] if ev.state < len(STATES) else "other"},
                                           values={"duration_ns": ev.end - ev.start}))
            else:
                records.append(self._lifecycle(ev))
        self.sym.refresh()
        if self.stacks:
            records.extend(self._reasons(ts))
        records.extend(self._waits(ts))
        records.extend(self._resources(ts))
        records.extend(self._thread_record(th, ts) for th in self.threads.values())
        self.last_interval = records
        return records

    # ---- summary -------------------------------------------------------------------------------
    def final(self) -> list[dict]:
        self._rb_stop.set()
        if self._rb_thread:
            self._rb_thread.join(2)
        if self._rb:
            self._rb.consume()
        # what happened after the last interval's read (the exits that ended the run)
        out = [r for r in self.collect(0.0) if r["kind"] != "thread"]
        ts = time.time_ns()
        for proc in sorted(self.procs.values(), key=lambda p: p.pid):
            ths = [self.threads[t] for t in sorted(proc.threads) if t in self.threads]
            if not ths and proc.exit_ns is None:
                continue
            values = {f"{st}_ns": sum(t.ns[i] for t in ths) for i, st in enumerate(STATES[:6])}
            values.update(vcsw=sum(t.vcsw for t in ths), ivcsw=sum(t.ivcsw for t in ths), threads=len(ths),
                          lock_wait_ns=sum(t.lock_ns for t in ths), futex_wait_ns=sum(t.futex_ns for t in ths),
                          futex_waits=sum(t.futex_count for t in ths), lock_waits=sum(t.lock_count for t in ths))
            labels = {"status": "exited" if proc.exit_ns else "alive"}
            if proc.ppid is not None:
                values["parent_pid"] = proc.ppid
            if proc.exit_ns:
                if proc.start_ns:
                    values["lifetime_ns"] = proc.exit_ns - proc.start_ns
                if proc.signal:
                    labels["signal"] = proc.signal
                    values["core_dumped"] = int(proc.core)
                else:
                    values["exit_code"] = proc.exit_code
            if proc.execs:
                values["exec"] = proc.execs[-1]
            # how it ended, as one word for tables: "exit 3", "killed by SIGSEGV", "alive"
            labels["end"] = (f"killed by {proc.signal}" if proc.signal else
                             f"exit {proc.exit_code}" if proc.exit_ns else "alive")
            out.append(make_record("proc", "process_summary", ts=ts, pid=proc.pid, comm=proc.comm or None,
                                   labels=labels, values=values))
            out.extend(self._thread_record(t, ts, "thread_summary") for t in ths)
        # per (thread, reason, state, blocked-on): totals, and the stack that weighed most
        groups: dict[tuple, list] = {}
        for k, count in self.reasons.items():
            ns = self.reason_ns[k]
            g = groups.setdefault(k[:5], [0, 0, (), -1])
            g[0] += count
            g[1] += ns
            if ns > g[3]:
                g[2], g[3] = k[5], ns
        for (pid, tid, reason, state, what), (count, ns, frames, _) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
            out.append(make_record("proc", "switch_reason_summary", ts=ts, pid=pid, tid=tid,
                                   comm=self.threads[tid].comm if tid in self.threads else None,
                                   labels={"reason": reason, "state": state, "blocked_on": what},
                                   values={"count": count, "off_cpu_ns": ns}, stack=list(frames) or None))
        for (kind, pid, tid, addr, flags), (count, ns, mx) in sorted(self.waits.items(), key=lambda kv: -kv[1][1]):
            labels = {"addr": f"0x{addr:x}"}
            what = "wait"
            if kind == "lock_wait":
                labels["lock_type"], labels["symbol"] = lock_type(flags), self._lock_symbol(addr)
            elif kind == "pthread_hold":
                labels["lock_type"], what = PTHREAD_KINDS.get(flags, "other"), "hold"
            out.append(make_record("proc", kind + "_summary", ts=ts, pid=pid, tid=tid,
                                   comm=self.threads[tid].comm if tid in self.threads else None, labels=labels,
                                   values={"count": count, f"{what}_ns": ns, f"max_{what}_ns": mx,
                                           f"avg_{what}_ns": ns // count if count else 0}))
        if self.spans_dropped:
            print(f"bpfscope proc: {self.spans_dropped} timeline spans over --max-spans were not kept",
                  file=sys.stderr)
        events, storage = self.lost()
        if events:
            print(f"bpfscope proc: {events} events did not fit in the ring buffer (the timeline has gaps)",
                  file=sys.stderr)
        if storage:
            print(f"bpfscope proc: {storage} times a followed thread's accounting could not be created "
                  "(its time before it next left a CPU is partly not counted)", file=sys.stderr)
        return out

    def lost(self) -> tuple[int, int]:
        """(events the ring buffer had no room for, failed creations of a thread's accounting),
        since load (proc.bpf.c `lost`)."""
        if not self.obj:
            return 0, 0
        m = self.obj.maps["lost"]
        return sum(m.cpu_values(m.lookup(LOST_EVENTS))), sum(m.cpu_values(m.lookup(LOST_STORAGE)))

    # ---- views ---------------------------------------------------------------------------------
    def _threads_table(self, records: list[dict], title: str) -> Table:
        t = Table(title=title, title_justify="left")
        for col in ("PID", "TID", "COMM", "RUN", "RUNQ", "SLEEP", "IOWAIT", "DISK", "STOP", "VCSW", "IVCSW",
                    "FUTEX", "KLOCK", "STATUS"):
            t.add_column(col, justify="left" if col in ("COMM", "STATUS") else "right")
        for r in records:
            v = r["values"]
            t.add_row(str(r["pid"]), str(r["tid"] or ""), Text(r["comm"] or ""),
                      *(fmt_ns(v[f"{s}_ns"]) for s in STATES[:6]), str(v["vcsw"]), str(v["ivcsw"]),
                      fmt_ns(v["futex_wait_ns"]), fmt_ns(v["lock_wait_ns"]), self._status(r))
        return t

    @staticmethod
    def _status(r: dict) -> str:
        v, lab = r["values"], r["labels"]
        if "signal" in lab:
            return f"killed by {lab['signal']}" + (" (core)" if v.get("core_dumped") else "")
        if "exit_code" in v:
            return f"exit {v['exit_code']}"
        return lab.get("status", "")

    def _tree(self, summaries: list[dict]) -> Tree:
        procs = {r["pid"]: r for r in summaries if r["kind"] == "process_summary"}
        threads: dict[int, list[dict]] = {}
        for r in summaries:
            if r["kind"] == "thread_summary" and r["tid"] != r["pid"]:
                threads.setdefault(r["pid"], []).append(r)
        children: dict[int | None, list[int]] = {}
        for pid, r in procs.items():
            parent = r["values"].get("parent_pid")
            children.setdefault(parent if parent in procs and parent != pid else None, []).append(pid)
        tree = Tree("process tree")

        def add(node, pid):
            r = procs[pid]
            v = r["values"]
            life = f" lived {fmt_ns(v['lifetime_ns'])}" if "lifetime_ns" in v else ""
            exe = f" exec {v['exec']}" if "exec" in v else ""
            sub = node.add(Text(f"{pid} {r['comm'] or '?'}{exe}: {self._status(r)}{life}, "
                                f"on-CPU {fmt_ns(v['running_ns'])}"))
            for th in threads.get(pid, []):
                sub.add(Text(f"thread {th['tid']} {th['comm']}: on-CPU {fmt_ns(th['values']['running_ns'])}"))
            for c in sorted(children.get(pid, [])):
                add(sub, c)

        for pid in sorted(children.get(None, [])):
            add(tree, pid)
        return tree

    def table(self, records: list[dict]):
        kinds = {r["kind"] for r in records}
        if "process_summary" in kinds:
            parts = [self._tree(records),
                     self._threads_table([r for r in records if r["kind"] == "process_summary"], "per process (total)"),
                     self._threads_table([r for r in records if r["kind"] == "thread_summary"], "per thread (total)")]
            reasons = [r for r in records if r["kind"] == "switch_reason_summary"][: self.top]
            if reasons:
                t = Table(title="switch-outs by reason (top off-CPU time)", title_justify="left")
                for col in ("TID", "COMM", "REASON", "STATE", "BLOCKED ON", "COUNT", "OFF-CPU"):
                    t.add_column(col, justify="right" if col in ("TID", "COUNT", "OFF-CPU") else "left")
                for r in reasons:
                    t.add_row(str(r["tid"]), Text(r["comm"] or ""), r["labels"]["reason"], r["labels"]["state"],
                              Text(r["labels"]["blocked_on"]), str(r["values"]["count"]),
                              fmt_ns(r["values"]["off_cpu_ns"]))
                parts.append(t)
            holds = [r for r in records if r["kind"] == "pthread_hold_summary"][: self.top]
            if holds:
                t = Table(title="pthread lock hold times (--pthread)", title_justify="left")
                for col in ("TID", "COMM", "ADDRESS", "TYPE", "HOLDS", "TOTAL", "MAX", "AVG"):
                    t.add_column(col, justify="left" if col in ("COMM", "ADDRESS", "TYPE") else "right")
                for r in holds:
                    v = r["values"]
                    t.add_row(str(r["tid"]), Text(r["comm"] or ""), r["labels"]["addr"], r["labels"]["lock_type"],
                              str(v["count"]), fmt_ns(v["hold_ns"]), fmt_ns(v["max_hold_ns"]), fmt_ns(v["avg_hold_ns"]))
                parts.append(t)
            waits = [r for r in records if r["kind"] in ("futex_wait_summary", "lock_wait_summary")][: self.top]
            if waits:
                t = Table(title="lock waits (futex: user address; kernel: lock)", title_justify="left")
                for col in ("TID", "COMM", "KIND", "ADDRESS", "TYPE", "COUNT", "TOTAL", "MAX", "AVG"):
                    t.add_column(col, justify="right" if col in ("TID", "COUNT", "TOTAL", "MAX", "AVG") else "left")
                for r in waits:
                    lab, v = r["labels"], r["values"]
                    t.add_row(str(r["tid"]), Text(r["comm"] or ""), r["kind"].split("_")[0],
                              lab.get("symbol") or lab["addr"], lab.get("lock_type", "futex"), str(v["count"]),
                              fmt_ns(v["wait_ns"]), fmt_ns(v["max_wait_ns"]), fmt_ns(v["avg_wait_ns"]))
                parts.append(t)
            return Group(*parts)
        threads = [r for r in records if r["kind"] == "thread"]
        life = [r for r in records if r["kind"] == "lifecycle"][-10:]
        parts = [self._threads_table(threads, "followed threads (totals so far)")]
        for r in life:
            lab, v = r["labels"], r["values"]
            detail = v.get("filename") or (f"parent {v['parent_pid']}" if "parent_pid" in v else self._status(r))
            parts.append(Text(f"{lab['event']:>12} pid {r['pid']} tid {r['tid']} {r['comm']}: {detail}"))
        res = [r for r in records if r["kind"] == "resources"]
        for r in res:
            v = r["values"]
            parts.append(Text(f"   resources pid {r['pid']}: CPU {v.get('cpu_pct', 0):.1f}% RSS "
                              f"{fmt_bytes(v['rss_bytes'])} read {fmt_bytes(v.get('read_bytes'))} "
                              f"written {fmt_bytes(v.get('write_bytes'))}"))
        return Group(*parts)

    def metrics(self):
        t = CounterMetricFamily("bpfscope_proc_followed_state_seconds",
                                "Time the followed threads spent per state, by command", labels=["comm", "state"])
        per: Counter[tuple[str, str]] = Counter()
        for th in self.threads.values():
            for i, st in enumerate(STATES[:6]):
                per[(th.comm, st)] += th.ns[i]
        for (comm, st), ns in per.items():
            t.add_metric([comm, st], ns / 1e9)
        yield t
        w = CounterMetricFamily("bpfscope_proc_followed_lock_wait_seconds",
                                "Time the followed threads waited for locks, by lock type", labels=["comm", "lock_type"])
        waits: Counter[tuple[str, str]] = Counter()
        for (kind, _pid, tid, _addr, flags), (_c, ns, _m) in self.waits.items():
            if kind == "pthread_hold":
                continue
            th = self.threads.get(tid)
            waits[(th.comm if th else "?", "futex" if kind == "futex_wait" else lock_type(flags))] += ns
        for (comm, lt), ns in waits.items():
            w.add_metric([comm, lt], ns / 1e9)
        yield w
        lost = CounterMetricFamily("bpfscope_proc_lost", "What the kernel side could not keep: ring-buffer "
                                   "events (timeline gaps), thread accounting it could not create", labels=["what"])
        for what, n in zip(("events", "thread_storage"), self.lost()):
            lost.add_metric([what], n)
        yield lost

    def exit_code(self) -> int:
        """-- COMMAND: the command's exit status, 128 + N when signal N killed it (as a shell
        reports it); 0 when following --pid processes (not our children)."""
        if self.child is None or self.child.returncode is None:
            return 0
        rc = self.child.returncode
        return rc if rc >= 0 else 128 - rc

    def close(self) -> None:
        self._rb_stop.set()
        if self._rb_thread and self._rb_thread.is_alive():
            self._rb_thread.join(2)
        if self._rb:
            self._rb.close()
            self._rb = None
        if self.obj:
            self.obj.close()
            self.obj = None
        if self.child is not None:
            if self.child.poll() is None:
                self.child.terminate()
            self.child.wait()


def running(pid: int) -> bool:
    """pid exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def pids_of_comm(comm: str) -> list[int]:
    """Processes whose command name (/proc/PID/comm) is comm."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and d != str(os.getpid()):
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().strip() == comm:
                        out.append(int(d))
            except OSError:
                continue
    return out


def symbol_offsets(path: str, names: set[str]) -> dict[str, int]:
    """File offsets of the named functions of an ELF file (where a uprobe goes)."""
    from ..symbolize import read_elf

    elf = read_elf(path)
    wanted = set(names)
    if "pthread_spin_unlock" in names:  # glibc: the same code (store 0) as pthread_spin_init, which names it
        wanted.add("pthread_spin_init")
    out = {}
    for vaddr, name in zip(elf.addrs, elf.names):
        name = name.split("@", 1)[0]
        if name in wanted and name not in out:
            off = elf.vaddr_to_file_offset(vaddr)
            if off is not None:
                out[name] = off
    if "pthread_spin_unlock" in names and "pthread_spin_unlock" not in out and "pthread_spin_init" in out:
        out["pthread_spin_unlock"] = out["pthread_spin_init"]  # a uprobe there also sees inits: harmless
    return {k: v for k, v in out.items() if k in names}


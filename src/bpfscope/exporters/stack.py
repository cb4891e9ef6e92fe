"""bpfscope stack: call stacks counted in the kernel, symbolised in user space.

Kernel side: bpf/stack.bpf.c, one object, one program set per mode:
- cpu: samples with the software cpu-clock (perf_event) on every online CPU;
- offcpu: adds the time each task spends switched out to the stack it switched out
  with (tp_btf/sched_switch alone), per task state;
- mem: libc allocations minus frees, and the program's mmap minus munmap, per user
  stack (uprobes), a snapshot of what is outstanding; with --kernel, kernel allocations
  (kmem tracepoints) per kernel stack too;
- io: bytes of read/write-family system calls per user stack (raw_tp sys_exit), and
  block-device requests (device time, bytes) per submitting kernel stack;
- load: cpu sampling behind a gate that a thread here arms while the load is high;
- block: io's block-device part alone.
All count into one hash keyed by (pid, tid, comm, cgroup, user stack id, kernel stack
id, state, source: which hooks of the mode), read once per interval in one batch syscall (emptied as read, except mem);
the stack ids name entries of a BPF_MAP_TYPE_STACK_TRACE map that are read once and
cached here (ids are stable until the map is cleared, see _maybe_clear_stacks).

Records: kinds cpu_stack {count}, offcpu_stack {ns, count; label state}, alloc_stack
{outstanding_bytes, outstanding_count; label space: user or kernel}, io_stack {bytes, count; label direction},
load_stack {count; label load}, block_stack {ns, count, bytes; label op} (from io and block), one per
(task, stack) per interval, with the
symbolised stack root first (user frames, then kernel frames suffixed `_[k]`) and the
cgroup path as a label. docs/design/stack-attribution.md explains the attribution.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily
from rich.table import Table
from rich.text import Text

from ..bpf import BpfObject, RingBuffer, online_cpus
from ..decode import c_string
from ..schema import make_record
from ..symbolize import Symbolizer
from .base import Exporter

STATES = {0: "running", 1: "sleep", 2: "disk", 3: "other"}  # STACK_STATE_* of stack.h
EEXIST, ENOMEM, EFAULT = 17, 12, 14
LOST = "[lost stack]"  # the kernel could not store this stack (hash collision or map full)
(STAT_STACK_ERRORS, STAT_MAP_FULL, STAT_SAMPLES, STAT_ALLOCS_FULL, STAT_USER_WALKS, STAT_KERNEL_WALKS,
 STAT_USER_UNVERIFIED, STAT_UNSEEN_SWITCH_IN, STAT_BUILD_ID_WALKS) = range(9)
STAT_N = 9  # stack.h
SRC_MAIN, SRC_BLOCK, SRC_KMEM = 0, 1, 2  # stack_key.source (STACK_SRC_* of stack.h)
# modes whose user stacks are taken as (build id, file offset) frames, nameable after the
# process exited (mem drops the rows of exited processes: it keeps plain addresses)
BUILD_ID_MODES = ("cpu", "load", "offcpu", "io", "block")
BUILD_ID_STATUS_VALID = 1  # BPF_STACK_BUILD_ID_VALID (status IP: the frame is an address)
COMM_LEN = 15  # TASK_COMM_LEN less its NUL: the kernel keeps no more of a name


@dataclass(frozen=True)
class Mode:
    name: str
    program: str
    kind: str
    weight: str  # the value a flame graph is weighted by
    unit: str


MODES = {
    "cpu": Mode("cpu", "cpu_sample", "cpu_stack", "count", "samples"),
    "offcpu": Mode("offcpu", "offcpu_switch", "offcpu_stack", "ns", "nanoseconds"),
    "mem": Mode("mem", "malloc_enter", "alloc_stack", "outstanding_bytes", "bytes"),
    "io": Mode("io", "io_sys_exit", "io_stack", "bytes", "bytes"),
    "load": Mode("load", "cpu_sample", "load_stack", "count", "samples"),
    "block": Mode("block", "block_start", "block_stack", "ns", "nanoseconds"),
}
# mem --kernel: slab objects and pages (kmem tracepoints)
KMEM_PROGRAMS = ("kmem_kmalloc", "kmem_cache_alloc", "kmem_kfree", "kmem_cache_free", "kmem_page_alloc",
                 "kmem_page_free")
BLOCK_PROGRAMS = ("block_start", "block_issue", "block_complete")
BLOCK_OPS = {0: "read", 1: "write", 2: "other"}  # stack_key.state in block mode (flush, discard, ...)
IO_DIRECTIONS = {0: "read", 1: "write"}  # stack_key.state in io mode
# mem: libc functions -> (entry program, return program); the first two are required
MEM_PROBES = {"malloc": ("malloc_enter", "malloc_return"), "free": ("free_enter", None),
              "calloc": ("calloc_enter", "calloc_return"), "realloc": ("realloc_enter", "realloc_return"),
              "posix_memalign": ("posix_memalign_enter", "posix_memalign_return"),
              "aligned_alloc": ("aligned_alloc_enter", "aligned_alloc_return"),
              "mmap": ("mmap_enter", "mmap_return"), "munmap": ("munmap_enter", None)}


def runqueue_length(path: str = "/proc/loadavg") -> int:
    """Tasks runnable right now on every CPU (the 4th field of /proc/loadavg, minus the
    reader itself)."""
    with open(path) as f:
        running = f.read().split()[3].split("/")[0]
    return max(int(running) - 1, 0)


PSI_CPU = "/proc/pressure/cpu"
# --threshold when none is given: 4 runnable tasks (2 per CPU on the 2-CPU machines of
# this project), or some task waiting for a CPU half of the time
DEFAULT_THRESHOLDS = {"runqueue": 4.0, "psi": 50.0}


def psi_cpu_some_total(path: str = PSI_CPU) -> int:
    """PSI `cpu some total`: microseconds in which some runnable task waited for a CPU."""
    with open(path) as f:
        for line in f:
            if line.startswith("some"):
                return int(dict(kv.split("=") for kv in line.split()[1:])["total"])
    raise OSError(f"no 'some' line in {path}")


def psi_available(path: str = PSI_CPU) -> bool:
    """PSI is readable (the file exists, and reads: psi=0 on the command line makes it fail)."""
    try:
        psi_cpu_some_total(path)
    except (OSError, ValueError, KeyError):
        return False
    return True


def resolve_load_source(requested: str = "auto") -> str:
    """auto: PSI cpu some where the kernel has it, else the run-queue length."""
    if requested == "auto":
        return "psi" if psi_available() else "runqueue"
    return requested


class PsiCpuSome:
    """PSI cpu some over the time since the last call, in % (from the `total` counter:
    avg10 is recomputed every 2 s only and lags a burst by seconds)."""

    def __init__(self, path: str = PSI_CPU):
        import time

        self.path, self._clock = path, time.monotonic_ns
        self._total, self._at = psi_cpu_some_total(path), self._clock()
        self._last = 0.0

    def __call__(self) -> float:
        total, at = psi_cpu_some_total(self.path), self._clock()
        if at - self._at < 10_000_000:  # a window of microseconds (the first call) says nothing
            return self._last
        pct = 100 * (total - self._total) * 1000 / (at - self._at)
        self._total, self._at = total, at
        self._last = min(max(pct, 0.0), 100.0)
        return self._last


class LoadGate:
    """A thread that arms the kernel's `gate` every period while the load is >= threshold."""

    def __init__(self, gate_map, threshold: float, source: str = "runqueue", period_s: float = 0.1):
        import threading

        self.map = gate_map
        self.threshold = threshold
        self.read = PsiCpuSome() if source == "psi" else runqueue_length
        self.period_s = period_s
        self.armed_checks = self.checks = 0
        self.last_load = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bpfscope-load-gate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        value = self.map.value_type()
        while not self._stop.is_set():
            load = self.read()
            self.last_load = load
            value.armed = int(load >= self.threshold)
            value.load = int(round(load))
            self.map.update(0, value)
            self.checks += 1
            self.armed_checks += value.armed
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def libc_path(pid: int | None) -> str:
    """The libc a process maps (through its root, for containers), or this process's own."""
    maps = f"/proc/{pid}/maps" if pid else "/proc/self/maps"
    with open(maps) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and ("/libc.so" in parts[5] or "/libc-" in parts[5]):
                path = parts[5].strip()
                return f"/proc/{pid}/root{path}" if pid else path
    raise FileNotFoundError(f"no libc mapped by {'pid ' + str(pid) if pid else 'this process'}")


class CgroupNames:
    """cgroup v2 id (the inode number of its directory) -> path under the v2 root."""

    def __init__(self, root: str | None):
        self.root = root
        self.names: dict[int, str] = {}
        self._scanned_for: set[int] = set()

    def _scan(self) -> None:
        if not self.root:
            return
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = os.path.relpath(dirpath, self.root)
            self.names[ino] = "/" if rel == "." else "/" + rel

    def name(self, cgroup_id: int) -> str:
        if cgroup_id not in self.names and cgroup_id not in self._scanned_for:
            self._scanned_for.add(cgroup_id)  # one walk per unknown id, not one per sample
            self._scan()
        return self.names.get(cgroup_id, f"cgroup_{cgroup_id}")


def cgroup_filter(path: str, root: str) -> tuple[int, int]:
    """(cgroup id, depth below the v2 root) of a cgroup given as a path (absolute, or
    relative to the v2 root)."""
    full = path if path.startswith(root) else os.path.join(root, path.lstrip("/"))
    st = os.stat(full)  # FileNotFoundError for the CLI to report
    rel = os.path.relpath(full, root)
    level = 0 if rel == "." else len(rel.split(os.sep))
    return st.st_ino, level


class StackExporter(Exporter):
    name = "stack"
    domain = "stack"

    def __init__(self, mode: str = "cpu", *, freq: int = 49, pid: int | None = None, comm: str | None = None,
                 cgroup: str | None = None, user_stacks: bool = True, kernel_stacks: bool = True,
                 include_idle: bool = False, min_block_us: float = 10.0, max_block_us: float | None = None,
                 top: int = 20, stack_traces: int = 16384, max_entries: int = 16384, outputs=None,
                 symbolizer: Symbolizer | None = None, sample_every: int = 1, threshold: float | None = None,
                 load_source: str = "auto", kernel_mem: bool = False, build_id: bool | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown stack mode {mode!r}")
        self.mode = MODES[mode]
        self.name = f"stack-{mode}"
        self.freq = freq
        self.pid = pid
        self.comm = comm
        self.cgroup = cgroup
        self.user_stacks, self.kernel_stacks = user_stacks, kernel_stacks
        self.include_idle = include_idle
        self.min_block_ns = int(min_block_us * 1000)
        self.max_block_ns = int(max_block_us * 1000) if max_block_us else (1 << 64) - 1
        self.top = top
        self.sample_every = max(1, sample_every)
        self.load_source = resolve_load_source(load_source) if mode == "load" else load_source
        self.threshold = DEFAULT_THRESHOLDS.get(self.load_source, 4.0) if threshold is None else threshold
        self.gate: LoadGate | None = None
        self.kernel_mem = kernel_mem and self.mode.name == "mem"
        # mem: libc's allocations, unless --kernel --kernel-only (they have no kernel frames)
        self.libc_mem = self.mode.name == "mem" and (not self.kernel_mem or user_stacks)
        if self.mode.name == "mem" and not self.kernel_mem:
            self.kernel_stacks = False  # who asked, in user space: no kernel stacks taken
        # offcpu, mem --kernel and block requests (io, block) intern kernel stacks by content
        # in `kstacks` (stack.bpf.c); the other modes use stack_traces
        self.kstacks_interned = self.kernel_stacks and self.mode.name in ("offcpu", "mem", "block", "io")
        self.stack_traces = stack_traces
        # user stacks as (build id, file offset) too: `ustacks`, a quarter as many entries
        # (a frame is 32 bytes, not 8), taken once per (process, plain stack id) (`ubuild`)
        # (BPFSCOPE_STACK_BUILD_ID=0: plain addresses, as before; for a kernel where the
        # build-id walk misbehaves, and to measure what it costs)
        if build_id is None:
            build_id = os.environ.get("BPFSCOPE_STACK_BUILD_ID", "1") != "0"
        self.user_build_id = build_id and self.user_stacks and self.mode.name in BUILD_ID_MODES
        self.ustacks = max(stack_traces // 4, 256)
        self._user_ids = 0  # ids of ustacks read since the last clear
        self._plain_ids: set[int] = set()  # ids of stack_traces seen since the last clear
        self._pairs: dict[tuple[int, int], int] = {}  # (tgid, plain user id) -> ustacks id, this interval
        self._gen = 0  # stack_gen: bumped at each clear of the stack maps
        self._gone: set[int] = set()  # tgids of `ubuild` found exited at the last interval
        self._exe_paths: dict[int, str] = {}  # tgid -> its /proc/PID/exe, for a relative exec
        self._exe_rb: RingBuffer | None = None
        self._exe_thread: threading.Thread | None = None
        self._exe_stop = threading.Event()
        self.max_entries = max_entries
        self.outputs = outputs
        self.sym = symbolizer or Symbolizer()
        self.obj: BpfObject | None = None
        self._ips: dict[int, tuple[int, ...]] = {}  # stack id -> ips (leaf first)
        self._kframes: dict[int, list[str]] = {}  # kernel stack id -> frames (root first)
        self._stats = [0] * STAT_N
        self.totals: Counter[str] = Counter()  # per comm, weight (bounded by --top at export)
        self.stacks_cleared = 0

    # ---- kernel side ------------------------------------------------------------------------
    def open(self) -> None:
        from ..hostenv import cgroup2_root

        root = cgroup2_root()
        self.cgroups = CgroupNames(root)
        cg_id = cg_level = 0
        if self.cgroup:
            if not root:
                raise FileNotFoundError("no cgroup v2 mount for --cgroup")
            cg_id, cg_level = cgroup_filter(self.cgroup, root)
        rodata = {"target_tgid": self.pid or 0, "self_tgid": os.getpid(), "target_cgroup_id": cg_id,
                  "target_cgroup_level": cg_level, "user_stacks": self.user_stacks,
                  "kernel_stacks": self.kernel_stacks, "include_idle": self.include_idle,
                  "min_block_ns": self.min_block_ns, "max_block_ns": self.max_block_ns,
                  "sample_every": self.sample_every, "gated": self.mode.name == "load",
                  "user_build_id": self.user_build_id}
        if self.comm:  # in the kernel: other tasks never fill `counts` or stack_traces
            rodata.update(comm_filter=True, target_comm=self.comm.encode()[:COMM_LEN])
        if self.libc_mem:
            rodata.update(self._libc_mmap_layout())
        # kstacks is preallocated (an allocation-free insert, even in a burst of new stacks
        # under kmalloc): sized only where kernel stacks are interned by content
        # stack_traces: kernel stacks of cpu and load, and every user stack as addresses
        # (the key of `counts`); ubuild pairs those of each process with its build-id stack
        sizes = {"stack_traces": self.stack_traces,
                 "kstacks": self.stack_traces if self.kstacks_interned else 1,
                 "counts": self.max_entries, "ustacks": self.ustacks if self.user_build_id else 1,
                 "ubuild": max(self.max_entries, self.stack_traces) if self.user_build_id else 1,
                 "execs": 4096 if self.user_build_id else 1}
        if self.mode.name == "mem":
            only = [p for pair in MEM_PROBES.values() for p in pair if p] if self.libc_mem else []
            only += list(KMEM_PROGRAMS) if self.kernel_mem else []
        elif self.mode.name == "io":  # syscalls per user stack, block requests per kernel stack
            only = [self.mode.program, *BLOCK_PROGRAMS]
        elif self.mode.name == "block":
            only = list(BLOCK_PROGRAMS)
        else:
            only = [self.mode.program]
        if self.user_build_id:
            only.append("stack_exec")
        self.obj = BpfObject.open("stack", rodata=rodata, max_entries=sizes, only=only)
        if self.user_build_id:
            self._exe_rb = RingBuffer(self.obj.maps["relative_execs"], self._on_relative_exec)
            self.obj.programs["stack_exec"].attach()
        if self.mode.name == "load":
            self.gate = LoadGate(self.obj.maps["gate"], self.threshold, self.load_source)
            self.gate.start()
        if self.mode.name in ("cpu", "load"):
            self.obj.programs[self.mode.program].attach_perf_event(self.freq, online_cpus())
        elif self.mode.name == "mem":
            if self.kernel_mem:
                for name in KMEM_PROGRAMS:
                    self.obj.programs[name].attach()
            if self.libc_mem:
                self._attach_mem()
        else:
            for name in only:
                if name != "stack_exec":
                    self.obj.programs[name].attach()
        if self._exe_rb:  # last: nothing is left running when an attach above fails
            self._exe_thread = threading.Thread(target=self._watch_relative_execs, name="bpfscope-stack-execs",
                                                daemon=True)
            self._exe_thread.start()

    def _libc_mmap_layout(self) -> dict:
        """Where libc's mmap and code are, so that the kernel side can skip libc's own
        mmap calls (malloc's large blocks are counted by malloc already)."""
        from ..symbolize.elf import ElfError, code_layout

        rodata = {"page_size": os.sysconf("SC_PAGE_SIZE")}
        try:
            layout = code_layout(libc_path(self.pid), "mmap")
        except (OSError, ElfError):
            layout = None  # _attach_mem reports a missing libc
        if layout:
            rodata.update(libc_mmap_vaddr=layout[0], libc_text_lo=layout[1], libc_text_hi=layout[2])
        return rodata

    def _attach_mem(self) -> None:
        from ..bpf import BpfError

        lib = libc_path(self.pid)
        for i, (func, (enter, ret)) in enumerate(MEM_PROBES.items()):
            try:
                self.obj.programs[enter].attach_uprobe(lib, func, pid=self.pid or -1)
                if ret:
                    self.obj.programs[ret].attach_uprobe(lib, func, pid=self.pid or -1, retprobe=True)
            except BpfError:
                if i < 2:  # malloc and free are required; the rest may be missing from a libc
                    raise

    def _watch_relative_execs(self) -> None:
        # woken by the kernel side at each exec of a relative path (rare: ./prog)
        while not self._exe_stop.is_set():
            self._exe_rb.poll(100)

    def _on_relative_exec(self, raw: bytes) -> None:
        """A process exec'd a relative path: where it is, read now while the process lives
        (it may exit before the interval's read, and the path alone names no file)."""
        tgid = int.from_bytes(raw[:4], "little")
        if len(self._exe_paths) > 65536:
            self._exe_paths = {}
        try:
            self._exe_paths[tgid] = os.readlink(f"/proc/{tgid}/exe")
        except OSError:
            pass  # gone already

    def _stack(self, stack_id: int, kernel: bool = False) -> tuple[int, ...]:
        in_kstacks = kernel and self.kstacks_interned
        cache_key = ("k", stack_id) if in_kstacks else stack_id
        if not in_kstacks:
            self._plain_ids.add(stack_id)
        ips = self._ips.get(cache_key)
        if ips is None:
            raw = self.obj.maps["kstacks" if in_kstacks else "stack_traces"].lookup(stack_id)
            if raw is None:
                return ()
            vals = memoryview(bytes(raw)).cast("Q")
            ips = tuple(itertools.takewhile(bool, vals))  # the kernel zero-fills after the last frame
            self._ips[cache_key] = ips
        return ips

    def _build_id_stack(self, stack_id: int) -> tuple[tuple[int, str, int], ...]:
        """A user stack of `ustacks`, leaf first: (status, build id hex, file offset or
        address) per frame."""
        cache_key = ("b", stack_id)
        frames = self._ips.get(cache_key)
        if frames is None:
            raw = self.obj.maps["ustacks"].lookup(stack_id)
            if raw is None:
                return ()
            frames = []
            # struct bpf_stack_build_id {s32 status; u8 build_id[20]; u64 offset or ip},
            # status 0 (EMPTY) after the last frame
            for status, build_id, value in struct.iter_unpack("<i20sQ", bytes(raw)):
                if not status:
                    break
                frames.append((status, build_id.hex(), value))
            frames = self._ips[cache_key] = tuple(frames)
            self._user_ids += 1
        return frames

    def frames(self, pid: int, user_id: int, kernel_id: int) -> list[str]:
        """The stack root first: user frames (outermost first), then kernel frames."""
        out: list[str] = []
        # the build-id stack this process's plain stack was paired with, when there is one
        # (a stack ustacks could not hold, or a pair lost to the LRU: named from the addresses)
        bid = self._pairs.get((pid, user_id), -1) if user_id >= 0 and self.user_build_id else -1
        bframes = self._build_id_stack(bid) if bid >= 0 else ()
        if bframes:
            self._plain_ids.add(user_id)
            out.extend(reversed(self.sym.user_stack_build_id(pid, bframes)))
        elif user_id >= 0:
            out.extend(reversed(self.sym.user_stack(pid, self._stack(user_id))))
        elif user_id in (-EEXIST, -ENOMEM):
            out.append(LOST)
        if kernel_id >= 0:
            kframes = self._kframes.get(kernel_id)
            if kframes is None:  # a kernel stack names the same frames for every task
                kframes = self._kframes[kernel_id] = list(reversed(self.sym.kernel_stack(self._stack(kernel_id, kernel=True))))
            out.extend(kframes)
        elif kernel_id in (-EEXIST, -ENOMEM) and LOST not in out:
            out.append(LOST)  # under user frames too: the kernel part is missing, not absent
        return out or ["[no stack]"]

    def _maybe_clear_stacks(self, errors_grew: bool) -> None:
        # Ids stay valid until the map is cleared; clear it (right after the counts were
        # emptied, so few live keys still point into it) when it is half full or
        # colliding. A sample counted between the two reads may lose its stack.
        # Never in mem mode: its counts live on (outstanding allocations point at their
        # ids until freed). In offcpu mode a task blocked across the clear keeps an id
        # taken before it, so its block may be named "[no stack]" or, if the id is given
        # out again meanwhile, another stack: rare (the map must fill up), and counted.
        if self.mode.name == "mem":
            return
        # ubuild pairs ids of both: cleared after them, then the generation is bumped (a
        # pair the kernel makes meanwhile carries the old one: stale, walked again)
        in_kstacks = sum(1 for k in self._ips if isinstance(k, tuple) and k[0] == "k")
        if len(self._plain_ids) + in_kstacks < self.stack_traces // 2 and not errors_grew and \
                self._user_ids < self.ustacks // 2:
            return
        for name in ("stack_traces", "kstacks", "ustacks", "ubuild"):
            m = self.obj.maps[name]
            for key in list(m.keys()):
                m.delete(key)
        gen = self.obj.maps["stack_gen"]  # offcpu: user stack ids cached per task are stale now
        self._gen = gen.lookup(0).value + 1
        gen.update(0, self._gen)
        self._ips.clear()
        self._kframes.clear()
        self._user_ids = 0
        self._plain_ids.clear()
        self._pairs.clear()
        self._gone.clear()
        self.stacks_cleared += 1

    def _read_pairs(self) -> tuple[list, set[int]]:
        """`ubuild` in one batch: self._pairs for this interval's rows (pairs of the current
        generation only); returns the raw keys, and the tgids among them that have exited."""
        entries = self.obj.maps["ubuild"].batch()
        self._pairs = {(k.tgid, k.user_stack_id): v.build_id_stack_id for k, v in entries if v.gen == self._gen}
        keys = [k for k, _ in entries]
        return keys, {t for t in {k.tgid for k in keys} if not os.path.exists(f"/proc/{t}")}

    def _note_file_bases(self, rows: list, gone: set[int]) -> None:
        """Before any row is named: where the files of processes that have exited (`gone`)
        were mapped, from their stacks taken both ways (plain and build-id), so that their
        stacks the kernel gave as addresses only are named too."""
        for pair in {(key.pid, key.user_stack_id) for key, _ in rows if key.pid in gone}:
            bid = self._pairs.get(pair, -1)
            if bid >= 0:
                self.sym.note_file_bases(pair[0], self._stack(pair[1]), self._build_id_stack(bid))

    def _forget_exited(self, keys: list, gone: set[int]) -> None:
        """Delete the pairs of processes that had exited at the last interval already and
        still have (their last rows, counted before the exit, were read by now: in that
        interval or this one); a tgid given to a new process meanwhile keeps its pairs
        (the kernel side walks again where the mm differs)."""
        stale = gone & self._gone
        if stale:
            m = self.obj.maps["ubuild"]
            for k in keys:
                if k.tgid in stale:
                    m.delete(k)
        self._gone = gone - stale

    def _drop_exited(self, rows: list) -> list:
        """mem: a process that exited freed everything; forget its rows, and (every tenth
        interval, it is a walk over every live allocation) its allocations."""
        alive = {}
        kept = []
        for key, val in rows:
            if key.source == SRC_KMEM:  # kernel objects outlive the process that made them
                kept.append((key, val))
                continue
            if key.pid not in alive:
                alive[key.pid] = os.path.exists(f"/proc/{key.pid}")
            if alive[key.pid]:
                kept.append((key, val))
            else:
                self.obj.maps["counts"].delete(key)
        self._mem_reads = getattr(self, "_mem_reads", 0) + 1
        if self._mem_reads % 10 == 0:
            ends = self.obj.maps["mmap_ends"]
            for name in ("allocs", "mmaps"):  # keyed by (tgid, address)
                live = self.obj.maps[name]
                for key, info in live.batch():
                    if info.key.source == SRC_KMEM:
                        continue
                    pid = info.key.pid
                    if pid not in alive:
                        alive[pid] = os.path.exists(f"/proc/{pid}")
                    if not alive[pid]:
                        live.delete(key)
                        if name == "mmaps":
                            end = ends.key_type()
                            end.tgid, end.addr = key.tgid, key.addr + info.size
                            ends.delete(end)
        return kept

    def _read_stats(self) -> list[int]:
        m = self.obj.maps["stats"]
        return [sum(m.cpu_values(m.lookup(i))) for i in range(STAT_N)]

    # ---- interval -----------------------------------------------------------------------------
    def collect(self, elapsed_s: float) -> list[dict]:
        counts = self.obj.maps["counts"]
        mem = self.mode.name == "mem"
        rows = counts.batch(delete=not mem)  # mem: outstanding now, not per interval
        if self.libc_mem:
            rows = self._drop_exited(rows)
        self.sym.refresh()
        if self.user_build_id:  # where the build ids of exited processes' programs are
            for tgid, path in self.obj.maps["execs"].batch():
                raw, tgid = path.path, int(getattr(tgid, "value", tgid))
                exe = c_string(raw if isinstance(raw, bytes) else list(raw))
                if not exe.startswith("/"):
                    exe = self._exe_paths.get(tgid, exe)
                self.sym.note_exec(tgid, exe, path.vdso)
            pair_keys, gone = self._read_pairs()
            self._note_file_bases(rows, gone)
        agg: dict[tuple, list[int]] = {}
        for key, val in rows:
            comm = c_string(key.comm.value if hasattr(key.comm, "value") else bytes(key.comm))
            if self.comm and comm != self.comm[:COMM_LEN]:  # filtered in the kernel already
                continue
            frames = tuple(self.frames(key.pid, key.user_stack_id, key.kernel_stack_id))
            k = (key.pid, key.tid, comm, key.cgroup_id, key.source, key.state, frames)
            a = agg.setdefault(k, [0, 0, 0])
            a[0] += val.count
            a[1] += val.ns
            a[2] += val.bytes
        if self.user_build_id:
            self._forget_exited(pair_keys, gone)
        stats = self._read_stats()
        errors_grew = stats[STAT_STACK_ERRORS] > self._stats[STAT_STACK_ERRORS]
        self._stats = stats
        self._maybe_clear_stacks(errors_grew)
        ts = None
        records = []
        if mem and self.outputs is not None:
            self.outputs.clear()  # a snapshot: the files show what is outstanding at the end
        for (pid, tid, comm, cg, source, state, frames), (count, ns, nbytes) in agg.items():
            labels = {"cgroup": self.cgroups.name(cg)}
            kind, part = self.mode.kind, None  # part: the head frame of the outputs' stacks
            if source == SRC_BLOCK:  # block and io: a block request
                kind = "block_stack"
                labels["op"] = part = BLOCK_OPS.get(state, "other")
                if self.mode.name == "io":  # beside the syscalls' bytes: say which is which
                    part = f"block {part}"
                values = {"ns": ns, "count": count, "bytes": nbytes}
            elif mem:
                if count <= 0 and nbytes <= 0:
                    continue
                if self.sample_every > 1:
                    labels["sample_every"] = str(self.sample_every)
                labels["space"] = "kernel" if source == SRC_KMEM else "user"
                if self.kernel_mem:  # both in one run: the flame graph keeps them apart
                    part = labels["space"]
                values = {"outstanding_bytes": nbytes * self.sample_every,
                          "outstanding_count": count * self.sample_every}
            elif self.mode.name == "load":
                labels["load"] = str(state)
                labels["load_source"] = self.load_source
                values = {"count": count}
            elif self.mode.name == "io":
                labels["direction"] = part = IO_DIRECTIONS.get(state, "other")
                values = {"bytes": nbytes, "count": count}
            elif self.mode.name == "offcpu":
                labels["state"] = part = STATES.get(state, "other")
                values = {"ns": ns, "count": count}
            else:
                values = {"count": count}
            rec = make_record("stack", kind, ts=ts, pid=pid, tid=tid, comm=comm, labels=labels,
                              values=values, stack=list(frames))
            ts = rec["ts"]  # one timestamp per interval
            records.append(rec)
            weight = values[self.mode.weight]  # io: bytes, of syscalls and block requests alike
            if not mem and kind == self.mode.kind:
                self.totals[comm] += weight
            if self.outputs is not None:
                self.outputs.add(comm, pid, tid, part, list(frames), weight, values)
        records.sort(key=lambda r: r["values"][self.mode.weight], reverse=True)
        return records

    # ---- views ----------------------------------------------------------------------------------
    def table(self, records: list[dict]) -> Table:
        w = self.mode.weight
        totals: Counter[str] = Counter()  # % of its own kind (io: syscall and block bytes apart)
        for r in records:
            totals[r["kind"]] += r["values"][w]
        spaces = ("libc and kernel" if self.libc_mem else "kernel") if self.kernel_mem else "libc"
        title = {"cpu": f"on-CPU stacks at {self.freq} Hz", "offcpu": "off-CPU time per stack",
                 "mem": f"outstanding {spaces} allocations per stack",
                 "io": "bytes read and written per stack (syscalls; blk: block requests, device time)",
                 "block": "block-device request time (issue to completion) per submitting stack",
                 "load": f"on-CPU stacks while {self.load_source} >= {self.threshold:g}"
                 + ("% (PSI cpu some)" if self.load_source == "psi" else " runnable tasks")}[self.mode.name]
        t = Table(title=f"{title} (top {self.top}, per interval)", title_justify="left", expand=False)
        cols = [("PID", "right"), ("TID", "right"), ("COMM", "left")]
        if self.mode.name == "offcpu":
            cols += [("STATE", "left"), ("MS", "right")]
        elif self.mode.name == "mem":
            cols += [("SPACE", "left")] if self.kernel_mem else []
            cols += [("BYTES", "right"), ("BLOCKS", "right")]
        elif self.mode.name == "io":
            cols += [("DIR", "left"), ("BYTES", "right"), ("CALLS", "right"), ("MS", "right")]
        elif self.mode.name == "block":
            cols += [("OP", "left"), ("MS", "right"), ("BYTES", "right"), ("REQS", "right")]
        elif self.mode.name == "load":
            cols += [("LOAD", "right"), ("SAMPLES", "right")]
        else:
            cols += [("SAMPLES", "right")]
        cols += [("%", "right"), ("STACK (leaf <- root)", "left")]
        for col, just in cols:
            t.add_column(col, justify=just, no_wrap=col != "STACK (leaf <- root)")
        for r in records[: self.top or None]:
            v = r["values"][w]
            cells = [str(r["pid"]), str(r["tid"]), r["comm"] or ""]
            if self.mode.name == "offcpu":
                cells += [r["labels"]["state"], f"{v / 1e6:,.1f}"]
            elif self.mode.name == "mem":
                cells += [r["labels"]["space"]] if self.kernel_mem else []
                cells += [f"{v:,}", f"{r['values']['outstanding_count']:,}"]
            elif self.mode.name == "io" and r["kind"] == "block_stack":
                cells += ["blk " + r["labels"]["op"], f"{v:,}", f"{r['values']['count']:,}",
                          f"{r['values']['ns'] / 1e6:,.2f}"]
            elif self.mode.name == "io":
                cells += [r["labels"]["direction"], f"{v:,}", f"{r['values']['count']:,}", ""]
            elif self.mode.name == "block":
                cells += [r["labels"]["op"], f"{v / 1e6:,.2f}", f"{r['values']['bytes']:,}",
                          f"{r['values']['count']:,}"]
            elif self.mode.name == "load":
                cells += [r["labels"]["load"], f"{v:,}"]
            else:
                cells += [f"{v:,}"]
            stack = r["stack"] or []
            cells += [f"{100 * v / (totals[r['kind']] or 1):.1f}", " <- ".join(reversed(stack[-4:]))]
            t.add_row(*(Text(str(c)) for c in cells))  # Text: frames like 'f_[k]' are not markup
        return t

    def metrics(self):
        unit = {"cpu": "samples", "offcpu": "ns", "mem": "allocations", "io": "bytes", "load": "samples",
                "block": "ns"}[self.mode.name]
        c = CounterMetricFamily(f"bpfscope_stack_{self.mode.name}_{unit}",
                                f"Weight of the {self.mode.name} stacks seen, per command (top 20)", labels=["comm"])
        if self.mode.name == "mem":
            self.totals = Counter({"all": self._stats[STAT_SAMPLES]})
        for comm, n in self.totals.most_common(20):
            c.add_metric([comm], n)
        yield c
        for name, idx, help_ in (("stack_errors", STAT_STACK_ERRORS, "Stacks the kernel could not store"),
                                 ("map_full_events", STAT_MAP_FULL, "Samples not counted because the map was full"),
                                 ("allocs_untracked", STAT_ALLOCS_FULL, "mem: allocations not tracked (map full)"),
                                 ("user_unverified", STAT_USER_UNVERIFIED,
                                  "offcpu: counted blocks whose user stack was reused on the registers alone"),
                                 ("build_id_walks", STAT_BUILD_ID_WALKS,
                                  "User stacks taken with build ids (once per new process and stack)"),
                                 ("unseen_switch_ins", STAT_UNSEEN_SWITCH_IN,
                                  "offcpu: blocks whose end passed no sched_switch tracepoint (kernel stack lost)")):
            m = CounterMetricFamily(f"bpfscope_stack_{name}", help_, labels=["mode"])
            m.add_metric([self.mode.name], self._stats[idx])
            yield m

    def close(self) -> None:
        if self.gate:
            self.gate.stop()
        self._exe_stop.set()
        if self._exe_thread:
            self._exe_thread.join(2)
            self._exe_thread = None
        if self._exe_rb:
            self._exe_rb.close()
            self._exe_rb = None
        if self.obj:
            self.obj.close()
            self.obj = None
        if self.outputs is not None:
            self.outputs.write()

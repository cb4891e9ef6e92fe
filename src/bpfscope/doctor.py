"""bpfscope doctor: what this kernel can do, measured by loading a tiny program of each
hook type (bpf/doctor.bpf.c), attaching it where that is harmless and triggering it.

Exit 0 when the core works (BTF, tracepoints, ring buffer, perf_event), 1 otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import time
from dataclasses import asdict, dataclass

from . import hostenv
from .bpf import BpfError, BpfObject, RingBuffer

CORE = ("BTF", "tracepoint", "ring buffer", "perf_event")
PROBE = {"tracepoint": 0, "raw_tp": 1, "tp_btf": 2, "uprobe": 3, "uretprobe": 4, "perf_event": 5,
         "stack map": 6, "kprobe": 10, "fentry": 11, "cgroup/connect4": 12}


@dataclass
class Check:
    name: str
    status: str  # ok | absent | refused | failed | missing
    detail: str = ""
    core: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _status_of(err: BpfError) -> str:
    if err.errno in (1, 13):
        return "refused"
    if err.errno in (2, 95, 524):  # ENOENT, EOPNOTSUPP, ENOTSUPP: the kernel lacks it
        return "absent"
    return "failed"


def _one_line(err: BaseException) -> str:
    if isinstance(err, BpfError):
        return f"{err.what.split(' (')[0]}: {os.strerror(err.errno)}"
    return str(err).splitlines()[0]


class _Probe:
    """Load one program of doctor.bpf.c alone and give it to a test function."""

    def __init__(self, prog: str):
        self.prog = prog

    def __enter__(self) -> BpfObject:
        self.obj = BpfObject.open("doctor", rodata={"self_tgid": os.getpid()}, only=[self.prog])
        return self.obj

    def __exit__(self, *exc):
        self.obj.close()


def _hits(obj: BpfObject, probe: str) -> int:
    v = obj.maps["hits"].lookup(PROBE[probe])
    return int(v.value if hasattr(v, "value") else v)


def _libc_path() -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "/libc.so" in path or "/libc-" in path:
                return path
    return ctypes.util.find_library("c") or "libc.so.6"


def _wait_hits(obj, probe, trigger, tries=20) -> int:
    for _ in range(tries):
        trigger()
        n = _hits(obj, probe)
        if n:
            return n
        time.sleep(0.01)
    return 0


def _check_program(name: str, prog: str, attach, trigger, probe: str | None = None) -> Check:
    try:
        with _Probe(prog) as obj:
            if attach is None:
                return Check(name, "ok", "loads (not attached by doctor)")
            attach(obj.programs[prog])
            if probe is None:
                return Check(name, "ok", "loads and attaches")
            n = _wait_hits(obj, probe, trigger)
            return Check(name, "ok" if n else "failed", f"attached, fired {n} times" if n else "attached, never fired")
    except BpfError as err:
        return Check(name, _status_of(err), _one_line(err))


def _busy(seconds: float = 0.05) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def check_ringbuf() -> Check:
    got = []
    try:
        with _Probe("doctor_ringbuf") as obj:
            obj.attach_all()
            with RingBuffer(obj.maps["events"], got.append) as rb:
                for _ in range(20):
                    os.getppid()
                    rb.poll(50)
                    if got:
                        break
        return Check("ring buffer", "ok" if got else "failed", f"{len(got)} records received")
    except BpfError as err:
        return Check("ring buffer", _status_of(err), _one_line(err))


def check_iter(name: str, prog: str, prepare=None) -> Check:
    try:
        with _Probe(prog) as obj:
            keep = prepare() if prepare else None
            out = obj.programs[prog].run_iter()
            if keep:
                keep.close()
            lines = len(out.splitlines())
            return Check(name, "ok" if lines else "failed", f"iterated {lines} objects")
    except BpfError as err:
        return Check(name, _status_of(err), _one_line(err))


def _listening_socket():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def check_cgroup(name: str, prog: str) -> Check:
    root = hostenv.cgroup2_root()
    if not root:
        return Check(name, "missing", "no cgroup v2 mount")
    child = os.path.join(root, f"bpfscope-doctor-{os.getpid()}")
    try:
        os.mkdir(child)
        with _Probe(prog) as obj:
            obj.programs[prog].attach_cgroup(child)
        return Check(name, "ok", "loads and attaches to a child cgroup")
    except BpfError as err:
        return Check(name, _status_of(err), _one_line(err))
    except OSError as err:
        return Check(name, "failed", f"cgroup {child}: {err.strerror}")
    finally:
        try:
            os.rmdir(child)
        except OSError:
            pass


def check_environment() -> list[Check]:
    checks = [
        Check("root", "ok" if os.geteuid() == 0 else "failed", f"euid {os.geteuid()}"),
        Check("BTF", "ok" if os.path.exists(hostenv.BTF_VMLINUX) else "missing", hostenv.BTF_VMLINUX, core=True),
        Check("tracefs", "ok" if os.path.isdir(f"{hostenv.TRACEFS}/events") else "missing", hostenv.TRACEFS),
        Check("bpffs", "ok" if hostenv.is_mounted(hostenv.BPFFS) else "missing", hostenv.BPFFS),
    ]
    cg = hostenv.cgroup2_root()
    checks.append(Check("cgroup v2", "ok" if cg else "missing", cg or "not mounted"))
    return checks


def run_checks() -> list[Check]:
    checks = check_environment()
    libc = _libc_path()
    getppid = lambda: os.getppid()  # noqa: E731
    checks += [
        _check_program("tracepoint", "doctor_tracepoint", lambda p: p.attach(), getppid, "tracepoint"),
        _check_program("raw_tp", "doctor_raw_tp", lambda p: p.attach(), getppid, "raw_tp"),
        _check_program("tp_btf", "doctor_tp_btf", lambda p: p.attach(), lambda: time.sleep(0.001), "tp_btf"),
        _check_program("uprobe", "doctor_uprobe", lambda p: p.attach_uprobe(libc, "getppid"), getppid, "uprobe"),
        _check_program("uretprobe", "doctor_uretprobe", lambda p: p.attach_uprobe(libc, "getppid", retprobe=True),
                       getppid, "uretprobe"),
        _check_program("perf_event", "doctor_perf_event", lambda p: p.attach_perf_event(199), _busy, "perf_event"),
        _check_program("stack map", "doctor_perf_event", lambda p: p.attach_perf_event(199), _busy, "stack map"),
        check_ringbuf(),
        check_iter("iter/task", "doctor_iter_task"),
        check_iter("iter/tcp", "doctor_iter_tcp", _listening_socket),
        _check_program("kprobe", "doctor_kprobe", lambda p: p.attach(), lambda: time.sleep(0.001), "kprobe"),
        _check_program("fentry", "doctor_fentry", lambda p: p.attach(), lambda: time.sleep(0.001), "fentry"),
        check_cgroup("cgroup/connect4", "doctor_connect4"),
        check_cgroup("sockops", "doctor_sockops"),
        _check_program("sk_msg", "doctor_sk_msg", None, None),
        _check_program("tc", "doctor_tc", None, None),
        _check_program("xdp", "doctor_xdp", None, None),
    ]
    for c in checks:
        c.core = c.name in CORE
    return checks


def core_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.core)


def as_json(checks: list[Check]) -> dict:
    return {"core_ok": core_ok(checks), "kernel": os.uname().release, "checks": [asdict(c) for c in checks]}

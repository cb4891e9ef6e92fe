"""perf_event_open for the software cpu-clock (no hardware PMU is needed)."""

from __future__ import annotations

import ctypes
import os

from . import libbpf as L

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 8
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}[os.uname().machine]
_FREQ_BIT = 1 << 10  # perf_event_attr.freq: sample_freq instead of sample_period


class PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_freq", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16), ("_reserved_2", ctypes.c_uint16),
    ]


def online_cpus() -> list[int]:
    """CPUs listed in /sys/devices/system/cpu/online, e.g. '0-1,4'."""
    cpus = []
    with open("/sys/devices/system/cpu/online") as f:
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def perf_event_open_cpu_clock(cpu: int, freq_hz: int, pid: int = -1) -> int:
    attr = PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(PerfEventAttr),
                         config=PERF_COUNT_SW_CPU_CLOCK, sample_freq=freq_hz, flags=_FREQ_BIT)
    fd = L.libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise L.BpfError(L.errno() or 22, f"perf_event_open(cpu-clock, cpu {cpu})")
    return fd


PERF_COUNT_SW_CONTEXT_SWITCHES = 3
_INHERIT_BIT = 1 << 1  # perf_event_attr.inherit: threads and children created later get a copy


def perf_event_open_task_switches(tid: int) -> int:
    """A software context-switches event on one thread, sampling every switch-out
    (sample_period 1: never throttled), inherited by the threads and processes it creates
    afterwards (with the BPF program attached to it). Fires in the thread's own context."""
    attr = PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(PerfEventAttr),
                         config=PERF_COUNT_SW_CONTEXT_SWITCHES, sample_freq=1, flags=_INHERIT_BIT)
    fd = L.libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), tid, -1, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise L.BpfError(L.errno() or 22, f"perf_event_open(context-switches, tid {tid})")
    return fd

"""perf_event_open for software events (cpu-clock, context switches: no hardware PMU is needed)."""

from __future__ import annotations

import ctypes
import os

from . import libbpf as L

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_COUNT_SW_CONTEXT_SWITCHES = 3
PERF_FLAG_FD_CLOEXEC = 8
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}[os.uname().machine]
_FREQ_BIT = 1 << 10  # perf_event_attr.freq: sample_freq instead of sample_period
_INHERIT_BIT = 1 << 1  # perf_event_attr.inherit


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


def perf_event_open_software(config: int, pid: int, cpu: int = -1, sample: int = 0, freq: bool = False,
                             inherit: bool = False, what: str = "") -> int:
    """A software perf event (PERF_COUNT_SW_*) on a task (pid, cpu -1) or a CPU; sample is
    the period, or the frequency with freq; inherit: threads and processes the task
    creates afterwards get a copy (with the BPF program attached to it). what names the
    event in the error."""
    attr = PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(PerfEventAttr), config=config,
                         sample_freq=sample, flags=(_FREQ_BIT if freq else 0) | (_INHERIT_BIT if inherit else 0))
    fd = L.libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise L.BpfError(L.errno() or 22, f"perf_event_open({what or f'software event {config}'})")
    return fd


def perf_event_open_cpu_clock(cpu: int, freq_hz: int, pid: int = -1) -> int:
    return perf_event_open_software(PERF_COUNT_SW_CPU_CLOCK, pid, cpu, freq_hz, freq=True,
                                    what=f"cpu-clock, cpu {cpu}")


def perf_event_open_task_switches(tid: int) -> int:
    """A software context-switches event on one thread, sampling every switch-out
    (sample_period 1: never throttled), inherited by the threads and processes it creates
    afterwards. Fires in the thread's own context."""
    return perf_event_open_software(PERF_COUNT_SW_CONTEXT_SWITCHES, tid, sample=1, inherit=True,
                                    what=f"context-switches, tid {tid}")

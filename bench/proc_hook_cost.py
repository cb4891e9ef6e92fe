"""Where `bpfscope proc --pid` costs the processes it does not follow.

The pipe ping-pong of bench/proc_overhead.py (pinned to CPU 1; every hop a block, a
wake-up and a context switch) runs under each variant below; a followed process
(sleep_loop, 1,000 naps/s) runs on CPU 0 throughout. Variants, in a rotating order each
round, each compared with the baseline of its own round:
  - A/A control: nothing attached, measured as a variant (its spread is the noise);
  - an empty BPF program on a context-switches perf event of the napper's threads
    (inherited): the price of the hook --pid attaches, paid by the others; a task-clock
    event instead (no program): perf's per-task work alone, without that event;
  - empty tp_btf sched_switch program (the hook --pid attached before); the same as
    raw_tp; empty tp_btf sched_switch + sched_wakeup + sched_wakeup_new;
  - proc.bpf.o in follow mode loaded by this process, nothing followed;
  - the same with the napper followed (its spans, stacks, reasons), ring buffer unread,
    with the perf_event hook and with the tp_btf sched_switch hook;
  - `bpfscope proc --pid NAPPER` in its steady state (the exporter, its ring-buffer
    thread and interval work);
  - the same with the exporter pinned to CPU 0 (away from the ping-pong).
Per variant: the median of its per-round speed ratios, and the median extra CPU time
per context switch of the ping-pong (this VM's speed itself varies by up to 20% from run
to run, and that metric moves less with other load). The exporter's CPU time during
the run is printed too. BENCH_ONLY=a,b runs only the variants whose names contain a or b.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from bpfscope.bpf import BpfObject, wait_for_links  # noqa: E402
from bpfscope.exporters.proc import FOLLOW_PROGRAMS  # noqa: E402

HOPS = int(os.environ.get("BENCH_HOPS", 200_000))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
ONLY = [v for v in os.environ.get("BENCH_ONLY", "").split(",") if v]  # variant names containing these
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def build(tmp: Path, name: str) -> Path:
    out = tmp / name
    subprocess.run(["cc", "-O2", "-fno-omit-frame-pointer", "-o", str(out), str(REPO / f"bench/workloads/{name}.c")],
                   check=True)
    return out


def build_bpf(tmp: Path) -> Path:
    out = tmp / "empty_sched.bpf.o"
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    clang = next((c for c in ("clang-19", "clang") if subprocess.run(["which", c], capture_output=True).returncode == 0))
    subprocess.run([clang, "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{arch}", f"-I{REPO / 'bpf/include'}",
                    "-c", str(REPO / "bench/workloads/empty_sched.bpf.c"), "-o", str(out)], check=True)
    return out


PERF_EVENT_BPF = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
SEC("perf_event")
int e_perf_switch(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def build_perf_bpf(tmp: Path) -> Path:
    """An empty program for a perf_event (written here: bench/workloads/ holds the others)."""
    src, out = tmp / "empty_perf.bpf.c", tmp / "empty_perf.bpf.o"
    src.write_text(PERF_EVENT_BPF)
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    clang = next((c for c in ("clang-19", "clang") if subprocess.run(["which", c], capture_output=True).returncode == 0))
    subprocess.run([clang, "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{arch}", f"-I{REPO / 'bpf/include'}",
                    "-c", str(src), "-o", str(out)], check=True)
    return out


def run_workload(prog: Path) -> tuple[float, float]:
    """(context switches per second, CPU ns per switch). The CPU time of the two ping-pong
    processes (wait4's rusage: the parent and the child it reaped) includes what the hooks
    cost inside their switches and wake-ups, but not time other processes took from them:
    a measure of the hook alone that the machine's other load disturbs less."""
    p = subprocess.Popen(["taskset", "-c", "1", str(prog), str(HOPS)], stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    if p.returncode:
        raise SystemExit(f"pipe_pingpong failed ({p.returncode})")
    cpu_ns = (ru.ru_utime + ru.ru_stime) * 1e9
    return 2 * HOPS / (int(out) / 1e9), cpu_ns / (2 * HOPS)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@contextlib.contextmanager
def empty(obj_path: Path, names: tuple[str, ...]):
    obj = BpfObject.open(str(obj_path), only=list(names))
    try:
        for n in names:
            obj.programs[n].attach()
        yield
    finally:
        obj.close()


@contextlib.contextmanager
def proc_object(roots: tuple[int, ...], hook: str = "perf"):
    from bpfscope.exporters.proc import open_object

    obj = open_object(follow=True, roots=roots, switch_hook=hook)
    try:
        yield
    finally:
        obj.close()


@contextlib.contextmanager
def nothing():
    """A/A control: the baseline again, as a variant (the spread of its ratio is the noise)."""
    yield


@contextlib.contextmanager
def perf_bpf_task_event(obj_path: Path, pid: int):
    """An empty BPF program on a per-thread, inherited software context-switches event of
    each thread of pid (sample_period 1: it runs at every switch-out of those threads only)."""
    from bpfscope.bpf.perf import perf_event_open_task_switches

    obj = BpfObject.open(str(obj_path), only=["e_perf_switch"])
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            obj.programs["e_perf_switch"].attach_perf_fd(perf_event_open_task_switches(int(tid)),
                                                         f"the context-switches event of thread {tid}")
        yield  # the links own the events' fds: obj.close() closes them
    finally:
        obj.close()


@contextlib.contextmanager
def task_clock_events(pid: int):
    """A per-thread software task-clock event (counting, no program) on each napper thread:
    perf's context switch of per-task events without the context-switches software event
    (which every switch of the host also looks up): which of the two the others pay for."""
    from bpfscope.bpf.perf import PERF_COUNT_SW_TASK_CLOCK, perf_event_open_software

    fds = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            fds.append(perf_event_open_software(PERF_COUNT_SW_TASK_CLOCK, int(tid), inherit=True))
        yield
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def perf_task_event(pid: int):
    """A per-task software event (context-switches) on one process: what attaching a BPF
    program to the followed tasks' own perf events would put on every host switch."""
    p = subprocess.Popen(["perf", "stat", "-e", "context-switches", "-p", str(pid)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        yield
    finally:
        p.send_signal(2)
        p.wait(20)


@contextlib.contextmanager
def exporter(napper: int, cpu: int | None, used: list[float]):
    pre = ["taskset", "-c", str(cpu)] if cpu is not None else []
    p = subprocess.Popen(pre + [sys.executable, "-m", "bpfscope", "proc", "--json", "--interval", "1", "--pid",
                                str(napper)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        if not wait_for_links(p, at_least=len(FOLLOW_PROGRAMS), timeout_s=60):
            raise SystemExit(f"bpfscope proc failed: {p.stderr.read().decode()}")
        time.sleep(2.5)  # steady state: past start-up (symbol tables) and two intervals
        t0, c0 = time.monotonic(), cpu_ticks(p.pid)
        yield
        used.append((cpu_ticks(p.pid) - c0) / CLK_TCK / (time.monotonic() - t0))
    finally:
        p.terminate()
        p.wait(20)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/proc_hook_cost.py needs root")
    from bpfscope.hostenv import ensure_mounts
    ensure_mounts()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        tmp = Path(d)
        prog = build(tmp, "pipe_pingpong")
        napper_bin = build(tmp, "sleep_loop")
        eobj = build_bpf(tmp)
        pobj = build_perf_bpf(tmp)
        napper = subprocess.Popen(["taskset", "-c", "0", str(napper_bin), "10000000", "1"], stdin=subprocess.PIPE)
        napper.stdin.write(b"go\n")
        napper.stdin.flush()
        cpu_full: list[float] = []
        cpu_pinned: list[float] = []
        variants = {
            "A/A: nothing attached (control)": nothing,
            "perf_event switches+BPF on napper (empty)": lambda: perf_bpf_task_event(pobj, napper.pid),
            "task-clock event on napper (no BPF)": lambda: task_clock_events(napper.pid),
            "tp_btf switch (empty)": lambda: empty(eobj, ("e_switch_btf",)),
            "raw_tp switch (empty)": lambda: empty(eobj, ("e_switch_raw",)),
            "tp_btf switch+wakeups (empty)": lambda: empty(eobj, ("e_switch_btf", "e_wakeup_btf",
                                                                  "e_wakeup_new_btf")),
            "perf stat -e context-switches -p napper": lambda: perf_task_event(napper.pid),
            "proc.bpf.o follow, nothing followed": lambda: proc_object(()),
            "proc.bpf.o follow, napper followed": lambda: proc_object((napper.pid,)),
            "  same, tp_btf sched_switch hook": lambda: proc_object((napper.pid,), "tp_btf"),
            "bpfscope proc --pid napper": lambda: exporter(napper.pid, None, cpu_full),
            "  same, exporter on CPU 0": lambda: exporter(napper.pid, 0, cpu_pinned),
        }
        names = [n for n in variants if not ONLY or any(o in n for o in ONLY)]
        speed: dict[str, list[float]] = {n: [] for n in names}  # ratio to the round's baseline
        cost: dict[str, list[float]] = {n: [] for n in names}  # extra CPU ns per switch
        base_cpu: list[float] = []
        try:
            for r in range(ROUNDS):
                base, bcpu = run_workload(prog)
                base_cpu.append(bcpu)
                order = names[r % len(names):] + names[: r % len(names)]
                for n in order:
                    with variants[n]():
                        s, cpu = run_workload(prog)
                    speed[n].append(s / base)
                    cost[n].append(cpu - bcpu)
        finally:
            napper.kill()
            napper.wait()
    med_base = statistics.median(base_cpu)
    print(f"pipe ping-pong on CPU 1, {HOPS:,} round trips per run, {ROUNDS} rounds; baseline CPU per switch "
          f"{med_base:,.0f} ns (median)")
    print(f"  {'variant':40s} {'speed':>6s} {'+ns/sw':>7s} {'cpu':>6s}   speed per round (vs that round's baseline)")
    for n in names:
        extra = statistics.median(cost[n])
        print(f"  {n:40s} {statistics.median(speed[n]):6.3f} {extra:7.0f} {med_base / (med_base + extra):6.3f}   "
              + " ".join(f"{x:.3f}" for x in speed[n]))
    print("  speed: median of the per-round ratios; +ns/sw: median extra CPU per context switch of the "
          "ping-pong; cpu: the speed that CPU cost alone allows")
    if cpu_full or cpu_pinned:
        print("exporter CPU during the run (fraction of one CPU): "
              f"unpinned {' '.join(f'{x:.3f}' for x in cpu_full)}; on CPU 0 {' '.join(f'{x:.3f}' for x in cpu_pinned)}")


if __name__ == "__main__":
    main()

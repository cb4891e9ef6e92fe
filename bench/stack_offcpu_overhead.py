"""Cost of `bpfscope stack offcpu` (system-wide) on a context-switch-heavy workload.

bench/workloads/pipe_pingpong.c bounces a byte between two processes over pipes, both
pinned to one CPU (every hop is a block, a wake-up and a context switch). Each round runs
it with nothing attached, with an empty sched_switch program (the floor: the hook alone,
bench/workloads/sched_switch_noop.bpf.c) and with `bpfscope stack offcpu` in a few
configurations, and with nothing attached again (an A/A control: its ratios show the
noise), in a different order each round. Printed: each round's ratio to that
round's baseline, their median, and best against best (other load only slows a run
down). Then one more run per program with BPF run-time statistics on (BPF_ENABLE_STATS,
off again when its fd closes): the program's mean ns per call.
Target: the default configuration at least 0.90x of the baseline speed.

    sudo flock -x /tmp/bpfscope.lock .venv/bin/python bench/stack_offcpu_overhead.py
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from bpfscope.bpf import wait_for_links  # noqa: E402

HOPS = int(os.environ.get("BENCH_HOPS", 200_000))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
BASE = "baseline (nothing attached)"
CONTROL = "control (nothing attached again)"  # an A/A variant: its ratios are the noise
FLOOR = "empty sched_switch program"
DEFAULT = "bpfscope stack offcpu"
# the default --min-block (10 us) leaves the ping-pong's blocks (~3 us) uncounted: they cost
# the hook and a cached user stack only; --min-block 0 counts (and walks) every one
VARIANTS = {DEFAULT: [], "stack offcpu --kernel-only": ["--kernel-only"],
            "stack offcpu --min-block 0": ["--min-block", "0"],
            "stack offcpu, user frames as addrs": [], "--min-block 0, user frames as addrs": ["--min-block", "0"]}
# user stacks as plain addresses (BPFSCOPE_STACK_BUILD_ID=0) against the default
# (build id + file offset per frame, BPF_F_STACK_BUILD_ID): what the build-id walk costs
VARIANT_ENV = {"stack offcpu, user frames as addrs": {"BPFSCOPE_STACK_BUILD_ID": "0"},
               "--min-block 0, user frames as addrs": {"BPFSCOPE_STACK_BUILD_ID": "0"}}


def build(tmp: Path) -> tuple[Path, Path]:
    prog = tmp / "pipe_pingpong"
    subprocess.run(["cc", "-O2", "-fno-omit-frame-pointer", "-o", str(prog),
                    str(REPO / "bench/workloads/pipe_pingpong.c")], check=True)
    noop = tmp / "sched_switch_noop.bpf.o"
    arch = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    clang = next((c for c in ("clang-19", "clang") if subprocess.run(["sh", "-c", f"command -v {c}"],
                                                                     capture_output=True).returncode == 0), "clang")
    subprocess.run([clang, "-target", "bpf", "-O2", "-g", f"-D__TARGET_ARCH_{arch}", f"-I{REPO / 'bpf/include'}",
                    "-c", str(REPO / "bench/workloads/sched_switch_noop.bpf.c"), "-o", str(noop)], check=True)
    return prog, noop


def run_workload(prog: Path) -> tuple[float, float]:
    """(switches per second of wall time, per second of the workload's own CPU time). Both
    ends on one CPU: every hop is one direct context switch (across the two CPUs of a VM
    the speed depends on idle wake-up latency and placement more than on the hook). The
    CPU time (rusage: the precise runtime of both processes, which includes the hook, run
    in __schedule) leaves out what other processes ran on that CPU meanwhile."""
    proc = subprocess.Popen(["taskset", "-c", "1", str(prog), str(HOPS)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{prog.name} failed with status {proc.returncode}")
    switches = 2 * HOPS  # round trips -> context switches (at least)
    return switches / (int(out) / 1e9), switches / (usage.ru_utime + usage.ru_stime)


@contextmanager
def attached(name: str, noop: Path):
    """The variant `name` attached system-wide; yields the pid holding its programs."""
    if name in (BASE, CONTROL):
        yield None
        return
    if name == FLOOR:
        from bpfscope.bpf import BpfObject

        obj = BpfObject(noop)
        try:
            obj.load()
            obj.programs["switch_noop"].attach()
            yield os.getpid()
        finally:
            obj.close()
        return
    proc = subprocess.Popen([sys.executable, "-m", "bpfscope", "stack", "offcpu", "--json", "--interval", "1",
                             *VARIANTS[name]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src"), **VARIANT_ENV.get(name, {})})
    try:
        if not wait_for_links(proc, timeout_s=60):
            raise SystemExit(f"bpfscope stack offcpu failed: {proc.stderr.read().decode()}")
        time.sleep(0.2)  # the first link is up; let the others follow
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


@contextmanager
def bpf_stats():
    """BPF run-time statistics on while inside (the kernel turns them off when the fd closes)."""
    from bpfscope.bpf import libbpf as L

    fd = L.lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    if fd < 0:
        raise SystemExit(f"BPF_ENABLE_STATS failed: {os.strerror(-fd if fd < -1 else L.errno())}")
    try:
        yield
    finally:
        os.close(fd)


def program_costs(pid: int) -> list[tuple[str, int, int]]:
    """(name, run_cnt, run_time_ns) of the programs process `pid` holds (links and program
    fds name them in /proc/PID/fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids.update(int(m) for m in re.findall(r"^prog_id:\s*(\d+)", f.read(), re.M))
        except OSError:
            continue
    out = []
    for prog_id in sorted(ids):
        p = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], capture_output=True,
                                      text=True, check=True).stdout)
        out.append((p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0)))
    return out


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/stack_offcpu_overhead.py needs root")
    from bpfscope.hostenv import ensure_mounts
    ensure_mounts()
    names = [BASE, CONTROL, FLOOR, *VARIANTS]
    with tempfile.TemporaryDirectory() as d:
        prog, noop = build(Path(d))
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[:r % len(names)]:  # a different order each round
                with attached(name, noop):
                    runs[name].append(run_workload(prog))
        costs = {}
        for name in names[2:]:
            with attached(name, noop) as pid, bpf_stats():
                speed = run_workload(prog)[0]
                costs[name] = (speed, program_costs(pid))
    print(f"pipe ping-pong pinned to one CPU, {HOPS:,} round trips per run, {ROUNDS} interleaved rounds")
    medians = {}
    for i, what in enumerate(("wall time", "the workload's CPU time")):
        b = max(s[i] for s in runs[BASE])
        print(f"speed in switches per second of {what}:")
        print(f"  {'':34s} {'best':>10s}  best/best  per-round ratios (median)")
        for name in names:
            speeds = [s[i] for s in runs[name]]
            ratios = [s[i] / base[i] for s, base in zip(runs[name], runs[BASE])]
            medians[name, i] = statistics.median(ratios)
            print(f"  {name:34s} {max(speeds):10,.0f}  {max(speeds) / b:9.3f}  "
                  f"{' '.join(f'{x:.3f}' for x in ratios)}  ({medians[name, i]:.3f})")
    print("with BPF run-time statistics on (they add ~2 clock reads per call):")
    for name, (speed, progs) in costs.items():
        for pname, cnt, ns in progs:
            print(f"  {name:34s} {pname:16s} {cnt:10,} calls {ns / max(cnt, 1):7.0f} ns per call "
                  f"({speed:,.0f} switches/s)")
    best = max(s[0] for s in runs[DEFAULT]) / max(s[0] for s in runs[BASE])
    print(f"RATIO stack_offcpu/baseline speed = {best:.3f} best/best, {medians[DEFAULT, 0]:.3f} median per round "
          f"(wall time), {medians[DEFAULT, 1]:.3f} median per round (CPU time) (target 0.90)")


if __name__ == "__main__":
    main()

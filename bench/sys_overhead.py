"""Cost of `bpfscope sys` on a syscall-bound workload, side by side in one run.

A C loop of 2,000,000 getppid() calls (bench/workloads/getppid_loop.c) is timed:
  1. with nothing attached (baseline),
  2. with `bpfscope sys` running (raw_tp sys_enter + per-CPU hash count),
  3. with an empty BPF program on the same hook: the floor any per-syscall BPF counter pays
     on this kernel (the syscall tracepoint's slow path and the BPF dispatch),
runs interleaved, best of ROUNDS each; prints ns per call and the ratios to the baseline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

CALLS = 2_000_000
ROUNDS = 5
EMPTY_PROG = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
SEC("raw_tp/sys_enter")
int BPF_PROG(empty, struct pt_regs *regs, long id) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def build(tmp: Path) -> tuple[Path, Path]:
    loop = tmp / "getppid_loop"
    subprocess.run(["cc", "-O2", "-o", str(loop), str(REPO / "bench/workloads/getppid_loop.c")], check=True)
    src = tmp / "empty.bpf.c"
    src.write_text(EMPTY_PROG)
    obj = tmp / "empty.bpf.o"
    clang = shutil.which("clang-19") or shutil.which("clang")
    subprocess.run([clang, "-target", "bpf", "-O2", "-g", f"-I{REPO / 'bpf/include'}", "-c", str(src), "-o", str(obj)],
                   check=True)
    return loop, obj


def time_loop(loop: Path) -> float:
    out = subprocess.run([str(loop), str(CALLS)], capture_output=True, text=True, check=True).stdout
    return int(out) / CALLS  # ns per call


def with_sys_exporter(loop: Path) -> float:
    from bpfscope.bpf import wait_for_links

    proc = subprocess.Popen([sys.executable, "-m", "bpfscope", "sys", "--json", "--interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        if not wait_for_links(proc, timeout_s=60):
            raise SystemExit(f"bpfscope sys failed: {proc.stderr.read().decode()}")
        return time_loop(loop)
    finally:
        proc.terminate()
        proc.wait(10)


def with_empty_program(loop: Path, obj_path: Path) -> float:
    from bpfscope.bpf import BpfObject

    with BpfObject.open(str(obj_path)) as obj:
        obj.attach_all()
        return time_loop(loop)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/sys_overhead.py needs root")
    from bpfscope.hostenv import ensure_mounts
    ensure_mounts()
    with tempfile.TemporaryDirectory() as d:
        loop, empty = build(Path(d))
        base, sysx, floor = [], [], []
        for _ in range(ROUNDS):
            base.append(time_loop(loop))
            sysx.append(with_sys_exporter(loop))
            floor.append(with_empty_program(loop, empty))
    b, s, f = min(base), min(sysx), min(floor)
    print(f"getppid loop, {CALLS:,} calls, best of {ROUNDS} interleaved rounds")
    print(f"  {'baseline (nothing attached)':42s} {b:7.1f} ns/call  speed 1.00x")
    print(f"  {'bpfscope sys running':42s} {s:7.1f} ns/call  speed {b / s:.2f}x")
    print(f"  {'empty raw_tp sys_enter program (floor)':42s} {f:7.1f} ns/call  speed {b / f:.2f}x")
    print(f"  bpfscope sys adds {s - b:.0f} ns/call, of which {f - b:.0f} ns is the hook itself "
          f"and {s - f:.0f} ns the counting")
    print(f"RATIO sys/baseline speed = {b / s:.2f} (target 0.80)")


if __name__ == "__main__":
    main()

"""Cost of `bpfscope stack offcpu` (system-wide) on a context-switch-heavy workload.

bench/workloads/pipe_pingpong.c bounces a byte between two processes over pipes, both
pinned to one CPU (every hop is a block, a wake-up and a context switch). It runs with nothing
attached and with `bpfscope stack offcpu` running, interleaved, ROUNDS times each; the
best switches/s of each are compared (other load only slows a run down). Target: at least 0.90x of the baseline speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from bpfscope.bpf import wait_for_links  # noqa: E402

HOPS = int(os.environ.get("BENCH_HOPS", 200_000))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))


def build(tmp: Path) -> Path:
    out = tmp / "pipe_pingpong"
    subprocess.run(["cc", "-O2", "-fno-omit-frame-pointer", "-o", str(out),
                    str(REPO / "bench/workloads/pipe_pingpong.c")], check=True)
    return out


def run_workload(prog: Path) -> float:
    # both ends on one CPU: every hop is one direct context switch (across the two CPUs of
    # a VM the speed depends on idle wake-up latency and placement more than on the hook)
    ns = int(subprocess.run(["taskset", "-c", "1", str(prog), str(HOPS)], capture_output=True, text=True,
                            check=True).stdout)
    return 2 * HOPS / (ns / 1e9)  # round trips -> context switches per second (at least)


def with_offcpu(prog: Path, extra: list[str]) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "bpfscope", "stack", "offcpu", "--json", "--interval", "1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        if not wait_for_links(proc, timeout_s=60):
            raise SystemExit(f"bpfscope stack offcpu failed: {proc.stderr.read().decode()}")
        time.sleep(0.2)  # the first link is up; let the other CPUs' links follow
        return run_workload(prog)
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/stack_offcpu_overhead.py needs root")
    from bpfscope.hostenv import ensure_mounts
    ensure_mounts()
    # the default --min-block (10 us) leaves the ping-pong's blocks (~3 us) uncounted: they
    # cost the hook and a cached user stack only; --min-block 0 counts (and walks) every one
    variants = {"bpfscope stack offcpu": [], "bpfscope stack offcpu --min-block 1000": ["--min-block", "1000"],
                "bpfscope stack offcpu --min-block 0": ["--min-block", "0"]}
    with tempfile.TemporaryDirectory() as d:
        prog = build(Path(d))
        base: list[float] = []
        runs: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(ROUNDS):
            base.append(run_workload(prog))
            for name, extra in variants.items():
                runs[name].append(with_offcpu(prog, extra))
    b = max(base)
    print(f"pipe ping-pong, {HOPS:,} round trips per run, best of {ROUNDS} interleaved rounds")
    print(f"  {'baseline (nothing attached)':42s} {b:12,.0f} switches/s  speed 1.000x")
    for name in variants:
        s = max(runs[name])
        print(f"  {name:42s} {s:12,.0f} switches/s  speed {s / b:.3f}x")
    print(f"RATIO stack_offcpu/baseline speed = {max(runs['bpfscope stack offcpu']) / b:.3f} "
          f"(target 0.90)")


if __name__ == "__main__":
    main()

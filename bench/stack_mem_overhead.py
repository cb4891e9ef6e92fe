"""Cost of `bpfscope stack mem --pid` on an allocation-heavy loop (malloc + free,
bench/workloads/alloc_loop.c): nothing attached, --sample-every 1 and --sample-every 100,
interleaved, best of ROUNDS. Every call still enters the uprobe (the sampling only
skips the stack walk and the map updates). Target: --sample-every 100 >= 0.80x.
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
sys.path.insert(0, str(REPO / "bench"))

CALLS = int(os.environ.get("BENCH_CALLS", "300000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def run(prog: Path, sample_every: int | None) -> float:
    work = subprocess.Popen([str(prog), str(CALLS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    exporter = None
    try:
        if sample_every is not None:
            from bpfscope.bpf import wait_for_links

            exporter = subprocess.Popen([sys.executable, "-m", "bpfscope", "stack", "mem", "--pid", str(work.pid),
                                         "--sample-every", str(sample_every), "--json", "--interval", "1"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
            if not wait_for_links(exporter, timeout_s=60):
                raise SystemExit(f"bpfscope stack mem failed: {exporter.stderr.read().decode()}")
            time.sleep(0.3)  # every probe attached
        out, _ = work.communicate("go\n", timeout=300)
        return int(out) / CALLS  # ns per malloc+free
    finally:
        if exporter:
            exporter.terminate()
            exporter.wait(20)
        work.kill()


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench/stack_mem_overhead.py needs root")
    from bpfscope.hostenv import ensure_mounts
    ensure_mounts()
    variants = {"nothing attached": None, "stack mem --sample-every 1": 1, "stack mem --sample-every 100": 100}
    with tempfile.TemporaryDirectory() as d:
        prog = Path(d) / "alloc_loop"
        subprocess.run(["cc", "-O2", "-fno-omit-frame-pointer", "-o", str(prog),
                        str(REPO / "bench/workloads/alloc_loop.c")], check=True)
        runs: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(ROUNDS):
            for name, n in variants.items():
                runs[name].append(run(prog, n))
    best = {k: min(v) for k, v in runs.items()}
    b = best["nothing attached"]
    print(f"alloc_loop, {CALLS:,} x (malloc + free), best of {ROUNDS} interleaved rounds")
    for name, ns in best.items():
        ratios = [base / x for x, base in zip(runs[name], runs["nothing attached"])]
        print(f"  {name:32s} {ns:9.1f} ns per malloc+free  speed {b / ns:.3f}x  "
              f"per round {' '.join(f'{r:.4f}' for r in ratios)}")
    print(f"RATIO stack_mem_sample1/baseline speed = {b / best['stack mem --sample-every 1']:.3f}")
    print(f"RATIO stack_mem_sample100/baseline speed = {b / best['stack mem --sample-every 100']:.3f} (target 0.80)")


if __name__ == "__main__":
    main()

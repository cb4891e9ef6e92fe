"""The FSR benchmark of `bpfscope fuse`: native against plain, cached, passthrough and fast on the
same data in one run (10,000 files of 4 KiB cold and warm, a 512 MiB file read sequentially and at
random, stat of every file, 2,000 files created), then the figures next to their targets:
- cold small-file read: fast >= 2x plain and >= 0.5x native; warm: fast >= 0.9x native
- sequential read: passthrough >= 0.9x native (plain printed beside it)
- FUSE requests per cold small-file read: plain about 5, fast <= 2
Needs root. BENCH_DIR sets where the data goes (default: a temporary directory under /var/tmp,
on disk); BENCH_FILES / BENCH_BIG_MIB shrink it for a quick run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from bpfscope.fuse.bench import render, run_bench  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("fuse_fsr: needs root (mounts, drop_caches, tracepoints)")
        return 2
    own = "BENCH_DIR" not in os.environ
    d = os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="bpfscope-fsr-", dir="/var/tmp")
    try:
        r = run_bench(d, ["plain", "cached", "passthrough", "fast"],
                      files=int(os.environ.get("BENCH_FILES", 10_000)),
                      big_mib=int(os.environ.get("BENCH_BIG_MIB", 512)))
    finally:
        if own:
            shutil.rmtree(d, ignore_errors=True)
    print(render(r))
    v = r["variants"]
    cold_fast_vs_plain = v["fast"]["cold_small"]["throughput"] / v["plain"]["cold_small"]["throughput"]
    checks = [
        ("cold small read: fast / plain", cold_fast_vs_plain, ">=", 2.0),
        ("cold small read: fast / native", v["fast"]["cold_small"]["ratio_to_native"], ">=", 0.5),
        ("warm small read: fast / native", v["fast"]["warm_small"]["ratio_to_native"], ">=", 0.9),
        ("sequential read: passthrough / native", v["passthrough"]["seq_read"]["ratio_to_native"], ">=", 0.9),
        ("sequential read: plain / native (for comparison)", v["plain"]["seq_read"]["ratio_to_native"], None, None),
        ("sequential read, source in page cache: passthrough / native",
         v["passthrough"]["seq_read_src_cached"]["ratio_to_native"], ">=", 0.9),
        ("sequential read, source in page cache: plain / native (for comparison)",
         v["plain"]["seq_read_src_cached"]["ratio_to_native"], None, None),
    ]
    for mode, target in (("plain", None), ("fast", 2.0)):
        rq = v[mode]["cold_small"].get("requests_per_op")
        if rq is not None:
            checks.append((f"requests per cold small read: {mode} {v[mode]['cold_small']['requests']}", rq,
                           "<=" if target else None, target))
    print()
    for name, got, op, target in checks:
        verdict = ""
        if op == ">=":
            verdict = "met" if got >= target else "MISSED"
        elif op == "<=":
            verdict = "met" if got <= target else "MISSED"
        print(f"{name}: {got:.2f}" + (f" (target {op} {target}: {verdict})" if op else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""BPF time per connection of `bpfscope net` (default options) under the short-connection
workload of bench/net_overhead.py: run_time_ns / run_cnt of each net_* program with
kernel.bpf_stats_enabled=1 (set back to 0 at the end), divided by the connections made.

    sudo PYTHONPATH=src .venv/bin/python bench/net_bpf_time.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import net_overhead as bench  # noqa: E402


def net_programs() -> dict[int, dict]:
    progs = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "show"]))
    return {p["id"]: p for p in progs if p.get("name", "").startswith("net_")}


def main() -> None:
    exporter = subprocess.Popen([sys.executable, "-m", "bpfscope", "net", "--quiet", "--interval", "1"],
                                cwd=bench.REPO, stdout=subprocess.DEVNULL)
    try:
        bench.wait_attached(exporter)
        bench.time.sleep(2.5)  # past its first snapshots
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
        try:
            before = net_programs()
            rate = bench.run_once("short", True)
            after = net_programs()
        finally:
            subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=True)
    finally:
        exporter.terminate()
        exporter.wait(30)
    conns, hooks = rate * bench.SHORT_S, 0
    for pid, p in sorted(after.items()):
        runs = p.get("run_cnt", 0) - before.get(pid, {}).get("run_cnt", 0)
        ns = p.get("run_time_ns", 0) - before.get(pid, {}).get("run_time_ns", 0)
        if runs:
            hooks += ns if not p["name"].startswith("net_iter") else 0
            print(f"{p['name']:<16} {runs / conns:6.2f} runs/conn {ns / runs:6.0f} ns/run {ns / conns:6.0f} ns/conn")
    print(f"{rate:.0f} conn/s; hooks (iterators left out) {hooks / conns:.0f} ns of BPF time per connection")


if __name__ == "__main__":
    main()

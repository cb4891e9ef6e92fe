"""Snapshot of every TCP connection with its internals: bpfscope net vs `ss -tin`.

10,000 established loopback connections (20,000 sockets; the client and the server are
separate processes, bench/net_workload.py, because RLIMIT_NOFILE is 20,000 here). Timed,
interleaved, best and median of ROUNDS each:
  1. bpfscope: one iter/tcp run (one fixed-size record per socket, bpf_seq_write) unpacked
     in Python into one tuple per socket with owner and every internal, while the kernel
     fills the next chunk (NetKernel.snapshot_tuples());
  1b. the same as dicts with addresses and names decoded (NetKernel.snapshot());
  2. bpfscope: the schema-v1 records the exporter emits (NetExporter.collect());
  3. `ss -tin` listing the same sockets (netlink sock_diag + tcp_info), output read to the end;
  4. `ss -tinp`: ss with owners, which it finds by walking every /proc/<pid>/fd.
Prints the times and the ratios ss / bpfscope (target: >= 3x for 1 vs 3), and the resident
memory of `bpfscope net` processes (the CLI as users run it: the table, and --json with
--events and --latency) after five intervals over the same 10,000 connections (target
< 150 MB).

    sudo .venv/bin/python bench/net_snapshot.py [--conns 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
WORKLOAD = REPO / "bench" / "net_workload.py"


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKLOAD), *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def cli_rss_mib(args: list[str], intervals: int = 5) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB of `bpfscope net ARGS --interval 1` after `intervals` intervals."""
    proc = subprocess.Popen([sys.executable, "-m", "bpfscope", "net", *args, "--interval", "1"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={"PYTHONPATH": str(REPO / "src"),
                                                                                     "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                                     "COLUMNS": "200"})
    try:
        time.sleep(intervals + 3)  # start-up (imports, BPF load, the first owner walk), then the intervals
        if proc.poll() is not None:
            raise SystemExit(f"bpfscope net {' '.join(args)} exited: {proc.stderr.read().decode()}")
        with open(f"/proc/{proc.pid}/status") as f:
            status = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmRSS", "VmHWM"))}
        return int(status["VmRSS"]) / 1024, int(status["VmHWM"]) / 1024
    finally:
        proc.terminate()
        proc.wait(30)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from bpfscope.exporters.net import NetExporter
    from bpfscope.hostenv import ensure_mounts

    ensure_mounts()
    srv = start("server", "--conns", args.conns)
    port = int(srv.stdout.readline().split()[1])
    cli = start("client", "--port", port, "--conns", args.conns)
    try:
        assert cli.stdout.readline().strip() == "done" and srv.stdout.readline().strip() == "done"
        exp = NetExporter()
        exp.open()
        try:
            n_socks = len(exp.kernel.snapshot())
            n_ss = len(subprocess.run(["ss", "-tinH"], capture_output=True, text=True, check=True).stdout.splitlines())
            exp.collect(1.0)  # owners found once; what follows is the steady state
            cases = {
                "bpfscope snapshot": lambda: exp.kernel.snapshot_tuples(),
                "bpfscope dicts": lambda: exp.kernel.snapshot(),
                "bpfscope records": lambda: exp.collect(1.0),
                "ss -tin": lambda: subprocess.run(["ss", "-tin"], stdout=subprocess.PIPE, check=True),
                "ss -tinp": lambda: subprocess.run(["ss", "-tinp"], stdout=subprocess.PIPE, check=True),
            }
            times: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(args.rounds):
                for name, fn in cases.items():
                    times[name].append(timed(fn))
            rss_mib = _rss_kib() / 1024  # this process is the exporter: NetExporter with 20,000 sockets
        finally:
            exp.close()
        rss_cli = {" ".join(a): cli_rss_mib(a) for a in (["--quiet"], [], ["--json", "--events", "--latency"])}
    finally:
        for p in (cli, srv):
            p.stdin.close()
            p.wait(60)

    print(f"{args.conns} loopback connections: bpfscope saw {n_socks} TCP sockets, ss listed {n_ss // 2} "
          f"(best / median of {args.rounds})")
    for name, ts in times.items():
        print(f"  {name:<18} {min(ts) * 1000:8.1f} ms  {statistics.median(ts) * 1000:8.1f} ms")
    base = min(times["bpfscope snapshot"])
    rec = min(times["bpfscope records"])
    print(f"ratio ss -tin / bpfscope snapshot:   {min(times['ss -tin']) / base:5.2f}x  (target >= 3x)")
    print(f"ratio ss -tin / bpfscope dicts:      {min(times['ss -tin']) / min(times['bpfscope dicts']):5.2f}x")
    print(f"ratio ss -tin / bpfscope records:    {min(times['ss -tin']) / rec:5.2f}x")
    print(f"ratio ss -tinp / bpfscope records:   {min(times['ss -tinp']) / rec:5.2f}x  (both with owners)")
    print(f"this process (NetExporter in-process) after {args.rounds * 2 + 1} snapshots: {rss_mib:.0f} MiB resident")
    for a, (rss, hwm) in rss_cli.items():
        print(f"bpfscope net {a or '(the live table)':<34} resident {rss:5.0f} MiB, peak {hwm:5.0f} MiB"
              f"  (target < 150 MB = 143 MiB)")


if __name__ == "__main__":
    main()

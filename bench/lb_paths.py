"""Four paths to the same 10 backends, at N = 10, 1,000 and 10,000 services, in one run:

  direct      the client connects to a backend address itself
  bpfscope    the client connects to a service VIP; cgroup/connect4 picks the backend
  iptables    kube-proxy's iptables mode: KUBE-SERVICES -> KUBE-SVC (statistic random) -> DNAT
  nftables    kube-proxy's nftables mode: one verdict map on (vip . port) -> numgen -> DNAT

Everything runs inside a network namespace this script creates and deletes (its own lo);
the client (bench/workloads/tcp_rr_client.c) makes COUNT short connections (connect, one
byte each way, close) to targets picked at random, and prints connect() p50/p99 and
requests/s. Also timed: applying N services with 10 backends each, and one service update.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

NS = f"bpfscope-lbbench-{os.getpid()}"
BACKENDS = [9001 + i for i in range(10)]
COUNT = int(os.environ.get("LB_BENCH_COUNT", "6000"))
ROUNDS = int(os.environ.get("LB_BENCH_ROUNDS", "5"))
SIZES = [int(x) for x in os.environ.get("LB_BENCH_SIZES", "10,1000,10000").split(",")]


def vip(i: int) -> str:
    return f"127.77.{(i + 1) // 256}.{(i + 1) % 256}"


def sh(*cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True).stdout


def in_ns(*cmd: str, stdin: str | None = None) -> str:
    return sh("ip", "netns", "exec", NS, *cmd, stdin=stdin)


def build(tmp: Path) -> tuple[Path, Path]:
    out = []
    for name, extra in (("tcp_rr_server", ["-pthread"]), ("tcp_rr_client", [])):
        binary = tmp / name
        subprocess.run(["cc", "-O2", *extra, "-o", str(binary), str(REPO / f"bench/workloads/{name}.c")], check=True)
        out.append(binary)
    return out[0], out[1]


def run_client(client: Path, targets: Path, cgroup: Path | None) -> tuple[float, float, float, int]:
    # join the cgroup before entering the namespace: `ip netns exec` mounts its own /sys
    join = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup else ""
    line = sh("sh", "-c", f"{join}exec ip netns exec {NS} {client} {targets} {COUNT}").split()
    p50, p99, rps, fails = int(line[0]), int(line[1]), float(line[2]), int(line[3])
    return p50 / 1000, p99 / 1000, rps, fails


def iptables_rules(n: int) -> str:
    lines = ["*nat", ":KUBE-SERVICES - [0:0]"]
    lines += [f":KUBE-SVC-{i} - [0:0]" for i in range(n)]
    lines += [f":KUBE-SEP-{j} - [0:0]" for j in range(len(BACKENDS))]
    lines.append("-A OUTPUT -j KUBE-SERVICES")
    for i in range(n):
        lines.append(f"-A KUBE-SERVICES -d {vip(i)}/32 -p tcp -m tcp --dport 8080 -j KUBE-SVC-{i}")
    for i in range(n):
        k = len(BACKENDS)
        for j in range(k - 1):
            lines.append(f"-A KUBE-SVC-{i} -m statistic --mode random --probability {1 / (k - j):.10f} "
                         f"-j KUBE-SEP-{j}")
        lines.append(f"-A KUBE-SVC-{i} -j KUBE-SEP-{k - 1}")
    for j, port in enumerate(BACKENDS):
        lines.append(f"-A KUBE-SEP-{j} -p tcp -j DNAT --to-destination 127.0.0.1:{port}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_rules(n: int) -> str:
    eps = "\n".join(f"  chain ep{j} {{ meta l4proto tcp dnat to 127.0.0.1:{p}; }}" for j, p in enumerate(BACKENDS))
    pick = ", ".join(f"{j} : goto ep{j}" for j in range(len(BACKENDS)))
    svcs = "\n".join(f"  chain svc{i} {{ numgen random mod {len(BACKENDS)} vmap {{ {pick} }}; }}" for i in range(n))
    elements = ",\n    ".join(f"{vip(i)} . 8080 : goto svc{i}" for i in range(n))
    return (f"table ip kp {{\n{eps}\n{svcs}\n"
            f"  map services {{ type ipv4_addr . inet_service : verdict;\n    elements = {{ {elements} }}; }}\n"
            f"  chain output {{ type nat hook output priority -100; ip daddr . tcp dport vmap @services; }}\n}}\n")


def services(n: int):
    from bpfscope.lb.config import Backend, Service

    backends = [Backend(address="127.0.0.1", port=p) for p in BACKENDS]
    return [Service(name=f"svc{i}", vip=vip(i), port=8080, backends=backends) for i in range(n)]


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("bench/lb_paths.py needs root")
    for tool in ("ip", "iptables-restore", "nft", "cc"):
        if not shutil.which(tool):
            raise SystemExit(f"bench/lb_paths.py needs {tool}")
    from bpfscope.hostenv import cgroup2_root, ensure_mounts
    from bpfscope.lb.kernel import LbKernel

    ensure_mounts()
    tmp = Path(tempfile.mkdtemp(prefix="bpfscope-lbbench-"))
    cgroup = Path(cgroup2_root()) / f"bpfscope-lbbench-{os.getpid()}"
    pin = f"/sys/fs/bpf/bpfscope-lbbench-{os.getpid()}"
    server = None
    results = []
    try:
        server_bin, client = build(tmp)
        sh("ip", "netns", "add", NS)
        in_ns("ip", "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", NS, str(server_bin), str(BACKENDS[0]), str(len(BACKENDS))],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        cgroup.mkdir()
        direct = tmp / "direct.txt"
        direct.write_text("".join(f"127.0.0.1 {p}\n" for p in BACKENDS))
        for n in SIZES:
            targets = tmp / f"vips{n}.txt"
            targets.write_text("".join(f"{vip(i)} 8080\n" for i in range(n)))
            row = {"n": n}
            with LbKernel(pin) as k:
                k.install(str(cgroup))
                t0 = time.perf_counter()
                k.apply(services(n))
                row["apply_s"] = time.perf_counter() - t0
                changed = services(n)[n // 2].model_copy(update={"backends": services(1)[0].backends[:5]})
                t0 = time.perf_counter()
                k.upsert(changed)
                row["update_ms"] = (time.perf_counter() - t0 - 0.05) * 1000  # minus the grace before cleanup
                # direct and bpfscope interleaved, ROUNDS each, medians: the two differ by
                # microseconds, less than this VM's drift between two runs
                runs = {"direct": [], "bpfscope": []}
                for _ in range(ROUNDS):
                    runs["direct"].append(run_client(client, direct, None))
                    runs["bpfscope"].append(run_client(client, targets, cgroup))
                for path, rs in runs.items():
                    row[path] = tuple(statistics.median(r[i] for r in rs) for i in range(3)) + \
                        (sum(r[3] for r in rs),)
                k.reset()
            t0 = time.perf_counter()
            in_ns("iptables-restore", "--noflush", stdin=iptables_rules(n))
            row["iptables_load_s"] = time.perf_counter() - t0
            row["iptables"] = run_client(client, targets, None)
            in_ns("iptables-restore", stdin="*nat\nCOMMIT\n")
            t0 = time.perf_counter()
            in_ns("nft", "-f", "-", stdin=nft_rules(n))
            row["nft_load_s"] = time.perf_counter() - t0
            row["nftables"] = run_client(client, targets, None)
            in_ns("nft", "delete", "table", "ip", "kp")
            results.append(row)
            report(row)
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "delete", NS], capture_output=True)
        if os.path.exists(pin):
            with LbKernel(pin) as k:
                k.reset()
        if cgroup.exists():
            cgroup.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(row: dict) -> None:
    n, d = row["n"], row["direct"]
    print(f"\nN = {n:,} services x {len(BACKENDS)} backends, {COUNT:,} short connections per run "
          f"(direct and bpfscope: median of {ROUNDS} interleaved runs)")
    print(f"  {'path':10s} {'connect p50':>12s} {'p99':>10s} {'req/s':>9s} {'fails':>6s}   ratios to direct")
    for path in ("direct", "bpfscope", "iptables", "nftables"):
        p50, p99, rps, fails = row[path]
        print(f"  {path:10s} {p50:10.1f}us {p99:8.1f}us {rps:9,.0f} {fails:6d}   "
              f"p50 {p50 / d[0]:.2f}x  req/s {rps / d[2]:.2f}x")
    b, ipt = row["bpfscope"], row["iptables"]
    print(f"  bpfscope p99 is {ipt[1] / b[1]:.1f}x lower than iptables' (target >= 2x at 10,000)")
    print(f"  apply of {n:,} services: {row['apply_s']:.2f} s (target < 5 s at 10,000); one update: "
          f"{row['update_ms']:.1f} ms (target < 10 ms); iptables-restore {row['iptables_load_s']:.2f} s, "
          f"nft -f {row['nft_load_s']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())

"""Four paths to the same 10 backends, at N = 10, 1,000 and 10,000 services, in one run:

  direct      the client connects to a backend address itself
  bpfscope    the client connects to a service VIP; cgroup/connect4 picks the backend
  iptables    kube-proxy's iptables mode: KUBE-SERVICES -> KUBE-SVC (statistic random) -> DNAT
  nftables    kube-proxy's nftables mode: one verdict map on (vip . port) -> numgen -> DNAT

Each path runs in a fresh network namespace this script creates and deletes (its own lo,
no NAT table or conntrack left behind by another path). The client
(bench/workloads/tcp_rr_client.c) makes short connections (connect, one byte each way,
close) to targets picked at random and measures connect() latency and requests/s.

direct and bpfscope differ by a microsecond or two out of ~25, less than this VM drifts
between two processes or two tenths of a second, so they run in ONE client process that
alternates between them every 10 connections (moving itself between two sibling cgroups,
the bpfscope programs being attached to one of them only): a warm-up round, then ROUNDS
rounds of BLOCK connects per path. Printed: the ratio of every round, and over all rounds
(p50 of all connects of a path, requests/s over all its connections). The client is pinned to one CPU and the
backends to the other. bpfscope runs twice: with the services as by default (getpeername()
answers the VIP, so each socket's VIP is recorded in its lb_peers slot) and with
`getpeername: backend` (nothing recorded). Also timed: applying N services with 10
backends each, and one service update.
"""

from __future__ import annotations

import contextlib
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

BACKENDS = [9001 + i for i in range(10)]
BLOCK = int(os.environ.get("LB_BENCH_BLOCK", "1000"))
ROUNDS = int(os.environ.get("LB_BENCH_ROUNDS", "16"))
SIZES = [int(x) for x in os.environ.get("LB_BENCH_SIZES", "10,1000,10000").split(",")]
# client on the last CPU, backends on the others (when there are two or more)
CPUS = os.cpu_count() or 1
CLIENT_CPU = ["taskset", "-c", str(CPUS - 1)] if CPUS > 1 else []
SERVER_CPU = ["taskset", "-c", f"0-{CPUS - 2}"] if CPUS > 1 else []


def vip(i: int) -> str:
    return f"127.77.{(i + 1) // 256}.{(i + 1) % 256}"


def sh(*cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True).stdout


def build(tmp: Path) -> tuple[Path, Path]:
    out = []
    for name, extra in (("tcp_rr_server", ["-pthread"]), ("tcp_rr_client", [])):
        binary = tmp / name
        subprocess.run(["cc", "-O2", *extra, "-o", str(binary), str(REPO / f"bench/workloads/{name}.c")], check=True)
        out.append(binary)
    return out[0], out[1]


@contextlib.contextmanager
def namespace(server_bin: Path):
    """A fresh network namespace with lo up and the backends listening in it; yields its name."""
    ns = f"bpfscope-lbbench-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    server = None
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        server = subprocess.Popen([*SERVER_CPU, "ip", "netns", "exec", ns, str(server_bin), str(BACKENDS[0]),
                                   str(len(BACKENDS))], stdout=subprocess.PIPE, text=True)
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("bench/lb_paths.py: the backends did not start")
        yield ns
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def run_client(client: Path, ns: str, *paths: tuple[Path, Path | str]) -> dict:
    """Run the client over one path or two (targets file, cgroup); returns per path
    {"rounds": [(p50_us, p99_us, req_s, fails)], "p50": us, "p99": us, "rps": req/s, "fails": n}."""
    args = [str(x) for tp in paths for x in tp]
    out = sh(*CLIENT_CPU, str(client), f"/run/netns/{ns}", str(BLOCK), str(ROUNDS), *args)
    res = {i: {"rounds": [None] * ROUNDS, "conns": 0, "ns": 0, "fails": 0} for i in range(len(paths))}
    for line in out.splitlines():
        f = line.split()
        if f[0] == "B":
            p, r, p50, p99, conns, ns_, fails = (int(x) for x in f[1:])
            res[p]["rounds"][r] = (p50 / 1000, p99 / 1000, conns / ns_ * 1e9, fails)
            res[p]["conns"] += conns
            res[p]["ns"] += ns_
            res[p]["fails"] += fails
        elif f[0] == "P":
            res[int(f[1])]["p50"], res[int(f[1])]["p99"] = int(f[2]) / 1000, int(f[3]) / 1000
    for r in res.values():
        r["rps"] = r["conns"] / r["ns"] * 1e9
    return res


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


def services(n: int, getpeername: str = "vip"):
    from bpfscope.lb.config import Backend, Service

    backends = [Backend(address="127.0.0.1", port=p) for p in BACKENDS]
    return [Service(name=f"svc{i}", vip=vip(i), port=8080, backends=backends, getpeername=getpeername)
            for i in range(n)]


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("bench/lb_paths.py needs root")
    for tool in ("ip", "iptables-restore", "nft", "cc", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"bench/lb_paths.py needs {tool}")
    from bpfscope.hostenv import cgroup2_root, ensure_mounts
    from bpfscope.lb.kernel import LbKernel

    ensure_mounts()
    tmp = Path(tempfile.mkdtemp(prefix="bpfscope-lbbench-"))
    parent = Path(cgroup2_root()) / f"bpfscope-lbbench-{os.getpid()}"
    cg_direct, cg_vip = parent / "direct", parent / "vip"
    pin = f"/sys/fs/bpf/bpfscope-lbbench-{os.getpid()}"
    try:
        server_bin, client = build(tmp)
        for cg in (parent, cg_direct, cg_vip):
            cg.mkdir()
        direct = tmp / "direct.txt"
        direct.write_text("".join(f"127.0.0.1 {p}\n" for p in BACKENDS))
        for n in SIZES:
            targets = tmp / f"vips{n}.txt"
            targets.write_text("".join(f"{vip(i)} 8080\n" for i in range(n)))
            row = {"n": n}
            with namespace(server_bin) as ns, LbKernel(pin) as k:
                k.install(str(cg_vip))
                t0 = time.perf_counter()
                k.apply(services(n))
                row["apply_s"] = time.perf_counter() - t0
                changed = services(n)[n // 2].model_copy(update={"backends": services(1)[0].backends[:5]})
                t0 = time.perf_counter()
                k.upsert(changed)
                row["update_ms"] = (time.perf_counter() - t0 - 0.05) * 1000  # minus the grace before cleanup
                res = run_client(client, ns, (direct, cg_direct), (targets, cg_vip))
                row["direct"], row["bpfscope"] = res[0], res[1]
                k.apply(services(n, "backend"))  # no per-socket record: getpeername shows the backend
                res = run_client(client, ns, (direct, cg_direct), (targets, cg_vip))
                row["direct*"], row["bpfscope*"] = res[0], res[1]
                k.reset()
            with namespace(server_bin) as ns:
                t0 = time.perf_counter()
                sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", stdin=iptables_rules(n))
                row["iptables_load_s"] = time.perf_counter() - t0
                row["iptables"] = run_client(client, ns, (targets, cg_direct))[0]
            with namespace(server_bin) as ns:
                t0 = time.perf_counter()
                sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=nft_rules(n))
                row["nft_load_s"] = time.perf_counter() - t0
                row["nftables"] = run_client(client, ns, (targets, cg_direct))[0]
            report(row)
    finally:
        if os.path.exists(pin):
            with LbKernel(pin) as k:
                k.reset()
        for cg in (cg_direct, cg_vip, parent):
            if cg.exists():
                cg.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(row: dict) -> None:
    n, d = row["n"], row["direct"]
    print(f"\nN = {n:,} services x {len(BACKENDS)} backends; {ROUNDS} rounds of {BLOCK:,} short connections "
          f"per path")
    print("  bpfscope: services as by default (getpeername answers the VIP: each socket's VIP is recorded "
          "in lb_peers)")
    print("  bpfscope*: the same with `getpeername: backend` (nothing recorded per socket)")
    print("  each bpfscope run is interleaved with its own direct run (direct, direct*) in one process")
    print(f"  {'path':10s} {'connect p50':>12s} {'p99':>10s} {'req/s':>9s} {'fails':>6s}   ratios to direct")
    for path in ("direct", "bpfscope", "direct*", "bpfscope*", "iptables", "nftables"):
        r, base = row[path], row["direct*"] if path.endswith("*") else d
        print(f"  {path:10s} {r['p50']:10.1f}us {r['p99']:8.1f}us {r['rps']:9,.0f} {r['fails']:6d}   "
              f"p50 {r['p50'] / base['p50']:.3f}x  req/s {r['rps'] / base['rps']:.3f}x")
    for path in ("bpfscope", "bpfscope*"):
        dr, vr = row["direct*" if path.endswith("*") else "direct"]["rounds"], row[path]["rounds"]
        p50s = [v[0] / x[0] for x, v in zip(dr, vr)]
        rpss = [v[2] / x[2] for x, v in zip(dr, vr)]
        print(f"  {path}/direct per round, p50:   " + " ".join(f"{x:.2f}" for x in p50s))
        print(f"  {path}/direct per round, req/s: " + " ".join(f"{x:.2f}" for x in rpss))
        print(f"    median p50 {statistics.median(p50s):.3f}x (range {min(p50s):.2f}-{max(p50s):.2f}), "
              f"median req/s {statistics.median(rpss):.3f}x (range {min(rpss):.2f}-{max(rpss):.2f}); "
              f"target: p50 <= 1.05x, req/s >= 0.97x")
    b = row["bpfscope"]
    print(f"  bpfscope p99 is {row['iptables']['p99'] / b['p99']:.1f}x lower than iptables' (target >= 2x at 10,000)")
    print(f"  apply of {n:,} services: {row['apply_s']:.2f} s (target < 5 s at 10,000); one update: "
          f"{row['update_ms']:.1f} ms (target < 10 ms); iptables-restore {row['iptables_load_s']:.2f} s, "
          f"nft -f {row['nft_load_s']:.2f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())

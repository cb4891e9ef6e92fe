"""Cost of `bpfscope net` (default options) on loopback TCP, side by side in one run.

  1. bulk: one connection, the client writes BULK_MIB MiB in 256 KiB writes, the server
     reads in 256 KiB reads; throughput in MiB/s;
  2. short connections: connect, one 64-byte request, one 64-byte reply, close, in a loop
     for SHORT_S seconds; connections per second.
Each is timed with nothing attached, with `bpfscope net --quiet` running (interval 1 s),
with `--latency --sample 100` added, and with `--json` (every close record built and
written, as a collector would get them), interleaved, best of ROUNDS; prints the ratios
(targets: bulk >= 0.97x, short >= 0.95x, with --latency >= 0.90x). The workloads are
Python processes (bench/net_overhead.py --role ...): the interpreter's own per-call cost
dilutes the hooks' cost more than a C client would, so these are the figures a Python
service sees. The exporter competes for the same 2 CPUs as the client and the server.

    sudo .venv/bin/python bench/net_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BULK_MIB = 2048
SHORT_S = 3.0
CHUNK = 256 << 10


def serve_bulk(srv: socket.socket) -> None:
    c, _ = srv.accept()
    buf = bytearray(CHUNK)
    while c.recv_into(buf):
        pass
    c.close()


def serve_short(srv: socket.socket) -> None:
    while True:
        c, _ = srv.accept()
        if not c.recv(64):
            c.close()
            return
        c.sendall(b"r" * 64)
        c.close()


def server(kind: str) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    print(srv.getsockname()[1], flush=True)
    (serve_bulk if kind == "bulk" else serve_short)(srv)


def client(kind: str, port: int) -> None:
    if kind == "bulk":
        block = b"x" * CHUNK
        s = socket.create_connection(("127.0.0.1", port))
        t0 = time.perf_counter()
        for _ in range(BULK_MIB * (1 << 20) // CHUNK):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the server closed: everything was read
        print(BULK_MIB / (time.perf_counter() - t0))
        return
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < SHORT_S:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"q" * 64)
        s.recv(64)
        s.close()
        n += 1
    rate = n / (time.perf_counter() - t0)
    s = socket.create_connection(("127.0.0.1", port))  # an empty request stops the server
    s.close()
    print(rate)


def run(kind: str) -> float:
    me = [sys.executable, __file__]
    srv = subprocess.Popen(me + ["--role", "server", "--kind", kind], stdout=subprocess.PIPE, text=True)
    port = srv.stdout.readline().strip()
    out = subprocess.run(me + ["--role", "client", "--kind", kind, "--port", port], capture_output=True, text=True,
                         check=True).stdout
    srv.wait(30)
    return float(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--role", choices=["bench", "server", "client"], default="bench")
    ap.add_argument("--kind", choices=["bulk", "short"])
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    if args.role == "server":
        return server(args.kind)
    if args.role == "client":
        return client(args.kind, args.port)

    # "json": every record built and written (what --json or a collector costs), for comparison
    modes = {"off": None, "net": [], "latency": ["--latency", "--sample", "100"], "json": ["--json"]}
    results: dict[tuple[str, str], list[float]] = {(k, m): [] for k in ("bulk", "short") for m in modes}
    order = list(modes.items())
    for r in range(args.rounds):
        # a different order each round: no mode always runs right after another (warm caches,
        # a just-stopped exporter's teardown)
        for on, extra in order[r % len(order):] + order[:r % len(order)]:
            exporter = None
            if extra is not None:
                exporter = subprocess.Popen([sys.executable, "-m", "bpfscope", "net", "--quiet", "--interval", "1",
                                             *extra], cwd=REPO, stdout=subprocess.DEVNULL)
                time.sleep(3)  # loaded and attached
            try:
                for kind in ("bulk", "short"):
                    results[(kind, on)].append(run(kind))
            finally:
                if exporter:
                    exporter.terminate()
                    exporter.wait(30)
    print(f"best of {args.rounds}, interleaved")
    for kind, unit, target in (("bulk", "MiB/s", 0.97), ("short", "conn/s", 0.95)):
        off, on, lat, js = (max(results[(kind, m)]) for m in modes)
        print(f"  {kind:<6} without {off:8.0f} {unit}  with bpfscope net {on:8.0f} ({on / off:.3f}x, target >= "
              f"{target}x)  with --latency --sample 100 {lat:8.0f} ({lat / off:.3f}x, target >= 0.90x)  "
              f"with --json {js:8.0f} ({js / off:.3f}x)")


if __name__ == "__main__":
    main()

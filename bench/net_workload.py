"""A known TCP workload over loopback for bpfscope net's tests and benchmarks.

    net_workload.py server --conns N [--expect B] [--reply B] [--name COMM]
    net_workload.py client --port P --conns N [--send B] [--expect B] [--name COMM] [--exit]

The server listens on 127.0.0.1 (or --host), prints `port P`, accepts N connections;
from each it reads --expect bytes, then writes --reply bytes. The client opens N
connections, writes --send bytes on each and reads --expect back. Each prints `done`
when its side is complete and then holds every socket open until its stdin closes
(so the test decides when connections end), or exits at once with --exit. While it holds
them, a line `tcp_info` on stdin makes it print `tcp_info HEX`: getsockopt(TCP_INFO) of
its first connection, the kernel's own struct tcp_info as the application sees it. --name sets
the process's comm (prctl PR_SET_NAME), so a test can find it by name.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import socket
import sys
import threading


def set_comm(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_exactly(s: socket.socket, n: int) -> None:
    while n > 0:
        chunk = s.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError(f"peer closed with {n} bytes still expected")
        n -= len(chunk)


def write_n(s: socket.socket, n: int) -> None:
    block = b"x" * min(n, 1 << 20)
    while n > 0:
        s.sendall(block[: min(n, len(block))])
        n -= min(n, len(block))


def hold_or_exit(args, conns: list[socket.socket]) -> None:
    print("done", flush=True)
    if args.exit:
        return
    for line in sys.stdin:
        if line.strip() == "tcp_info" and conns:
            print("tcp_info " + conns[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024).hex(), flush=True)


def server(args) -> None:
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(min(args.conns, 4096))
    print(f"port {srv.getsockname()[1]}", flush=True)
    conns = []
    for _ in range(args.conns):
        c, _ = srv.accept()
        conns.append(c)
        if args.expect:
            read_exactly(c, args.expect)
        if args.reply:
            write_n(c, args.reply)
    hold_or_exit(args, conns)


def client(args) -> None:
    conns = []
    lock = threading.Lock()
    for _ in range(args.conns):
        c = socket.create_connection((args.host, args.port))
        with lock:
            conns.append(c)
        if args.send:
            write_n(c, args.send)
        if args.expect:
            read_exactly(c, args.expect)
    if args.print_ports:
        print("ports " + " ".join(str(c.getsockname()[1]) for c in conns), flush=True)
    hold_or_exit(args, conns)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--reply", type=int, default=0)
    p.add_argument("--name")
    p.add_argument("--exit", action="store_true", help="exit when done instead of holding the sockets")
    p.add_argument("--print-ports", action="store_true")
    args = p.parse_args()
    if args.name:
        set_comm(args.name)
    raise_nofile()
    (server if args.role == "server" else client)(args)
    os._exit(0)


if __name__ == "__main__":
    main()

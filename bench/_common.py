"""Helpers shared by the collector benchmarks: realistic records and a collector subprocess."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time

import httpx

DOMAIN_KINDS = [
    ("net", "tcp_conn"), ("net", "tcp_retrans"), ("net", "pkt_drop"),
    ("stack", "cpu_stack"), ("proc", "lifecycle"), ("proc", "ctx_switch"),
    ("lb", "lb_backend"), ("fuse", "fuse_op"), ("system", "cpu"),
]
COMMS = ["nginx", "postgres", "python3", "curl", "java", "node", "redis-server", "sshd", "containerd", "kworker/0:1"]


def records(n: int, start_ns: int, step_ns: int = 1_000_000, seed: int = 1) -> list[dict]:
    """n schema-v1 records, ts increasing from start_ns, ~2000 pids, several domains/kinds."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        domain, kind = DOMAIN_KINDS[rnd.randrange(len(DOMAIN_KINDS))]
        pid = 1000 + rnd.randrange(2000)
        out.append({
            "v": 1, "ts": start_ns + i * step_ns, "host": f"node-{pid % 4}", "domain": domain, "kind": kind,
            "pid": pid, "tid": pid + rnd.randrange(4), "comm": COMMS[pid % len(COMMS)],
            "labels": {"direction": rnd.choice(("in", "out")), "state": rnd.choice(("ESTABLISHED", "CLOSE_WAIT")),
                       "service": f"svc-{pid % 16}"},
            "values": {"bytes_acked": rnd.randrange(10**9), "srtt_us": rnd.random() * 1000,
                       "retrans_total": rnd.randrange(10)},
            "stack": None,
        })
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def collector(db_url: str):
    """A real collector (python -m bpfscope.collector) in a subprocess; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bpfscope.collector", "--db", db_url,
                             "--listen", f"127.0.0.1:{port}", "--retention", "off"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"collector exited with status {proc.returncode}")
            try:
                if httpx.get(url + "/api/v1/health", timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("collector did not start within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""bpfscope stack mem against a program whose allocations are known
(bench/workloads/leak.c: 1,000 blocks of 4 KiB kept by leak_here(), 10,000 blocks of
every libc allocator allocated and freed by churn())."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import BPFSCOPE
from test_stack_cpu import build
from bpfscope.bpf import wait_for_links

pytestmark = pytest.mark.bpf


def run_mem(leak, extra: list[str] = ()) -> tuple[list[dict], int]:
    work = subprocess.Popen([str(leak)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "mem", "--pid", str(work.pid), "--json", "--interval", "0.5",
                                            *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(exporter), exporter.stderr.read()
        work.stdin.write("go\n")
        work.stdin.flush()
        assert work.stdout.readline().strip() == "done"
        time.sleep(1.5)  # at least two reads while the process is alive
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    last_ts = max(r["ts"] for r in records)
    return [r for r in records if r["ts"] == last_ts and r["pid"] == work.pid], work.pid


def test_leaked_4096000_bytes_are_outstanding_on_the_leaking_stack_and_nothing_else(tmp_path):
    leak = build(tmp_path, "leak")
    snapshot, pid = run_mem(leak)
    leaking = [r for r in snapshot if "leak_here" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in leaking) == 4_096_000
    assert sum(r["values"]["outstanding_count"] for r in leaking) == 1000
    assert leaking[0]["stack"][-2:] == ["main", "leak_here"]  # the caller of malloc, exactly
    assert all(r["kind"] == "alloc_stack" and r["comm"] == "leak" for r in snapshot)
    churned = [r for r in snapshot if "churn" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in churned) == 0, churned

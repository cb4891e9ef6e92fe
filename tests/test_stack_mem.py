"""bpfscope stack mem against a program whose allocations are known
(bench/workloads/leak.c: 1,000 blocks of 4 KiB kept by leak_here(), 10,000 blocks of
every libc allocator allocated and freed by churn())."""

from __future__ import annotations

import gzip
import json
import subprocess
import time

import pytest
from conftest import BPFSCOPE
from test_stack_cpu import build
from test_stack_outputs import read_profile
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
    files = {"pprof": tmp_path / "mem.pb.gz", "speedscope": tmp_path / "mem.speedscope.json"}
    snapshot, pid = run_mem(leak, ["--pprof", str(files["pprof"]), "--speedscope", str(files["speedscope"])])
    leaking = [r for r in snapshot if "leak_here" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in leaking) == 4_096_000
    assert sum(r["values"]["outstanding_count"] for r in leaking) == 1000
    assert leaking[0]["stack"][-2:] == ["main", "leak_here"]  # the caller of malloc, exactly
    assert all(r["kind"] == "alloc_stack" and r["comm"] == "leak" for r in snapshot)
    churned = [r for r in snapshot if "churn" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in churned) == 0, churned
    # the files say bytes, and carry the count of blocks as a second value
    prof = read_profile(gzip.decompress(files["pprof"].read_bytes()))
    assert prof["sample_types"] == [("inuse_space", "bytes"), ("inuse_objects", "count")]
    in_leak = [values for frames, values in prof["samples"] if "leak_here" in frames]
    assert [sum(v[0] for v in in_leak), sum(v[1] for v in in_leak)] == [4_096_000, 1000]
    doc = json.loads(files["speedscope"].read_text())
    assert {p["unit"] for p in doc["profiles"]} == {"bytes"}


PIPES_HOLDER = """
import os, sys
n = int(sys.argv[1]); sys.stdin.readline()
pipes = [os.pipe() for _ in range(n)]
print("open", flush=True); sys.stdin.readline()
for a, b in pipes:
    os.close(a); os.close(b)
print("closed", flush=True); sys.stdin.readline()
"""


@pytest.mark.parametrize("frames", ["user and kernel", "kernel only"])
def test_kernel_memory_of_500_open_pipes_is_outstanding_on_alloc_pipe_info_until_closed(frames):
    """Each pipe(2) kmallocs its pipe_inode_info and its array of 16 pipe_buffers in
    alloc_pipe_info (kernel memory freed only when both ends are closed)."""
    import sys

    only = ["--kernel-only"] if frames == "kernel only" else []

    n = 500
    work = subprocess.Popen([sys.executable, "-c", PIPES_HOLDER, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "mem", "--kernel", "--pid", str(work.pid), "--json",
                                            "--interval", "0.5", *only], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        assert wait_for_links(exporter, at_least=6), exporter.stderr.read()
        marks = []
        for expect in ("open", "closed"):
            work.stdin.write("go\n")
            work.stdin.flush()
            assert work.stdout.readline().strip() == expect
            time.sleep(1.2)  # two reads in this phase
            marks.append(time.time_ns())
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]

    def pipe_objects(lo: int, hi: int) -> list[dict]:
        # the last snapshot of the phase; slab pages made on the way stay with the slab
        snap = [r for r in records if lo < r["ts"] <= hi]
        assert snap, f"no snapshot in the phase: {err}"
        last = max(r["ts"] for r in snap)
        return [r for r in snap if r["ts"] == last and any(f.startswith("alloc_pipe_info") for f in r["stack"])
                and not any(f.startswith("allocate_slab") for f in r["stack"])]

    held = pipe_objects(marks[0] - int(1.2e9), marks[0])
    assert sum(r["values"]["outstanding_count"] for r in held) == 2 * n, held
    assert sum(r["values"]["outstanding_bytes"] for r in held) >= n * 16 * 40
    assert all(r["labels"]["space"] == "kernel" and "do_pipe2_[k]" in r["stack"] for r in held)
    user_frames = {f for r in held for f in r["stack"] if not f.endswith("_[k]")}
    if only:
        assert user_frames == set()
    else:
        assert "pipe2" in user_frames, user_frames  # libc's wrapper, the caller of the system call
    assert pipe_objects(marks[0], marks[1]) == []

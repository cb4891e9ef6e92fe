"""bpfscope stack io against a program that writes exactly 64 MiB with write(2)
(bench/workloads/write_64m.c), checked also against the kernel's own count in
/proc/PID/io (wchar)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BPFSCOPE
from test_stack_cpu import build
from bpfscope.bpf import wait_for_links

pytestmark = pytest.mark.bpf
MIB64 = 64 << 20


def _wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def test_64_mib_written_with_write_are_on_the_writing_stack(tmp_path):
    prog = build(tmp_path, "write_64m")
    work = subprocess.Popen([str(prog)], stdin=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "io", "--pid", str(work.pid), "--json", "--interval", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(exporter), exporter.stderr.read()
        before = _wchar(work.pid)
        work.stdin.write("go\n")
        work.stdin.flush()
        deadline = time.monotonic() + 30
        while _wchar(work.pid) - before < MIB64 and time.monotonic() < deadline:
            time.sleep(0.05)
        wchar = _wchar(work.pid) - before
        time.sleep(1.2)  # two reads while the process is alive
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines() if json.loads(line)["pid"] == work.pid]
    writes = [r for r in records if r["labels"]["direction"] == "write"]
    assert wchar == MIB64
    assert sum(r["values"]["bytes"] for r in writes) == MIB64
    assert sum(r["values"]["count"] for r in writes) >= 64
    top = max(writes, key=lambda r: r["values"]["bytes"])
    assert "main" in top["stack"] and "write" in top["stack"][-1], top["stack"]
    reads = [r for r in records if r["labels"]["direction"] == "read"]
    assert sum(r["values"]["bytes"] for r in reads) == 3  # "go\n"

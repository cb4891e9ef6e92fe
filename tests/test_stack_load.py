"""bpfscope stack load: quiet below the threshold, stacks tagged with the load above it
(4 busy threads on the 2 CPUs of the test machine keep >= 4 tasks runnable)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BPFSCOPE
from bpfscope.bpf import wait_for_links

pytestmark = pytest.mark.bpf

# Python threads share one interpreter lock: 4 processes give 4 runnable tasks for sure.
BUSY_PROCS = """
import subprocess, sys
sys.stdin.readline()
procs = [subprocess.Popen([sys.executable, "-c", "import time\\nend = time.monotonic() + %s\\nwhile time.monotonic() < end: pass" % sys.argv[1]]) for _ in range(4)]
[p.wait() for p in procs]
"""


def run_load(threshold: str, busy_s: float = 3.0) -> tuple[list[dict], str]:
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "load", "--threshold", threshold, "--freq", "99", "--json",
                                            "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    work = subprocess.Popen([sys.executable, "-c", BUSY_PROCS, str(busy_s)], stdin=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(exporter), exporter.stderr.read()
        work.stdin.write("go\n")
        work.stdin.flush()
        work.wait(60)
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
    assert exporter.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()], err


def test_four_busy_processes_on_two_cpus_open_the_gate_and_tag_the_load():
    records, _ = run_load("3")
    busy = [r for r in records if r["comm"].startswith("python")]
    assert sum(r["values"]["count"] for r in busy) > 50, records[:3]
    assert all(r["kind"] == "load_stack" and int(r["labels"]["load"]) >= 3 for r in records)
    assert all(r["labels"]["load_source"] == "runqueue" for r in records)


def test_below_the_threshold_nothing_is_recorded():
    records, _ = run_load("1000", busy_s=1.5)
    assert records == []


def test_psi_threshold_is_accepted_where_psi_exists():
    p = subprocess.run(BPFSCOPE + ["stack", "load", "--psi", "--threshold", "1000", "--json", "--duration", "1",
                                   "--interval", "0.5"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""

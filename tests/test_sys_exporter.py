"""bpfscope sys against a workload whose syscall count is known."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import BPFSCOPE

pytestmark = pytest.mark.bpf

# Waits for "go" on stdin, then makes exactly N getppid() calls and exits. Until then it
# makes one getpid() every 20 ms so the exporter has something to report.
WORKLOAD = """
import os, select, sys
n = int(sys.argv[1])
while not select.select([sys.stdin], [], [], 0.02)[0]:
    os.getpid()
sys.stdin.readline()
for _ in range(n):
    os.getppid()
"""


def _run_sys_with_workload(n_calls: int, extra: list[str]) -> tuple[list[dict], int]:
    work = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(n_calls)], stdin=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["sys", "--json", "--interval", "0.5", "--duration", "6",
                                            "--top", "0", "--pid", str(work.pid)] + extra,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records, started = [], False
    try:
        for line in exporter.stdout:
            rec = json.loads(line)
            records.append(rec)
            if not started and rec["pid"] == work.pid:
                work.stdin.write("go\n")  # the exporter sees this process: start counting
                work.stdin.flush()
                started = True
        exporter.wait(30)
        work.wait(30)
    finally:
        exporter.kill()
        work.kill()
    assert started, f"exporter never reported the workload: {exporter.stderr.read()}"
    return records, work.pid


def test_getppid_count_matches_the_workload_within_1pct():
    n = 200_000
    records, pid = _run_sys_with_workload(n, [])
    got = sum(r["values"]["count"] for r in records
              if r["pid"] == pid and r["labels"]["syscall"] == "getppid")
    assert abs(got - n) <= n * 0.01, f"counted {got} getppid calls, the workload made {n}"
    assert all(r["comm"] == "python3" or r["comm"].startswith("python") for r in records if r["pid"] == pid)


def test_records_are_schema_v1_with_rates():
    from bpfscope.schema import validate_records

    records, pid = _run_sys_with_workload(10_000, [])
    validate_records(records)
    getppid = [r for r in records if r["labels"]["syscall"] == "getppid"]
    assert getppid and all(r["domain"] == "system" and r["kind"] == "syscall" for r in getppid)
    assert all(r["values"]["rate_per_s"] > 0 for r in getppid)


# Five different syscalls every 10 ms for at most 20 s: more rows than --top 3 on a quiet machine.
BUSY = """
import os, time
end = time.monotonic() + 20
while time.monotonic() < end:
    os.getpid(); os.getppid(); os.getuid(); os.stat("/"); time.sleep(0.01)
"""


def test_top_limits_rows_per_interval():
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        proc = subprocess.run(BPFSCOPE + ["sys", "--json", "--interval", "1", "--duration", "2.5", "--top", "3"],
                              capture_output=True, text=True, timeout=30)
    finally:
        busy.kill()
        busy.wait()
    assert proc.returncode == 0, proc.stderr
    by_ts: dict[int, int] = {}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        by_ts[rec["ts"] // 10**8] = by_ts.get(rec["ts"] // 10**8, 0) + 1
    assert by_ts and max(by_ts.values()) == 3, by_ts


def test_exporter_serves_its_own_metrics():
    import httpx

    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen(BPFSCOPE + ["sys", "--json", "--interval", "0.5", "--duration", "8",
                                        "--metrics-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if 'bpfscope_syscalls_total{syscall="' in text:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert 'bpfscope_up{exporter="sys"} 1.0' in text
        assert 'bpfscope_syscalls_total{syscall="' in text
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


ROUNDS_WORKLOAD = """
import os, sys
for line in sys.stdin:
    if line.strip() == "stop":
        break
    for _ in range(int(line)):
        os.getppid()
    print("done", flush=True)
"""


@pytest.mark.parametrize("slots", [1, 4096])
def test_counts_are_exact_through_slots_and_hash_fallback(slots):
    """slots=1: one (tgid, nr) pair per CPU takes the fast path, every other pair the hash;
    the sum over both must equal the workload exactly, read across several intervals."""
    from bpfscope.exporters.sys import SysExporter

    child = subprocess.Popen([sys.executable, "-c", ROUNDS_WORKLOAD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    exp = SysExporter(pid=child.pid, top=0, slots=slots)
    exp.open()
    try:
        got, made = 0, 0
        for n in (10_000, 25_000, 40_000):
            child.stdin.write(f"{n}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "done"
            made += n
            rows = exp.collect(1.0)
            assert {r["pid"] for r in rows} <= {child.pid}
            got += sum(r["values"]["count"] for r in rows if r["labels"]["syscall"] == "getppid")
        assert got == made
    finally:
        exp.close()
        child.kill()
        child.wait()


def test_slots_of_exited_processes_are_freed():
    from bpfscope.exporters.sys import SysExporter

    code = "import os\nfor _ in range(5000): os.getppid()"
    exp = SysExporter(top=0, slots=4096)
    exp.open()
    try:
        child = subprocess.Popen([sys.executable, "-c", code])
        child.wait(10)
        rows = exp.collect(1.0)
        assert sum(r["values"]["count"] for r in rows
                   if r["pid"] == child.pid and r["labels"]["syscall"] == "getppid") == 5000
        exp.collect(1.0)  # the child is gone: its slots are freed now
        slots = exp.obj.maps["slots"]
        owners = {s.tgid for _, v in slots.batch() for s in slots.cpu_values(v) if s.count}
        assert child.pid not in owners
    finally:
        exp.close()


def test_a_process_that_execs_is_named_by_its_new_comm():
    from bpfscope.exporters.sys import SysExporter

    # python (comm python3) reads a line, then execs sh, which reads again: the `read` pair is
    # first seen under the old name
    code = "import os, sys; sys.stdin.readline(); os.execv('/bin/sh', ['sh', '-c', 'read x'])"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    exp = SysExporter(pid=child.pid, top=0)
    try:
        exp.open()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        time.sleep(0.5)
        rows = exp.collect(1.0)
        child.stdin.write(b"\n")
        child.stdin.close()
        child.wait(10)
        assert rows and {r["comm"] for r in rows} == {"sh"}
    finally:
        exp.close()
        child.kill()
        child.wait()


def test_quiet_prints_no_table_even_without_a_tty():
    # a table goes to stdout when it is a pipe (bpfscope sys > file); --quiet means none at all
    loud = subprocess.run(BPFSCOPE + ["sys", "--interval", "0.5", "--duration", "1.2"],
                          capture_output=True, text=True, timeout=60)
    quiet = subprocess.run(BPFSCOPE + ["sys", "--quiet", "--interval", "0.5", "--duration", "1.2"],
                           capture_output=True, text=True, timeout=60)
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "COMM" in loud.stdout.upper()
    assert quiet.stdout == ""

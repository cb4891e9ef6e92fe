"""bpfscope up end to end: collector + sys exporter as supervised processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from conftest import BPFSCOPE, free_port, run_cli

pytestmark = pytest.mark.bpf


def _children_of(pid: int) -> dict[int, str]:
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(f"/proc/{p}/cmdline") as f:
                    out[int(p)] = f.read().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
    return out


def _wait(predicate, timeout_s: float, step: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    return None


@pytest.fixture
def up(tmp_path):
    port, mport = free_port(), free_port()
    db = f"sqlite:///{tmp_path}/up.db"
    proc = subprocess.Popen(BPFSCOPE + ["up", "--domains", "sys", "--db", db, "--listen", f"127.0.0.1:{port}",
                                        "--interval", "1",
                                        "--metrics-port", str(mport)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc, f"http://127.0.0.1:{port}", tmp_path / "up.db", mport
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _exporter_pid(up_pid: int) -> int | None:
    for pid, cmd in _children_of(up_pid).items():
        if " sys " in cmd + " " and "--collector" in cmd:
            return pid
    return None


def test_sys_records_reach_the_database_and_query_within_15s(up):
    proc, url, db_path, _ = up
    start = time.monotonic()

    def stored():
        q = run_cli("query", "--url", url, "--domain", "system", "--kind", "syscall", "--since", "-5m", "--json")
        return [json.loads(line) for line in q.stdout.splitlines()] if q.returncode == 0 else None

    rows = _wait(stored, 15)
    assert rows, f"no records after 15 s; up stderr: {proc.stderr.read1() if proc.poll() is not None else ''}"
    assert time.monotonic() - start < 15
    assert all(r["domain"] == "system" and r["labels"]["syscall"] for r in rows)
    # the same rows are in the SQLite file itself
    import sqlite3
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("select count(*) from records where domain='system'").fetchone()[0] >= len(rows) > 0


def test_killed_exporter_is_restarted(up):
    proc, url, _, mport = up
    first = _wait(lambda: _exporter_pid(proc.pid), 15)
    assert first, "up did not start the sys exporter"
    assert _wait(lambda: httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
                 if _port_open(url) else None, 15)
    os.kill(first, signal.SIGKILL)
    second = _wait(lambda: (p := _exporter_pid(proc.pid)) and p != first and p, 15)
    assert second and second != first, "up did not restart the killed exporter"
    # the restarted exporter is working: its metrics say up
    text = _wait(lambda: _metrics(mport), 15)
    assert text and 'bpfscope_up{exporter="sys"} 1.0' in text
    assert proc.poll() is None


def test_ctrl_c_stops_every_child(up):
    proc, url, _, _ = up
    assert _wait(lambda: len(_children_of(proc.pid)) == 2, 15), _children_of(proc.pid)
    children = list(_children_of(proc.pid))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert _wait(lambda: not any(os.path.exists(f"/proc/{c}") and _state(c) != "Z" for c in children), 10)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _port_open(url: str) -> bool:
    try:
        httpx.get(url + "/api/v1/health", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def _metrics(port: int) -> str | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        return text if 'bpfscope_up{exporter="sys"} 1.0' in text else None
    except httpx.HTTPError:
        return None


def test_collector_port_in_use_stops_up_with_one_clear_line(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        proc = run_cli("up", "--db", f"sqlite:///{tmp_path}/x.db", "--listen", f"127.0.0.1:{port}",
                       "--metrics-port", "0", timeout=30)
    finally:
        busy.close()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_default_up_runs_every_exporter_domain(tmp_path):
    from bpfscope.supervisor import EXPORTER_DOMAINS

    proc = subprocess.Popen(BPFSCOPE + ["up", "--db", f"sqlite:///{tmp_path}/all.db", "--listen",
                                        f"127.0.0.1:{free_port()}", "--metrics-port", "0"],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        kids = _wait(lambda: c if len(c := _children_of(proc.pid)) == 1 + len(EXPORTER_DOMAINS) else None, 20)
        assert kids, _children_of(proc.pid)
        for domain in EXPORTER_DOMAINS:
            assert any(f" -m bpfscope {domain} " in cmd for cmd in kids.values()), (domain, kids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

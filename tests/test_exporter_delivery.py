"""Exporter -> collector delivery: bounded buffer, counted drops, retry until the collector is back."""

from __future__ import annotations

import subprocess
import time

import httpx

from bpfscope.exporters.base import Sender
from bpfscope.schema import make_record
from conftest import BPFSCOPE, free_port


def _records(n: int, start: int = 0) -> list[dict]:
    return [make_record("system", "syscall", pid=start + i, comm="t", labels={"syscall": "read"},
                        values={"count": i}) for i in range(n)]


def _wait(pred, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_offer_never_blocks_and_drops_the_oldest_when_full():
    port = free_port()  # nothing listens there
    sender = Sender(f"http://127.0.0.1:{port}", max_buffer=1000)
    try:
        t0 = time.monotonic()
        for i in range(30):
            sender.offer(_records(100, start=i * 100))
        assert time.monotonic() - t0 < 0.5, "offer() must not wait for the network"
        assert len(sender.buffer) == 1000
        assert sender.dropped == 2000
        # the newest survive: pids 2000..2999
        assert min(r["pid"] for r in sender.buffer) == 2000
        assert _wait(lambda: sender.failed_posts >= 1, 5)
    finally:
        sender.close()


def test_records_buffered_while_the_collector_is_down_arrive_when_it_starts(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sender = Sender(url, max_buffer=10_000)
    collector = None
    try:
        sender.offer(_records(2500))
        assert _wait(lambda: sender.failed_posts >= 1, 5)
        assert sender.sent == 0
        collector = subprocess.Popen(BPFSCOPE + ["collector", "--db", f"sqlite:///{tmp_path}/c.db",
                                                 "--listen", f"127.0.0.1:{port}"])
        assert _wait(lambda: sender.sent == 2500, 30), f"sent {sender.sent}, buffered {len(sender.buffer)}"
        assert sender.dropped == 0
        health = httpx.get(f"{url}/api/v1/health").json()
        assert health["records"] == 2500
    finally:
        sender.close()
        if collector:
            collector.terminate()
            collector.wait(10)


def test_rejected_batch_is_counted_not_retried(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    collector = subprocess.Popen(BPFSCOPE + ["collector", "--db", f"sqlite:///{tmp_path}/c.db",
                                             "--listen", f"127.0.0.1:{port}"])
    sender = Sender(url)
    try:
        assert _wait(lambda: _up(url), 20)
        bad = _records(3)
        bad[1]["ts"] = "yesterday"
        sender.offer(bad)
        assert _wait(lambda: sender.dropped == 3, 10)
        assert sender.sent == 0 and len(sender.buffer) == 0
    finally:
        sender.close()
        collector.terminate()
        collector.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

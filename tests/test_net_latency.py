"""bpfscope net --latency against delays the test makes itself: a receiver that waits
30 ms before reading each message must show up as >= 30 ms between TCP and the
application, while the same packets cross L2 -> TCP in well under that."""

from __future__ import annotations

import socket
import time

import pytest

from bpfscope.exporters.net import log2_quantile

pytestmark = pytest.mark.bpf

WAIT_S = 0.03
MESSAGES = 10


def test_log2_quantile_is_the_upper_bound_of_the_bucket():
    slots = [0] * 40
    slots[10] = 90   # [1024, 2048) ns
    slots[20] = 10   # [1 Mi, 2 Mi) ns
    assert log2_quantile(slots, 0.5) == 2048
    assert log2_quantile(slots, 0.9) == 2048
    assert log2_quantile(slots, 0.99) == 2 << 20
    assert log2_quantile([0] * 40, 0.5) == 0


def test_receiver_delay_shows_between_tcp_and_the_application():
    from test_net_conn import open_exporter

    exp = open_exporter(latency_sample=1)
    try:
        before = exp.kernel.latency_histograms()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        c = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
        with c, a, srv:
            for _ in range(MESSAGES):
                c.sendall(b"m" * 1000)
                time.sleep(WAIT_S)  # the packet waits in the receive queue: TCP -> app >= 30 ms
                assert len(a.recv(1000)) == 1000
        after = exp.kernel.latency_histograms()
        records = exp.collect(1.0)
    finally:
        exp.close()

    def delta(stage: int) -> list[int]:
        return [x - y for x, y in zip(after[stage][0], before[stage][0])]

    at_least_wait = int(WAIT_S * 1e9).bit_length() - 1  # the slot of 30 ms: [2^24, 2^25) ns
    to_app, l2_tcp, tx = delta(1), delta(0), delta(2)
    assert sum(to_app[at_least_wait:]) >= MESSAGES
    assert sum(l2_tcp) >= MESSAGES and sum(l2_tcp[:at_least_wait]) >= MESSAGES  # L2 -> TCP is fast
    assert sum(tx) >= MESSAGES
    by_stage = {r["labels"]["stage"]: r for r in records if r["kind"] == "net_latency"}
    assert set(by_stage) == {"l2_to_tcp", "tcp_to_app", "tcp_to_device", "device_to_driver"}
    assert all(r["labels"]["path"] in ("rx", "tx") and r["values"]["sample_1_in"] == 1 for r in by_stage.values())
    assert by_stage["tcp_to_app"]["values"]["count"] >= MESSAGES

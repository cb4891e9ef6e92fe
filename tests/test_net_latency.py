"""bpfscope net --latency against delays the test makes itself: a receiver that waits
30 ms before reading each message must show up as >= 30 ms between TCP and the
application, while the same packets cross L2 -> TCP in well under that."""

from __future__ import annotations

import socket
import time

import pytest

from bpfscope.exporters.net import log2_quantile
from bpfscope.exporters.net_kernel import LATENCY_STAGES

pytestmark = pytest.mark.bpf

WAIT_S = 0.03
MESSAGES = 10
CORK_S = 0.02
CORKS = 5


def loopback_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    """A listener on 127.0.0.1 and one connection to it: (listener, client end, accepted end)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    return srv, c, a


def test_log2_quantile_is_the_upper_bound_of_the_bucket():
    slots = [0] * 40
    slots[10] = 90   # [1024, 2048) ns
    slots[20] = 10   # [1 Mi, 2 Mi) ns
    assert log2_quantile(slots, 0.5) == 2048
    assert log2_quantile(slots, 0.9) == 2048
    assert log2_quantile(slots, 0.99) == 2 << 20
    assert log2_quantile([0] * 40, 0.5) == 0


def test_receiver_delay_shows_between_tcp_and_the_application():
    """Also per connection: the receiving socket's own mean TCP -> app time is >= the wait,
    and a sender that corks for CORK_S shows that time between its send and TCP."""
    from test_net_conn import open_exporter

    exp = open_exporter(latency_sample=1)
    try:
        before = exp.kernel.latency_histograms()
        srv, c, a = loopback_pair()
        with c, a, srv:
            for _ in range(MESSAGES):
                c.sendall(b"m" * 1000)
                time.sleep(WAIT_S)  # the packet waits in the receive queue: TCP -> app >= 30 ms
                assert len(a.recv(1000)) == 1000
            for _ in range(CORKS):  # the send waits in TCP until uncorked: app -> TCP >= 20 ms
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                a.sendall(b"r" * 100)
                time.sleep(CORK_S)
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                assert len(c.recv(100)) == 100
            after = exp.kernel.latency_histograms()
            records = exp.collect(1.0)
            server_port, client_port = a.getsockname()[1], c.getsockname()[1]
    finally:
        exp.close()

    def delta(stage: str) -> list[int]:
        i = [s for _, s in LATENCY_STAGES].index(stage)
        return [x - y for x, y in zip(after[i][0], before[i][0])]

    at_least_wait = int(WAIT_S * 1e9).bit_length() - 1  # the slot of 30 ms: [2^24, 2^25) ns
    at_least_cork = int(CORK_S * 1e9).bit_length() - 1
    to_app, l2_tcp, tx, dev_l2 = delta("tcp_to_app"), delta("l2_to_tcp"), delta("tcp_to_device"), delta("device_to_l2")
    assert sum(to_app[at_least_wait:]) >= MESSAGES
    assert sum(l2_tcp) >= MESSAGES and sum(l2_tcp[:at_least_wait]) >= MESSAGES  # L2 -> TCP is fast
    assert sum(dev_l2) >= MESSAGES and sum(dev_l2[:at_least_wait]) >= MESSAGES
    assert sum(tx) >= MESSAGES
    assert sum(delta("app_to_tcp")[at_least_cork:]) >= CORKS
    by_stage = {r["labels"]["stage"]: r for r in records if r["kind"] == "net_latency"}
    assert set(by_stage) == {s for _, s in LATENCY_STAGES}
    assert all(r["labels"]["path"] in ("rx", "tx") and r["values"]["sample_1_in"] == 1 for r in by_stage.values())
    assert by_stage["tcp_to_app"]["values"]["count"] >= MESSAGES

    conns = {(r["labels"]["lport"], r["labels"]["rport"]): r["values"] for r in records if r["kind"] == "tcp_conn"}
    receiver = conns[(str(server_port), str(client_port))]
    sender = conns[(str(client_port), str(server_port))]
    assert receiver["lat_tcp_to_app_samples"] >= MESSAGES
    # every sample waited >= WAIT_S except the handshake's and the corked replies' ACKs (none carry data to copy)
    assert receiver["lat_tcp_to_app_mean_ns"] >= WAIT_S * 1e9 * 0.9
    assert sender["lat_l2_to_tcp_mean_ns"] < WAIT_S * 1e9
    assert receiver["lat_app_to_tcp_samples"] >= CORKS
    assert receiver["lat_app_to_tcp_mean_ns"] >= CORK_S * 1e9 * 0.9
    assert "lat_app_to_tcp_mean_ns" not in sender or sender["lat_app_to_tcp_mean_ns"] < CORK_S * 1e9


def test_sample_follows_about_one_packet_in_n():
    """--sample 10: a connection that receives ~2,000 segments has ~1 in 10 of them
    followed through the layers (the gaps between samples are random, 1 to 19 packets)."""
    from test_net_conn import open_exporter

    exp = open_exporter(latency_sample=10)
    try:
        srv, c, a = loopback_pair()
        with c, a, srv:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(2000):  # one segment each way per message
                c.sendall(b"m" * 1000)
                assert len(a.recv(1000)) == 1000
                a.sendall(b"r")
                assert c.recv(1) == b"r"
            records = exp.collect(1.0)
            server_port = a.getsockname()[1]
    finally:
        exp.close()
    (receiver,) = [r["values"] for r in records if r["kind"] == "tcp_conn" and r["labels"]["lport"] == str(server_port)]
    expected = receiver["segs_in"] / 10
    assert receiver["segs_in"] >= 2000
    assert abs(receiver["lat_l2_to_tcp_samples"] - expected) <= 0.3 * expected, (receiver, expected)
    assert {r["values"]["sample_1_in"] for r in records if r["kind"] == "net_latency"} == {10}

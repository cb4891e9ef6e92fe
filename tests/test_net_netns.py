"""Loss and netfilter drops, induced inside two network namespaces joined by a veth pair
that the test creates and deletes (never on the host's interfaces). The namespaces'
sockets are not in the exporter's iter/tcp snapshot (that walks its own namespace), but
every tracepoint sees them: retransmits, close records and drops."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from test_net_conn import MIB, open_exporter, peers  # noqa: F401  (fixture)

pytestmark = pytest.mark.bpf

A_ADDR, B_ADDR = "10.213.7.1", "10.213.7.2"  # only inside the test's namespaces


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns_pair():
    """(ns_a, ns_b): A_ADDR in ns_a, B_ADDR in ns_b, a veth pair between them."""
    if not shutil.which("iptables"):
        pytest.skip("iptables is not installed")
    tag = str(os.getpid() % 100000)
    ns_a, ns_b = f"bpfs-a-{tag}", f"bpfs-b-{tag}"
    try:
        _ip("netns", "add", ns_a)
        _ip("netns", "add", ns_b)
        _ip("link", "add", f"vbsa{tag}", "netns", ns_a, "type", "veth", "peer", "name", f"vbsb{tag}", "netns", ns_b)
        for ns, dev, addr in ((ns_a, f"vbsa{tag}", A_ADDR), (ns_b, f"vbsb{tag}", B_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield ns_a, ns_b
    finally:
        for ns in (ns_a, ns_b):  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def iptables(ns: str, *rule: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "iptables", *rule], check=True, capture_output=True, text=True)


def test_packet_loss_shows_retransmits_with_the_senders_pid(netns_pair, peers):  # noqa: F811
    ns_a, ns_b = netns_pair
    # every 20th packet after the handshake: deterministic loss (veth carries 64 KiB GSO
    # packets, so a random 5% could miss the few dozen packets of a 4 MiB transfer)
    iptables(ns_b, "-A", "INPUT", "-p", "tcp", "!", "--syn", "-m", "statistic", "--mode", "nth", "--every", "20",
             "--packet", "10", "-j", "DROP")
    exp = open_exporter(events=True, drops=True)
    try:
        srv = peers("server", "--host", B_ADDR, "--expect", 4 * MIB, "--name", "nt-loss-s", netns=ns_b)
        port = srv.port()
        cli = peers("client", "--host", B_ADDR, "--port", port, "--send", 4 * MIB, "--name", "nt-loss-c", netns=ns_a)
        assert cli.line(120) == "done" and srv.line(120) == "done"
        cli.close()
        srv.close()
        records, deadline = [], time.monotonic() + 10
        while time.monotonic() < deadline and not any(r["kind"] == "tcp_close" and r["pid"] == cli.pid
                                                      for r in records):
            time.sleep(0.2)
            records += exp.collect(0.2)
    finally:
        exp.close()
    retrans = [r for r in records if r["kind"] == "tcp_retrans" and r["labels"].get("rport") == str(port)]
    assert retrans, "dropping every 20th packet of 4 MiB caused no retransmit event"
    assert {(r["pid"], r["comm"], r["labels"]["direction"]) for r in retrans} == {(cli.pid, "nt-loss-c", "out")}
    assert {r["labels"]["raddr"] for r in retrans} == {B_ADDR}
    assert {r["labels"]["state"] for r in retrans} <= {"ESTABLISHED", "FIN_WAIT1"}  # the state when it was sent
    # the losses end slow start (ssthresh is set) and put the sender in recovery
    cong = [r for r in records if r["kind"] == "tcp_cong_state" and r["pid"] == cli.pid]
    assert {"Recovery", "Loss"} & {r["labels"]["ca_state"] for r in cong}, cong
    left = [r for r in records if r["kind"] == "tcp_slow_start" and r["pid"] == cli.pid
            and r["labels"]["slow_start"] == "left"]
    assert left and all(r["values"]["snd_cwnd"] >= r["values"]["snd_ssthresh"] for r in left), left
    assert left[0]["values"]["snd_ssthresh"] < 0x7FFFFFFF
    (close,) = [r for r in records if r["kind"] == "tcp_close" and r["pid"] == cli.pid]
    assert close["values"]["total_retrans"] >= 1 and close["values"]["bytes_retrans"] > 0
    assert abs(close["values"]["bytes_acked"] - 4 * MIB) <= 300
    drops = {r["labels"]["reason"]: r["values"]["count"] for r in records if r["kind"] == "pkt_drops"}
    assert drops.get("NETFILTER_DROP", 0) >= 1


def test_netfilter_drop_is_named_with_the_sockets_4tuple(netns_pair, peers):  # noqa: F811
    ns_a, _ = netns_pair
    iptables(ns_a, "-A", "OUTPUT", "-p", "tcp", "-d", B_ADDR, "--dport", "9", "-j", "DROP")
    exp = open_exporter(drops=True)
    try:
        cli = peers("client", "--host", B_ADDR, "--port", 9, "--name", "nt-nf", netns=ns_a)
        time.sleep(1.5)  # the SYN and its first retry are dropped by the OUTPUT rule
        cli.proc.kill()
        records = exp.collect(1.0)
    finally:
        exp.close()
    counted = [r for r in records if r["kind"] == "pkt_drops" and r["labels"]["reason"] == "NETFILTER_DROP"]
    assert counted and counted[0]["values"]["count"] >= 1
    ours = [r for r in records if r["kind"] == "pkt_drop" and r["labels"]["reason"] == "NETFILTER_DROP"
            and r["labels"]["raddr"] == B_ADDR and r["labels"]["rport"] == "9"]
    assert ours and all(r["labels"]["laddr"] == A_ADDR and r["labels"]["protocol"] == "tcp" for r in ours)
    assert all(r["labels"]["state"] == "SYN_SENT" for r in ours)


def test_all_netns_snapshot_shows_every_namespace_with_owners(netns_pair, peers):  # noqa: F811
    """Connections made before the exporter started, inside two namespaces: --all-netns lists
    both ends with their owners and namespace; the default snapshot (own namespace) does not."""
    ns_a, ns_b = netns_pair
    srv = peers("server", "--host", B_ADDR, "--expect", MIB, "--name", "nt-ns-s", netns=ns_b)
    port = srv.port()
    cli = peers("client", "--host", B_ADDR, "--port", port, "--send", MIB, "--name", "nt-ns-c", netns=ns_a)
    assert cli.line(60) == "done" and srv.line(60) == "done"
    inode = {ns: os.stat(f"/run/netns/{ns}").st_ino for ns in (ns_a, ns_b)}
    exp = open_exporter(all_netns=True)
    try:
        every = exp.collect(1.0)
    finally:
        exp.close()
    exp = open_exporter()
    try:
        own = exp.collect(1.0)
    finally:
        exp.close()
    cli.close()
    srv.close()

    def ours(records):
        return [r for r in records if r["kind"] == "tcp_conn" and B_ADDR in (r["labels"]["laddr"], r["labels"]["raddr"])
                and str(port) in (r["labels"]["lport"], r["labels"]["rport"])]

    assert ours(own) == []
    (out,) = [r for r in ours(every) if r["labels"]["raddr"] == B_ADDR]
    (inn,) = [r for r in ours(every) if r["labels"]["laddr"] == B_ADDR]
    assert (out["pid"], out["comm"], out["labels"]["netns"]) == (cli.pid, "nt-ns-c", str(inode[ns_a]))
    assert (inn["pid"], inn["comm"], inn["labels"]["netns"]) == (srv.pid, "nt-ns-s", str(inode[ns_b]))
    assert abs(out["values"]["bytes_acked"] - MIB) <= 300 and abs(inn["values"]["bytes_received"] - MIB) <= 300

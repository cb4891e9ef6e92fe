"""bpfscope net against real loopback connections whose truth the test knows: the bytes
it made a client and a server exchange, their pids and names, and what `ss -tin` says
about the same sockets."""

from __future__ import annotations

import re
import select
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import REPO, free_port

pytestmark = pytest.mark.bpf

WORKLOAD = REPO / "bench" / "net_workload.py"
MIB = 1 << 20


class Peer:
    """One side of the workload (bench/net_workload.py) in its own process."""

    def __init__(self, *args, netns: str | None = None):
        argv = [sys.executable, str(WORKLOAD), *map(str, args)]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.pid = self.proc.pid

    def line(self, timeout: float = 60) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"workload said nothing: {self.proc.stderr.read()}")
        return line.strip()

    def port(self) -> int:
        word, port = self.line().split()
        assert word == "port"
        return int(port)

    def tcp_info(self) -> dict[str, int]:
        """getsockopt(TCP_INFO) of the peer's first connection, decoded with the running
        kernel's struct tcp_info (from BTF: fields newer than ss, such as tcpi_rcv_wnd)."""
        import ctypes

        from bpfscope.bpf.btf import KIND_STRUCT, Btf

        self.proc.stdin.write("tcp_info\n")
        self.proc.stdin.flush()
        word, raw = self.line().split()
        assert word == "tcp_info"
        btf = Btf.vmlinux()
        try:
            ctype = btf.ctype(btf.find("tcp_info", KIND_STRUCT))
        finally:
            btf.close()
        data = bytes.fromhex(raw)
        info = ctype.from_buffer_copy(data.ljust(ctypes.sizeof(ctype), b"\0"))
        return {name: getattr(info, name) for name, *_ in ctype._fields_
                if ctype.__dict__[name].offset + ctype.__dict__[name].size <= len(data)}

    def close(self, timeout: float = 30) -> None:
        """Closing stdin ends the process, which closes its sockets."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def peers():
    started: list[Peer] = []

    def start(*args, **kw) -> Peer:
        p = Peer(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.close()


def open_exporter(**kw):
    from bpfscope.exporters.net import NetExporter

    from bpfscope.hostenv import ensure_mounts

    ensure_mounts()
    exp = NetExporter(**kw)
    exp.open()
    return exp


@pytest.fixture
def net():
    exp = open_exporter(events=True)
    yield exp
    exp.close()


def conns(records: list[dict], **labels) -> list[dict]:
    return [r for r in records if r["kind"] == "tcp_conn"
            and all(r["labels"].get(k) == str(v) for k, v in labels.items())]


_SS_PAIR = re.compile(r"(\w+):(\([^)]*\)|\S+)")


def ss_tin(port: int) -> dict[tuple[int, int], dict]:
    """`ss -tinm` for the sockets with this local or remote port: {(lport, rport): fields}."""
    out = subprocess.run(["ss", "-tinmH", f"( sport = :{port} or dport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    result, key = {}, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            cols = line.split()
            key = (int(cols[3].rsplit(":", 1)[1]), int(cols[4].rsplit(":", 1)[1]))
            result[key] = {}
            continue
        fields = result[key]
        for k, v in _SS_PAIR.findall(line):
            fields[k] = v
    return result


def _skmem(s: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"([a-z]+)(\d+)", s.strip("()"))}


def test_bytes_and_internals_match_ss_after_10mib_out_and_1mib_back(net, peers):
    srv = peers("server", "--expect", 10 * MIB, "--reply", MIB, "--name", "nt-srv")
    port = srv.port()
    cli = peers("client", "--port", port, "--send", 10 * MIB, "--expect", MIB, "--name", "nt-cli")
    assert cli.line() == "done" and srv.line() == "done"
    time.sleep(0.5)  # idle: delayed ACKs sent, nothing in flight, so both tools read a still socket
    before = ss_tin(port)
    records = net.collect(1.0)
    infos = {"out": cli.tcp_info(), "in": srv.tcp_info()}  # what each application's getsockopt says
    after = ss_tin(port)

    (out,) = conns(records, rport=port)
    (inn,) = conns(records, lport=port)
    # owners, direction, state
    assert (out["pid"], out["comm"], out["labels"]["direction"]) == (cli.pid, "nt-cli", "out")
    assert (inn["pid"], inn["comm"], inn["labels"]["direction"]) == (srv.pid, "nt-srv", "in")
    assert out["labels"]["state"] == inn["labels"]["state"] == "ESTABLISHED"
    # the known amounts: bytes_acked counts the SYN and bytes_received does not (within 300 bytes)
    assert abs(out["values"]["bytes_acked"] - 10 * MIB) <= 300
    assert abs(inn["values"]["bytes_received"] - 10 * MIB) <= 300
    assert abs(inn["values"]["bytes_acked"] - MIB) <= 300
    assert abs(out["values"]["bytes_received"] - MIB) <= 300

    # the same sockets through ss (tcp_info + skmem): exact on an idle socket, except the
    # RTTs, which ss prints in ms with 3 decimals (so within 1 us)
    for rec in (out, inn):
        key = (int(rec["labels"]["lport"]), int(rec["labels"]["rport"]))
        stable = ("rtt", "minrtt", "cwnd", "ssthresh", "bytes_acked", "bytes_received", "segs_out", "segs_in",
                  "snd_wnd", "skmem")
        assert all(before[key].get(k) == after[key].get(k) for k in stable), "the socket changed while read"
        ss, v = before[key], rec["values"]
        srtt_ms, rttvar_ms = (float(x) for x in ss["rtt"].split("/"))
        assert abs(v["srtt_us"] / 1000 - srtt_ms) <= 0.001
        assert abs(v["rttvar_us"] / 1000 - rttvar_ms) <= 0.001
        assert abs(v["min_rtt_us"] / 1000 - float(ss["minrtt"])) <= 0.001
        assert v["snd_cwnd"] == int(ss["cwnd"])
        if "ssthresh" in ss:
            assert v["snd_ssthresh"] == int(ss["ssthresh"])
        else:  # ss hides an infinite ssthresh
            assert v["snd_ssthresh"] >= 0x7FFFFFFF
        assert v["bytes_acked"] == int(ss.get("bytes_acked", 0))
        assert v["bytes_received"] == int(ss.get("bytes_received", 0))
        assert v["bytes_sent"] == int(ss.get("bytes_sent", 0))
        assert v["segs_out"] == int(ss["segs_out"]) and v["segs_in"] == int(ss["segs_in"])
        assert v["snd_wnd"] == int(ss["snd_wnd"])
        # ss 6.1 does not print the receive window: the application's own TCP_INFO does
        info = infos[rec["labels"]["direction"]]
        assert v["rcv_wnd"] == info["tcpi_rcv_wnd"] and v["snd_wnd"] == info["tcpi_snd_wnd"]
        assert v["snd_cwnd"] == info["tcpi_snd_cwnd"] and v["rcv_wnd"] > 0
        assert v["mss"] == int(ss["mss"])
        mem = _skmem(ss["skmem"])
        assert (v["sndbuf_bytes"], v["rcvbuf_bytes"], v["wmem_queued_bytes"]) == (mem["tb"], mem["rb"], mem["w"])
        assert v["total_retrans"] == int(ss.get("retrans", "0/0").split("/")[1])
        assert v["bytes_retrans"] == int(ss.get("bytes_retrans", 0))


def test_a_receiver_that_does_not_read_shows_its_receive_queue_full(net):
    """The application stops reading: its receive queue fills, the window it offers closes
    (the tcp_rcvq_full event, on its socket and process), and the unread bytes are what
    `ss` shows in Recv-Q."""
    import os
    import socket

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted socket
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    with srv, socket.create_connection(("127.0.0.1", port)) as c:
        a, _ = srv.accept()
        with a:
            c.setblocking(False)
            end = time.monotonic() + 1.5  # past the first zero-window probes (~0.2 s and doubling)
            while time.monotonic() < end:
                try:
                    c.send(b"x" * 65536)
                except BlockingIOError:
                    time.sleep(0.01)
            records = net.collect(1.0)
            recv_q = int(subprocess.run(["ss", "-tnH", "state", "established", "sport", f"= :{port}"],
                                        capture_output=True, text=True, check=True).stdout.split()[0])
    full = [r for r in records if r["kind"] == "tcp_rcvq_full" and r["labels"]["lport"] == str(port)]
    assert full, [r["kind"] for r in records if r["kind"] != "tcp_conn"]
    assert (full[0]["pid"], full[0]["labels"]["direction"]) == (os.getpid(), "in")
    assert recv_q > 0 and full[0]["values"]["unread_bytes"] == recv_q


@pytest.mark.parametrize("state,closes", [(1, False), (7, True)])  # ESTABLISHED, CLOSE
def test_state_filter_keeps_close_records_only_for_close(state, closes):
    import socket

    from bpfscope.exporters.net import ConnFilter

    exp = open_exporter(filt=ConnFilter(state=state))
    try:
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            c = socket.create_connection(srv.getsockname())
            a, _ = srv.accept()
            port = srv.getsockname()[1]
            c.close()
            a.close()
        time.sleep(0.2)
        records = exp.collect(1.0)
    finally:
        exp.close()
    mine = [r for r in records if r["kind"] == "tcp_close" and str(port) in (r["labels"]["lport"], r["labels"]["rport"])]
    assert len(mine) == (2 if closes else 0), mine
    assert all(r["labels"]["state"] == "CLOSE" for r in mine)


def test_short_lived_client_and_accepting_server_are_attributed_and_closed(net, peers):
    srv = peers("server", "--expect", 1, "--name", "nt-acc")
    port = srv.port()
    cli = peers("client", "--port", port, "--send", 1, "--exit", "--name", "nt-short")
    assert cli.line() == "done"  # connected and wrote its byte
    t0 = time.monotonic()
    cli.proc.wait(5)
    assert time.monotonic() - t0 < 0.1  # and gone within 100 ms of it
    assert srv.line() == "done"
    records = net.collect(1.0)
    (out,) = conns(records, rport=port)  # the client's orphaned socket, FIN sent
    (inn,) = conns(records, lport=port)
    assert (out["pid"], out["comm"], out["labels"]["direction"], out["labels"]["owner"]) == (
        cli.pid, "nt-short", "out", "syscall")
    assert (inn["pid"], inn["comm"], inn["labels"]["direction"]) == (srv.pid, "nt-acc", "in")
    assert inn["labels"]["state"] == "CLOSE_WAIT"

    srv.close()  # the server closes: both sockets reach CLOSE, each with a final record
    deadline, closes = time.monotonic() + 10, []
    while time.monotonic() < deadline and len(closes) < 2:
        time.sleep(0.2)
        closes += [r for r in net.collect(0.2) if r["kind"] == "tcp_close"
                   and port in (int(r["labels"]["lport"]), int(r["labels"]["rport"]))]
    by_dir = {r["labels"]["direction"]: r for r in closes}
    assert set(by_dir) == {"in", "out"}
    assert (by_dir["out"]["pid"], by_dir["out"]["comm"]) == (cli.pid, "nt-short")
    assert (by_dir["in"]["pid"], by_dir["in"]["comm"]) == (srv.pid, "nt-acc")
    assert by_dir["out"]["values"]["bytes_acked"] == 3  # SYN, the byte and its FIN, all acknowledged
    assert by_dir["in"]["values"]["bytes_received"] >= 1
    for r in by_dir.values():
        assert 0 < r["values"]["lifetime_ns"] < 30e9
        assert r["labels"]["state"] == "CLOSE"


def test_connect_to_a_closed_port_shows_the_reset(net, peers):
    port = free_port()
    cli = peers("client", "--port", port, "--exit", "--name", "nt-refused")
    cli.proc.wait(10)
    assert cli.proc.returncode != 0  # ECONNREFUSED
    time.sleep(0.2)
    records = net.collect(1.0)
    sent = [r for r in records if r["kind"] == "tcp_reset_sent" and r["labels"]["lport"] == str(port)]
    recv = [r for r in records if r["kind"] == "tcp_reset_recv" and r["labels"]["rport"] == str(port)]
    closed = [r for r in records if r["kind"] == "tcp_close" and r["labels"]["rport"] == str(port)]
    assert len(sent) == 1 and sent[0]["labels"]["laddr"] == "127.0.0.1"
    assert len(recv) == 1 and (recv[0]["pid"], recv[0]["comm"]) == (cli.pid, "nt-refused")
    assert recv[0]["labels"]["state"] == "SYN_SENT"
    assert len(closed) == 1 and closed[0]["labels"]["old_state"] == "SYN_SENT"
    assert closed[0]["labels"]["conn_id"] == recv[0]["labels"]["conn_id"]


def test_1000_concurrent_connections_all_appear_once(peers):
    exp = open_exporter()
    try:
        srv = peers("server", "--conns", 1000, "--name", "nt-many-s")
        port = srv.port()
        cli = peers("client", "--port", port, "--conns", 1000, "--name", "nt-many-c")
        assert cli.line(120) == "done" and srv.line(120) == "done"
        exp.collect(1.0)  # the first pass finds owners of sockets no hook has named
        records = exp.collect(1.0)
    finally:
        exp.close()
    out = conns(records, rport=port, state="ESTABLISHED")
    inn = conns(records, lport=port, state="ESTABLISHED")
    assert len(out) == 1000 and len(inn) == 1000
    ids = [r["labels"]["conn_id"] for r in out + inn]
    assert len(set(ids)) == 2000
    assert len({(r["labels"]["lport"], r["labels"]["rport"]) for r in out}) == 1000
    assert {(r["pid"], r["comm"], r["labels"]["direction"]) for r in out} == {(cli.pid, "nt-many-c", "out")}
    assert {(r["pid"], r["comm"], r["labels"]["direction"]) for r in inn} == {(srv.pid, "nt-many-s", "in")}


def test_ipv6_connection_is_shown_with_v6_addresses(net, peers):
    srv = peers("server", "--host", "::1", "--expect", 1000, "--reply", 500, "--name", "nt-v6-s")
    port = srv.port()
    cli = peers("client", "--host", "::1", "--port", port, "--send", 1000, "--expect", 500, "--name", "nt-v6-c")
    assert cli.line() == "done" and srv.line() == "done"
    records = net.collect(1.0)
    (out,) = conns(records, rport=port)
    (inn,) = conns(records, lport=port)
    for r in (out, inn):
        assert r["labels"]["family"] == "ipv6" and r["labels"]["laddr"] == r["labels"]["raddr"] == "::1"
    assert (out["pid"], out["labels"]["direction"], out["values"]["bytes_acked"]) == (cli.pid, "out", 1001)
    assert (inn["pid"], inn["labels"]["direction"], inn["values"]["bytes_received"]) == (srv.pid, "in", 1000)


def test_a_program_the_kernel_refuses_is_left_out_with_one_line(monkeypatch, capsys):
    from bpfscope.bpf import BpfError, BpfObject
    from bpfscope.exporters import net_kernel

    real_open = BpfObject.open.__func__

    def refusing_open(cls, name, **kw):
        if "net_kfree_skb" in kw.get("only", []):
            raise BpfError(22, "load net.bpf.o", "libbpf: prog 'net_kfree_skb': failed to find kernel BTF type ID")
        return real_open(cls, name, **kw)

    monkeypatch.setattr(BpfObject, "open", classmethod(refusing_open))
    kernel = net_kernel.NetKernel(drops=True).open()
    try:
        assert kernel.missing == ["net_kfree_skb"]
        assert kernel.snapshot_tuples() is not None
    finally:
        kernel.close()
    assert "refused net_kfree_skb" in capsys.readouterr().err


def test_connections_older_than_bpfscope_are_shown_with_owner_and_direction(peers):
    srv = peers("server", "--conns", 3, "--name", "nt-old-s")
    port = srv.port()
    cli = peers("client", "--port", port, "--conns", 3, "--name", "nt-old-c")
    assert cli.line() == "done" and srv.line() == "done"
    exp = open_exporter()  # started after the connections were made
    try:
        records = exp.collect(1.0)
    finally:
        exp.close()
    out = conns(records, rport=port)
    inn = conns(records, lport=port)
    assert len(out) == len(inn) == 3
    assert {(r["pid"], r["comm"], r["labels"]["direction"], r["labels"]["owner"]) for r in out} == {
        (cli.pid, "nt-old-c", "out", "fd_table")}
    assert {(r["pid"], r["comm"], r["labels"]["direction"], r["labels"]["owner"]) for r in inn} == {
        (srv.pid, "nt-old-s", "in", "fd_table")}
    assert all("start_ts_ns" not in r["values"] for r in out + inn)  # unknown: before we started


def test_table_only_mode_counts_closes_without_building_records():
    """With no --json and no collector, closes are counted in the kernel (metrics, caption):
    no ring-buffer record, no Python work per connection."""
    import socket

    from bpfscope.exporters.net import NetExporter

    exp = NetExporter()
    exp.records_wanted = False  # as ExporterLoop sets it without --json and collector: counted in the kernel
    exp.open()
    try:
        exp.collect(1.0)
        before_in, before_out = exp.closed["in"], exp.closed["out"]
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(128)
        with srv:
            for _ in range(50):
                c = socket.create_connection(srv.getsockname())
                a, _ = srv.accept()
                c.close()
                a.close()
        time.sleep(0.3)
        records = exp.collect(1.0)
        caption = str(exp.table(records).caption)
    finally:
        exp.close()
    assert not [r for r in records if r["kind"] == "tcp_close"]
    assert exp.closed["out"] - before_out >= 50 and exp.closed["in"] - before_in >= 50
    n = int(re.search(r"tcp_close: (\d+)", caption).group(1))
    assert n >= 100


def test_owners_stay_right_when_sockets_share_the_owner_slots(peers):
    """Two owner slots for 40 open sockets: most owners go to socket storage (the fallback
    when another open socket holds a socket's slot). Every socket must still name its own
    process and direction, in the snapshot and in its close record, and a closed socket
    must leave no slot behind."""
    exp = open_exporter(owner_slots=2)
    try:
        srv = peers("server", "--conns", 20, "--expect", 1, "--name", "nt-slot-s")
        port = srv.port()
        cli = peers("client", "--port", port, "--conns", 20, "--send", 1, "--name", "nt-slot-c")
        assert cli.line() == "done" and srv.line() == "done"
        records = exp.collect(1.0)
        out, inn = conns(records, rport=port), conns(records, lport=port)
        assert len(out) == len(inn) == 20
        assert {(r["pid"], r["comm"], r["labels"]["direction"], r["labels"]["owner"]) for r in out} == {
            (cli.pid, "nt-slot-c", "out", "syscall")}
        assert {(r["pid"], r["comm"], r["labels"]["direction"], r["labels"]["owner"]) for r in inn} == {
            (srv.pid, "nt-slot-s", "in", "io")}

        cli.close()
        srv.close()
        deadline, closes = time.monotonic() + 10, []
        while time.monotonic() < deadline and len(closes) < 40:
            time.sleep(0.2)
            closes += [r for r in exp.collect(0.2) if r["kind"] == "tcp_close"
                       and port in (int(r["labels"]["lport"]), int(r["labels"]["rport"]))]
        assert len(closes) == 40
        owners = Counter((r["pid"], r["labels"]["direction"]) for r in closes)
        assert owners == {(cli.pid, "out"): 20, (srv.pid, "in"): 20}
        ours = {int(r["labels"]["conn_id"]) for r in out + inn + closes}
        slots = exp.kernel.obj.maps["owner_slots"]
        assert not {slots.lookup(i).cookie for i in range(2)} & ours
    finally:
        exp.close()

"""`bpfscope net` as a user runs it: --json records, filters, the final record on close,
its own /metrics."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BPFSCOPE, free_port, run_cli

from bpfscope.bpf import wait_for_links
from test_net_conn import MIB, peers  # noqa: F401  (fixture)

pytestmark = pytest.mark.bpf


def _run_net(args: list[str], until_first_record: bool = True) -> tuple[subprocess.Popen, list[dict]]:
    """Start `bpfscope net --json`; return once it printed its first record (BPF attached)."""
    proc = subprocess.Popen(BPFSCOPE + ["net", "--json"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    records: list[dict] = []
    if until_first_record:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line, f"bpfscope net printed nothing: {proc.stderr.read() if proc.poll() is not None else ''}"
        records.append(json.loads(line))
    return proc, records


def _finish(proc: subprocess.Popen, records: list[dict]) -> list[dict]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return records + [json.loads(line) for line in out.splitlines()]


def test_json_records_are_schema_v1_filtered_by_port_and_end_with_a_close(peers):  # noqa: F811
    from bpfscope.schema import validate_records

    srv = peers("server", "--expect", MIB, "--name", "nt-cli-s")
    port = srv.port()
    # something else the filter must hide
    other = peers("server", "--name", "nt-other")
    other_port = other.port()
    peers("client", "--port", other_port, "--name", "nt-other-c")
    proc, records = _run_net(["--port", str(port), "--interval", "0.3", "--duration", "3", "--events"],
                             until_first_record=False)
    # until the exporter holds its BPF links (net_state, net_send, net_recv)
    assert wait_for_links(proc, at_least=3), proc.stderr.read() if proc.poll() is not None else "not attached in time"
    cli = peers("client", "--port", port, "--send", MIB, "--name", "nt-cli-c")
    assert cli.line() == "done" and srv.line() == "done"
    time.sleep(0.7)
    cli.close()
    records = _finish(proc, records)
    validate_records(records)
    assert records and all(port in (int(r["labels"]["lport"]), int(r["labels"]["rport"])) for r in records)
    kinds = {r["kind"] for r in records}
    assert {"tcp_conn", "tcp_connect", "tcp_accept", "tcp_close"} <= kinds
    live = [r for r in records if r["kind"] == "tcp_conn" and r["labels"]["state"] == "ESTABLISHED"]
    assert {r["labels"]["direction"] for r in live} == {"in", "out"}
    for key in ("bytes_acked", "bytes_received", "snd_cwnd", "srtt_us", "snd_wnd", "sndbuf_bytes",
                "wmem_queued_bytes", "rcvbuf_bytes", "in_slow_start", "delivery_rate_bytes_per_s", "age_s"):
        assert all(key in r["values"] for r in live), key
    (close_out,) = [r for r in records if r["kind"] == "tcp_close" and r["labels"]["direction"] == "out"]
    assert (close_out["pid"], close_out["comm"]) == (cli.pid, "nt-cli-c")
    assert abs(close_out["values"]["bytes_acked"] - MIB) <= 300
    assert close_out["values"]["lifetime_ns"] > 0.5e9
    connect = [r for r in records if r["kind"] == "tcp_connect"]
    assert connect and connect[0]["pid"] == cli.pid and connect[0]["labels"]["rport"] == str(port)


def test_direction_pid_and_state_filters(peers):  # noqa: F811
    srv = peers("server", "--name", "nt-flt-s")
    port = srv.port()
    cli = peers("client", "--port", port, "--name", "nt-flt-c")
    assert cli.line() == "done" and srv.line() == "done"
    base = ["--json", "--interval", "0.5", "--duration", "1", "--port", str(port)]
    runs = {
        "in": run_cli("net", *base, "--direction", "in"),
        "pid": run_cli("net", *base, "--pid", str(cli.pid)),
        "comm": run_cli("net", *base, "--comm", "nt-flt-s"),
        "listen": run_cli("net", *base, "--state", "listen"),
        "addr": run_cli("net", *base, "--addr", "10.0.0.0/8"),
    }
    recs = {}
    for name, p in runs.items():
        assert p.returncode == 0, p.stderr
        recs[name] = [json.loads(line) for line in p.stdout.splitlines()]
    assert recs["in"] and {(r["pid"], r["labels"]["direction"]) for r in recs["in"]} == {(srv.pid, "in")}
    assert recs["pid"] and {(r["comm"], r["labels"]["direction"]) for r in recs["pid"]} == {("nt-flt-c", "out")}
    assert recs["comm"] and {r["pid"] for r in recs["comm"]} == {srv.pid}
    assert recs["listen"] and {(r["labels"]["state"], r["labels"]["lport"]) for r in recs["listen"]} == {
        ("LISTEN", str(port))}
    assert recs["addr"] == []


def test_live_view_shows_events_drops_and_layer_latency(peers):  # noqa: F811
    """Without --json the table is what a user reads: --events, --drops and --latency each
    add a section of their own (rows, not only a count in the caption)."""
    import socket

    srv = peers("server", "--expect", MIB, "--name", "nt-live-s")
    port, closed = srv.port(), free_port()
    proc = subprocess.Popen(BPFSCOPE + ["net", "--events", "--drops", "--latency", "--sample", "1", "--interval", "1",
                                        "--duration", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "240"})
    assert wait_for_links(proc, at_least=6), proc.stderr.read() if proc.poll() is not None else "not attached"
    cli = peers("client", "--port", port, "--send", MIB, "--name", "nt-live-c")
    assert cli.line() == "done" and srv.line() == "done"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed), timeout=5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = out[out.rindex("Events ("):]  # every interval prints its tables; one of the last ones saw it all
    rows = [line.split() for line in out.splitlines()]
    assert any("connect" in r and "nt-live-c" in r and f"127.0.0.1:{port}" in r for r in rows), events
    assert any("accept" in r and "nt-live-s" in r for r in rows), events
    assert any(r[1:3] == ["reset", "sent"] and f"127.0.0.1:{closed}" in " ".join(r) for r in rows if len(r) > 3), out
    assert any(r[1:3] == ["reset", "received"] for r in rows if len(r) > 3), out
    assert "Drops by reason" in out and any(r and r[0] == "NO_SOCKET" and int(r[-1]) >= 1 for r in rows), out
    assert "Time between layers, 1 packet in 1 (us)" in out
    assert any(r[:2] == ["rx", "l2_to_tcp"] and int(r[2]) > 0 for r in rows), out


def test_live_view_counts_only_the_filtered_closes():
    """The table's caption counts the closes the filter lets through: 5 connections to the
    filtered port (10 sockets closed) beside 20 to another port. In table-only mode the
    closes were once counted in the kernel for the whole host: 50 and more."""
    import socket

    def connect_and_close(listener: socket.socket, n: int) -> None:
        for _ in range(n):
            c = socket.create_connection(listener.getsockname(), timeout=5)
            a, _ = listener.accept()
            c.close()
            a.close()

    shown, hidden = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
    with shown, hidden:
        port = shown.getsockname()[1]
        proc = subprocess.Popen(BPFSCOPE + ["net", "--port", str(port), "--interval", "1", "--duration", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "240"})
        assert wait_for_links(proc, at_least=3), proc.stderr.read() if proc.poll() is not None else "not attached"
        connect_and_close(hidden, 20)
        connect_and_close(shown, 5)
        connect_and_close(hidden, 20)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    closes = sum(int(n) for n in re.findall(r"tcp_close: (\d+)", out))
    assert closes == 10, out


@pytest.mark.parametrize("args,message", [
    (["--direction", "sideways"], "bad --direction"),
    (["--sort", "colour"], "bad --sort"),
    (["--state", "napping"], "bad --state"),
    (["--addr", "not-an-ip"], "bad --addr"),
    (["--latency", "--sample", "0"], "Invalid value for '--sample'"),
    (["--sample", "10"], "--sample only applies with --latency"),
])
def test_bad_options_end_in_one_line(args, message):
    p = run_cli("net", *args, "--duration", "1")
    assert p.returncode == 2
    assert p.stderr.strip().startswith(f"bpfscope: {message}") and len(p.stderr.strip().splitlines()) == 1


def test_exporter_serves_bounded_net_metrics(peers):  # noqa: F811
    import socket

    import httpx

    srv = peers("server", "--name", "nt-met-s")
    port = srv.port()
    peers("client", "--port", port, "--name", "nt-met-c")
    mport, closed = free_port(), free_port()
    proc = subprocess.Popen(BPFSCOPE + ["net", "--quiet", "--interval", "0.5", "--duration", "8", "--drops",
                                        "--metrics-port", str(mport)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        text, deadline = "", time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", closed), timeout=2)
            except ConnectionRefusedError:
                pass
            try:
                text = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=2).text
                if "bpfscope_net_connections{" in text and "bpfscope_net_drops_total{" in text:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert 'bpfscope_up{exporter="net"} 1.0' in text
        conns = {(m["comm"], m["direction"], m["state"]) for m in (dict(re.findall(r'(\w+)="([^"]*)"', labels))
                 for labels in re.findall(r"^bpfscope_net_connections\{([^}]*)\}", text, re.M))}
        assert {("nt-met-s", "in", "ESTABLISHED"), ("nt-met-c", "out", "ESTABLISHED")} <= conns, conns
        # a connect to a closed port: the reset's packet had no socket to go to
        assert re.search(r'^bpfscope_net_drops_total\{reason="NO_SOCKET"\} [1-9]', text, re.M), text
        assert "bpfscope_net_srtt_seconds_bucket" in text
        label_values = set(re.findall(r'\w+="([^"]*)"', text))
        assert str(port) not in label_values and "127.0.0.1" not in label_values  # no per-connection labels
    finally:
        proc.terminate()
        assert proc.wait(15) == 0

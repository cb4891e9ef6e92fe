"""bpfscope lb policies: least-conn, cross-service fallback, client affinity, passive and
HTTP health, draining. Real backends, real connects from child cgroups, VIPs in 127.77/16."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bpfscope.lb.config import ConfigError, parse
from conftest import free_port
from test_lb import VIP, Backends, Controller, backend_process, connects, lb, settles  # noqa: F401  (lb: the fixture)


def service(name: str, vip: str, ports: list[int], extra: str = "") -> str:
    backends = "".join(f"\n      - {{address: 127.0.0.1, port: {p}}}" for p in ports)
    return (f"  - name: {name}\n    vip: {vip}\n    port: 8080\n{extra}"
            f"    backends:{backends if ports else ' []'}\n")


def status(cli) -> dict:
    r = cli("status", "--json")
    assert r.returncode == 0, r.stderr
    return {s["name"]: s for s in json.loads(r.stdout)["services"]} | {"_": json.loads(r.stdout)}


# A client that opens N connections through the VIP and keeps them: it prints the port each
# one reached, then on "check" prints what recv() says for each (open / closed / errno).
HOLDER = textwrap.dedent("""
    import json, os, socket, sys
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    socks = []
    for _ in range(int(sys.argv[4])):
        s = socket.socket()
        s.connect((sys.argv[2], int(sys.argv[3])))
        socks.append((s, s.recv(16).decode()))
    print(json.dumps([p for _, p in socks]), flush=True)
    for line in sys.stdin:
        out = []
        for s, _ in socks:
            s.settimeout(0.05)
            try:
                out.append("closed" if s.recv(16) == b"" else "data")
            except socket.timeout:
                out.append("open")
            except OSError as e:
                out.append(e.errno)
        print(json.dumps(out), flush=True)
""")


class Holder:
    def __init__(self, cgroup: Path, n: int, vip: str = VIP):
        self.p = subprocess.Popen([sys.executable, "-c", HOLDER, str(cgroup), vip, "8080", str(n)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ports = json.loads(self.p.stdout.readline())

    def check(self) -> list:
        self.p.stdin.write("check\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


# ---- validation of the new keys -----------------------------------------------------------

@pytest.mark.parametrize("extra,place", [
    ("    algorithm: least-conn\n    protocol: udp\n", "services[0]: algorithm: least-conn is for tcp"),
    ("    fallback: nope\n", "services[0].fallback: no other service named 'nope'"),
    ("    affinity: {by: pid, timeout: 30s}\n", "services[0].affinity.by"),
    ("    affinity: {timeout: soon}\n", "services[0].affinity.timeout: 'soon' is not a duration"),
    ("    affinity: {timeout: 0}\n", "services[0].affinity.timeout"),
    ("    health: {type: ftp}\n", "services[0].health.type"),
    ("    health: {type: http, path: healthz}\n", "services[0].health.path"),
    ("    health: {passive_failures: -1}\n", "services[0].health.passive_failures"),
    ("    health: {interval: 5x}\n", "services[0].health.interval"),
])
def test_new_keys_are_validated_with_their_place(extra, place):
    with pytest.raises(ConfigError) as err:
        parse("services:\n" + service("web", VIP, [1], extra), "s.yaml")
    assert str(err.value).startswith("s.yaml: ") and place in str(err.value), str(err.value)


def test_durations_and_defaults():
    f = parse("services:\n" + service("web", VIP, [1], "    affinity: {timeout: 1500ms}\n"
                                                       "    health: {type: http, path: /healthz, interval: 2m}\n"))
    s = f.services[0]
    assert (s.affinity.by, s.affinity.timeout, s.health.interval, s.health.path) == ("cgroup", 1.5, 120.0, "/healthz")


def test_least_conn_backend_limit():
    ports = list(range(1000, 1065))
    with pytest.raises(ConfigError, match=r"services\[0\]: backends: least-conn takes at most 64"):
        parse("services:\n" + service("web", VIP, ports, "    algorithm: least-conn\n"))


@pytest.mark.bpf
def test_bad_new_key_applies_nothing(lb, cgroup):
    cli, apply, _ = lb
    be = Backends(1)
    try:
        assert apply("services:\n" + service("web", VIP, be.ports)).returncode == 0
        bad = apply("services:\n" + service("web", VIP, be.ports, "    algorithm: least-conn\n    fallback: x\n"))
        assert bad.returncode == 2 and "services[0].fallback" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
        assert status(cli)["web"]["algorithm"] == "random"
    finally:
        be.close()


# ---- least-conn -----------------------------------------------------------------------------

@pytest.mark.bpf
def test_least_conn_avoids_the_backend_holding_connections_and_counts_return_to_0(lb, cgroup):
    cli, apply, pin = lb
    busy, idle = Backends(1, hold=True), Backends(2)
    holder = None
    try:
        a, others = busy.ports[0], idle.ports
        lc = "    algorithm: least-conn\n"
        assert apply("services:\n" + service("web", VIP, [a], lc)).returncode == 0
        holder = Holder(cgroup, 10)  # 10 long connections, all to A (the only backend yet)
        assert holder.ports == [str(a)] * 10
        assert apply("services:\n" + service("web", VIP, [a] + others, lc)).returncode == 0
        active = {b["port"]: b["active"] for b in status(cli)["web"]["backends"]}
        assert active == {a: 10, others[0]: 0, others[1]: 0}
        got = connects(cgroup, 200)  # short connections: each ends before the next
        assert not got["errors"] and set(got["seen"]) == {str(p) for p in others}
        assert min(got["seen"].values()) > 40  # ties between B and C are broken at random
        assert holder.check() == ["open"] * 10
        # both ends close: a client socket whose backend still held its end could wait in
        # FIN_WAIT2 (a connection still, for the count) for tcp_fin_timeout, 60 s
        holder.close()
        holder = None
        busy.release()
        settles(lambda: all(b["active"] == 0 for b in status(cli)["web"]["backends"]), what="counts back to 0")
        got = connects(cgroup, 300)
        assert set(got["seen"]) == {str(p) for p in [a] + others}  # all equal again: everyone used
        settles(lambda: all(b["active"] == 0 for b in status(cli)["web"]["backends"]), what="counts back to 0")
        # and the tracker is attached only because a service asked for it
        assert Path(pin, "link_lb_sock_state").exists()
    finally:
        if holder:
            holder.close()
        busy.close()
        idle.close()


@pytest.mark.bpf
def test_services_without_tracking_attach_no_tracker(lb, cgroup):
    _, apply, pin = lb
    be = Backends(1)
    try:
        assert apply("services:\n" + service("web", VIP, be.ports, "    affinity: {timeout: 5s}\n")).returncode == 0
        assert connects(cgroup, 5)["seen"] == {str(be.ports[0]): 5}
        assert not Path(pin, "link_lb_sock_state").exists()
    finally:
        be.close()


# ---- cross-service fallback --------------------------------------------------------------------

@pytest.mark.bpf
def test_fallback_service_takes_over_when_none_is_healthy_then_ehostunreach(lb, cgroup):
    cli, apply, _ = lb
    main, spare = Backends(2), Backends(1)
    try:
        def text(main_ports, spare_ports):
            return ("services:\n" + service("web", VIP, main_ports, "    fallback: spare\n")
                    + service("spare", "127.77.0.2", spare_ports))

        assert apply(text(main.ports, spare.ports)).returncode == 0
        assert set(connects(cgroup, 100)["seen"]) == {str(p) for p in main.ports}  # has its own: no fallback
        assert status(cli)["web"]["fallback"] == "spare"
        assert apply(text([], spare.ports)).returncode == 0
        got = connects(cgroup, 50)
        assert got["seen"] == {str(spare.ports[0]): 50} and not got["errors"]
        assert got["peers"] == [f"{VIP}:8080"]  # still the VIP the application asked for
        assert apply(text([], [])).returncode == 0  # no backend anywhere: fails at once
        t0 = time.monotonic()
        got = connects(cgroup, 5)
        assert got["errors"] == {"113": 5} and time.monotonic() - t0 < 5
        assert status(cli)["_"]["no_backend_refusals"] == 5
    finally:
        main.close()
        spare.close()


# ---- client affinity ---------------------------------------------------------------------------

@contextlib.contextmanager
def child_cgroups(cgroup: Path, prefix: str, n: int):
    """n empty child cgroups <prefix>0 .. of cgroup (the programs on cgroup apply to them), removed after."""
    clients = [cgroup / f"{prefix}{i}" for i in range(n)]
    for c in clients:
        c.mkdir()
    try:
        yield clients
    finally:
        for c in clients:
            c.rmdir()


@pytest.mark.bpf
def test_affinity_by_cgroup_keeps_a_backend_per_client_until_the_timeout(lb, cgroup):
    _, apply, _ = lb
    be = Backends(4)
    try:
        with child_cgroups(cgroup, "client", 8) as clients:
            affinity = "    affinity: {by: cgroup, timeout: 300ms}\n"
            assert apply("services:\n" + service("web", VIP, be.ports, affinity)).returncode == 0
            chosen = []
            for c in clients:
                got = connects(c, 30)
                assert not got["errors"] and len(got["seen"]) == 1, got  # one backend per client
                chosen.append(next(iter(got["seen"])))
            assert len(set(chosen)) > 1  # 8 clients on 4 backends: not all on one ((1/4)^7)
            # after the timeout a client gets a new choice: over 8 idle gaps, more than one backend
            later = set()
            for _ in range(8):
                time.sleep(0.4)
                later |= set(connects(clients[0], 1)["seen"])
            assert len(later) > 1
    finally:
        be.close()


@pytest.mark.bpf
def test_affinity_by_netns_gives_two_cgroups_of_one_netns_the_same_backend(lb, cgroup):
    _, apply, _ = lb
    be = Backends(4)
    try:
        with child_cgroups(cgroup, "ns-client", 4) as clients:
            assert apply("services:\n" + service("web", VIP, be.ports, "    affinity: {by: netns, timeout: 30s}\n")
                         ).returncode == 0
            seen = set()
            for c in clients:
                seen |= set(connects(c, 20)["seen"])
            assert len(seen) == 1
    finally:
        be.close()


# ---- controller: passive health, HTTP checks, draining ---------------------------------------

@pytest.mark.bpf
def test_passive_health_takes_out_a_backend_whose_client_connects_fail(lb, cgroup, tmp_path):
    cli, _, pin = lb
    ports = [free_port(), free_port()]
    procs = [backend_process(p) for p in ports]
    f = tmp_path / "services.yaml"
    # active checks only every 60 s: what takes the backend out is the clients' failures
    f.write_text("services:\n" + service("web", VIP, ports, "    health: {passive_failures: 3, interval: 60s}\n"))
    ctl = Controller(cgroup, pin, f)
    try:
        settles(lambda: set(connects(cgroup, 50)["seen"]) == {str(p) for p in ports}, 20, "both backends used")
        procs[0].kill()
        procs[0].wait()
        t0 = time.monotonic()
        failed = 0
        while True:  # connects fail with ECONNREFUSED until the controller takes it out
            got = connects(cgroup, 10)
            failed += got["errors"].get("111", 0)
            if not got["errors"]:
                break
            assert time.monotonic() - t0 < 10, "passive health did not take the backend out"
        # out within a few controller ticks (0.2 s), not at the next active check (60 s)
        assert time.monotonic() - t0 < 10 and failed >= 3, failed
        got = connects(cgroup, 100)
        assert not got["errors"] and set(got["seen"]) == {str(ports[1])}
        backends = status(cli)["web"]["backends"]
        assert [b["port"] for b in backends] == [ports[1]]
        assert backends[0]["passive"]["failed_in_a_row"] == 0 and backends[0]["passive"]["succeeded"] > 100
        from bpfscope.lb.kernel import Endpoint, LbKernel
        with LbKernel(pin) as k:
            assert k.passive()[Endpoint("127.0.0.1", ports[0])][1] == failed  # the kernel saw each one
    finally:
        log = ctl.stop()
        for p in procs:
            p.kill()
            p.wait()
    assert "client connects failed in a row" in log


HTTP_BACKEND = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    port, state = int(sys.argv[1]), sys.argv[2]
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            code = int(open(state).read()) if self.path == "/healthz" else 200
            body = str(port).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    print("ready", flush=True)
    srv.serve_forever()
""")

HTTP_CLIENT = textwrap.dedent("""
    import http.client, json, os, sys
    from collections import Counter
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    seen = Counter()
    for _ in range(int(sys.argv[3])):
        c = http.client.HTTPConnection(sys.argv[2], 8080, timeout=5)
        c.request("GET", "/")
        seen[c.getresponse().read().decode()] += 1
        c.close()
    print(json.dumps(seen))
""")


@pytest.mark.bpf
def test_http_health_check_500_takes_a_backend_out_and_200_brings_it_back(lb, cgroup, tmp_path):
    _, _, pin = lb
    ports = [free_port(), free_port()]
    states = [tmp_path / f"state{i}" for i in range(2)]
    procs = []
    for p, st in zip(ports, states):
        st.write_text("200")
        procs.append(subprocess.Popen([sys.executable, "-c", HTTP_BACKEND, str(p), str(st)],
                                      stdout=subprocess.PIPE, text=True))
        assert procs[-1].stdout.readline().strip() == "ready"
    f = tmp_path / "services.yaml"
    f.write_text("services:\n" + service("web", VIP, ports,
                                         "    health: {type: http, path: /healthz, interval: 200ms, fall: 2}\n"))
    ctl = Controller(cgroup, pin, f)

    def seen(n: int = 40) -> set:
        out = subprocess.run([sys.executable, "-c", HTTP_CLIENT, str(cgroup), VIP, str(n)],
                             capture_output=True, text=True, timeout=60)
        return set(json.loads(out.stdout)) if out.returncode == 0 else set()

    try:
        settles(lambda: seen() == {str(p) for p in ports}, 20, "both backends used")
        states[0].write_text("500")  # still accepts TCP: only the HTTP check can tell
        settles(lambda: seen() == {str(ports[1])}, 5, "backend 0 out after two 500s")
        assert seen(100) == {str(ports[1])}
        states[0].write_text("200")
        settles(lambda: seen() == {str(p) for p in ports}, 5, "backend 0 back after a 200")
    finally:
        log = ctl.stop()
        for p in procs:
            p.kill()
            p.wait()
    assert "failed 2 http check(s)" in log and "passed 1 http check(s)" in log


@pytest.mark.bpf
def test_removed_backend_takes_no_new_connects_and_is_drained_after_the_timeout(lb, cgroup, tmp_path):
    _, _, pin = lb
    old, new = Backends(1, hold=True), Backends(1)
    f = tmp_path / "services.yaml"
    f.write_text("services:\n" + service("web", VIP, old.ports))
    ctl = Controller(cgroup, pin, f, "--drain-timeout", "1.5")
    holder = None
    try:
        settles(lambda: connects(cgroup, 1)["seen"] == {str(old.ports[0]): 1}, 20, "controller applied")
        holder = Holder(cgroup, 3)
        assert holder.ports == [str(old.ports[0])] * 3
        f.write_text("services:\n" + service("web", VIP, new.ports))
        removed = time.monotonic()
        settles(lambda: connects(cgroup, 1)["seen"] == {str(new.ports[0]): 1}, 3, "reload")
        assert connects(cgroup, 50)["seen"] == {str(new.ports[0]): 50}  # no new connect to the old one
        assert holder.check() == ["open"] * 3  # its connections live on during the drain
        settles(lambda: holder.check() != ["open"] * 3, 5, "drained")
        assert time.monotonic() - removed >= 1.4
        # closed by the kernel: ECONNABORTED (103) here, a reset at the peer
        assert set(holder.check()) <= {"closed", 103, 104}
    finally:
        if holder:
            holder.close()
        log = ctl.stop()
        old.close()
        new.close()
    assert f"drained 127.0.0.1:{old.ports[0]}: closed 3 remaining connection(s)" in log

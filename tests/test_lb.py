"""bpfscope lb: real backends, real connects from a child cgroup, VIPs in 127.77.0.0/16 (IPv6:
fd00:77::1 with backends on [::1], inside a network namespace the test creates)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bpfscope.lb.alias import alias_table, shares
from bpfscope.lb.config import ConfigError, parse
from bpfscope.netns import call_in
from conftest import BPFSCOPE, run_cli

VIP = "127.77.0.1"
VIP6 = "fd00:77::1"  # only ever used inside the test's own network namespace (see `family`)


# ---- pure parts -------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [[1], [1, 2, 7], [5, 5, 5], [1, 65535], [3, 1, 4, 1, 5, 9, 2, 6]])
def test_alias_table_gives_each_backend_its_weight(weights):
    got = shares(alias_table(weights))
    total = sum(weights)
    assert got == pytest.approx([w / total for w in weights], abs=1e-6)


@pytest.mark.parametrize("text,place", [
    ("services:\n  - {name: a, vip: 127.77.0.300, port: 80}\n", "services[0].vip"),
    ("services:\n  - {name: a, vip: 127.77.0.1, port: 80}\n  - {name: b, vip: 127.77.0.1, port: 80}\n",
     "services[1].vip"),
    ("services:\n  - name: a\n    vip: 127.77.0.1\n    port: 80\n    backends:\n"
     "      - {address: 127.0.0.1, port: 1, weight: 70000}\n", "services[0].backends[0].weight"),
    ("services:\n  - {name: a, vip: 127.77.0.1, port: 80, colour: red}\n", "services[0].colour"),
    ("services:\n  - {name: a, vip: 127.77.0.1, port: 80, backends: [{address: '::1', port: 1}]}\n",
     "services[0]"),
    ("services: [\n", "line"),
    ("services:\n  - {name: a, vip: 127.77.0.1, port: 53, protocol: udp, getpeername: backend}\n",
     "services[0]: getpeername"),
    ("services:\n  - {name: a, vip: 127.77.0.1, port: 80, getpeername: origin}\n", "services[0].getpeername"),
])
def test_malformed_config_names_the_place(text, place):
    with pytest.raises(ConfigError) as err:
        parse(text, "s.yaml")
    assert str(err.value).startswith("s.yaml:") and place in str(err.value)


# ---- kernel ----------------------------------------------------------------------------

class Backends:
    """TCP servers on 127.0.0.1 (or host) that answer each connection with their own port (and
    then close it, or with hold=True keep it open until close())."""

    def __init__(self, n: int, hold: bool = False, host: str = "127.0.0.1"):
        self.socks, self.held, self.hold = [], [], hold
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            s.listen(1024)
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()
        self.ports = [s.getsockname()[1] for s in self.socks]

    def _serve(self, s: socket.socket) -> None:
        port = str(s.getsockname()[1]).encode()
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.sendall(port)
            if self.hold:
                self.held.append(c)
            else:
                c.close()

    def release(self) -> None:
        """Stop holding: close the held connections and close new ones at once from now on."""
        self.hold = False
        for c in self.held:
            c.close()

    def stop(self, i: int) -> None:
        """Stop one backend for real: shutdown wakes its accept() so the port is free again."""
        try:
            self.socks[i].shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socks[i].close()

    def close(self) -> None:
        for i in range(len(self.socks)):
            self.stop(i)
        for c in self.held:
            c.close()


CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    from collections import Counter
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    vip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    seen, peers, errors = Counter(), set(), Counter()
    for _ in range(n):
        s = socket.socket(family)
        try:
            s.connect((vip, port))
            peers.add("%s:%d" % s.getpeername()[:2])
            seen[s.recv(16).decode()] += 1
        except OSError as e:
            errors[e.errno] += 1
        finally:
            s.close()
    print(json.dumps({"seen": seen, "peers": sorted(peers), "errors": errors}))
""")


def connects(cgroup: Path, n: int, vip: str = VIP, port: int = 8080) -> dict:
    out = subprocess.run([sys.executable, "-c", CLIENT, str(cgroup), vip, str(port), str(n)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


@pytest.fixture
def lb(cgroup, tmp_path):
    pin = f"/sys/fs/bpf/bpfscope-test-lb-{os.getpid()}-{tmp_path.name}"

    def cli(*args: str):
        return run_cli("lb", *args, "--pin-dir", pin)

    def apply(yaml_text: str):
        f = tmp_path / "services.yaml"
        f.write_text(yaml_text)
        return run_cli("lb", "apply", str(f), "--cgroup", str(cgroup), "--pin-dir", pin)

    try:
        yield cli, apply, pin
    finally:
        run_cli("lb", "reset", "--pin-dir", pin)
        assert not os.path.exists(pin)


def services_yaml(ports: list[int], weights: list[int], algorithm: str = "weighted", vip: str = VIP,
                  address: str = "127.0.0.1") -> str:
    backends = "\n".join(f"        - {{address: '{address}', port: {p}, weight: {w}}}" for p, w in zip(ports, weights))
    return textwrap.dedent(f"""\
        services:
          - name: web
            vip: {vip}
            port: 8080
            protocol: tcp
            algorithm: {algorithm}
            backends:
        """) + backends + "\n"


@pytest.fixture(params=["ipv4", "ipv6"])
def family(request):
    """(vip, backend host, inside) for each address family; inside(fn) runs fn where the
    backends and the client live. IPv6 runs in a network namespace this fixture creates with
    only `lo` up: backends on [::1] and a client whose connect()/sendto() to VIP6 is rewritten
    before routing, and even if it were not, nothing in that namespace can leave the host."""
    if request.param == "ipv4":
        yield VIP, "127.0.0.1", lambda fn: fn()
        return
    ns = f"bpfs-lb6-{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)

        def inside(fn):
            # a thread that joins the namespace: sockets it creates and processes it starts
            # (fork inherits the thread's namespace) are in there; the cgroup is not per netns
            got = call_in([f"/run/netns/{ns}"], fn)[0]
            assert got is not None, f"could not run {fn} in {ns}"
            return got

        yield VIP6, "::1", inside
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.mark.bpf
def test_weights_1_2_7_over_3000_connects_and_getpeername_is_the_vip(lb, cgroup, family):
    cli, apply, _ = lb
    vip, host, inside = family
    be = inside(lambda: Backends(3, host=host))
    try:
        r = apply(services_yaml(be.ports, [1, 2, 7], vip=vip, address=host))
        assert r.returncode == 0, r.stderr
        got = inside(lambda: connects(cgroup, 3000, vip=vip))
        assert not got["errors"]
        assert got["peers"] == [f"{vip}:8080"]
        share = [got["seen"].get(str(p), 0) / 3000 for p in be.ports]
        for s, want in zip(share, (0.10, 0.20, 0.70)):
            assert abs(s - want) <= 0.03, share
        status = json.loads(cli("status", "--json").stdout)
        chosen = {b["port"]: b["choices"] for b in status["services"][0]["backends"]}
        assert chosen == {p: got["seen"][str(p)] for p in be.ports}
    finally:
        be.close()


HELD_CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    vip, port = sys.argv[2], int(sys.argv[3])
    held = [socket.create_connection((vip, port)) for _ in range(20)]
    before = ["%s:%d" % s.getpeername() for s in held]
    for _ in range(2000):
        socket.create_connection((vip, port)).close()
    after = ["%s:%d" % s.getpeername() for s in held]
    print(json.dumps({"before": before, "after": after}))
""")


@pytest.mark.bpf
def test_held_sockets_keep_the_vip_in_getpeername_after_2000_other_connects(lb, cgroup):
    # the VIP of a default service lives in a slot of lb_peers per socket cookie: 2,000 later
    # sockets of the same VIP must not take the slots of the 20 still open
    _, apply, _ = lb
    be = Backends(2, hold=True)
    try:
        r = apply(services_yaml(be.ports, [1, 1], "random"))
        assert r.returncode == 0, r.stderr
        out = subprocess.run([sys.executable, "-c", HELD_CLIENT, str(cgroup), VIP, "8080"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        got = json.loads(out)
        assert got["before"] == [f"{VIP}:8080"] * 20
        assert got["after"] == [f"{VIP}:8080"] * 20
    finally:
        be.close()


@pytest.mark.bpf
def test_getpeername_backend_answers_the_backend_and_the_vip_still_balances(lb, cgroup):
    # no per-socket record: getpeername() shows where the socket went; the default (vip)
    # in the same file still answers with the VIP, so the record is per service
    cli, apply, _ = lb
    be = Backends(2)
    try:
        text = services_yaml(be.ports, [1, 1], "random") + "    getpeername: backend\n" + \
            f"  - {{name: other, vip: 127.77.0.2, port: 8080, backends: [{{address: 127.0.0.1, port: {be.ports[0]}}}]}}\n"
        r = apply(text)
        assert r.returncode == 0, r.stderr
        got = connects(cgroup, 200)
        assert not got["errors"]
        assert got["peers"] == sorted(f"127.0.0.1:{p}" for p in be.ports)
        assert all(got["seen"][str(p)] > 50 for p in be.ports), got["seen"]
        assert connects(cgroup, 5, vip="127.77.0.2")["peers"] == ["127.77.0.2:8080"]
        status = {s["name"]: s for s in json.loads(cli("status", "--json").stdout)["services"]}
        assert (status["web"]["getpeername"], status["other"]["getpeername"]) == ("backend", "vip")
    finally:
        be.close()


@pytest.mark.bpf
def test_connects_outside_the_cgroup_are_not_redirected(lb):
    _, apply, _ = lb
    be = Backends(1)
    try:
        assert apply(services_yaml(be.ports, [1])).returncode == 0
        s = socket.socket()
        s.settimeout(2)
        with pytest.raises(OSError):  # nothing listens on the VIP itself
            s.connect((VIP, 8080))
        s.close()
    finally:
        be.close()


@pytest.mark.bpf
def test_curl_reaches_a_backend_through_the_vip(lb, cgroup, tmp_path):
    _, apply, _ = lb
    (tmp_path / "index.html").write_text("hello from the backend\n")
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().split(" port ")[1].split()[0])
        assert apply(services_yaml([port], [1], "random")).returncode == 0
        out = subprocess.run(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec curl -sS --max-time 5 "
                                          f"http://{VIP}:8080/index.html"], capture_output=True, text=True)
        assert out.stdout == "hello from the backend\n", out.stderr
    finally:
        server.kill()
        server.wait()


@pytest.mark.bpf
def test_service_without_backends_fails_connect_at_once_with_ehostunreach(lb, cgroup, family):
    cli, apply, _ = lb
    vip, _, inside = family
    assert apply(f"services:\n  - {{name: web, vip: '{vip}', port: 8080}}\n").returncode == 0
    got = inside(lambda: connects(cgroup, 5, vip=vip))
    assert got["errors"] == {"113": 5}  # EHOSTUNREACH
    assert json.loads(cli("status", "--json").stdout)["no_backend_refusals"] == 5


@pytest.mark.bpf
def test_reapply_switches_backends_and_drops_the_old_table(lb, cgroup):
    cli, apply, _ = lb
    blue, green = Backends(2), Backends(2)
    try:
        assert apply(services_yaml(blue.ports, [1, 1], "random")).returncode == 0
        assert set(connects(cgroup, 200)["seen"]) == {str(p) for p in blue.ports}
        r = apply(services_yaml(green.ports, [1, 1], "random"))
        assert "1 changed" in r.stdout
        assert set(connects(cgroup, 200)["seen"]) == {str(p) for p in green.ports}
        again = apply(services_yaml(green.ports, [1, 1], "random"))
        assert "1 unchanged" in again.stdout
        from bpfscope.lb.kernel import LbKernel
        with LbKernel(lb[2]) as k:
            assert len(list(k.map("lb_backends").keys())) == 2  # blue's table is gone
    finally:
        blue.close()
        green.close()


@pytest.mark.bpf
def test_malformed_file_changes_nothing(lb, cgroup, tmp_path):
    cli, apply, _ = lb
    be = Backends(1)
    try:
        assert apply(services_yaml(be.ports, [1])).returncode == 0
        before = json.loads(cli("status", "--json").stdout)["services"]
        bad = apply(services_yaml(be.ports, [70000]))
        assert bad.returncode == 2 and "services[0].backends[0].weight" in bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        after = json.loads(cli("status", "--json").stdout)["services"]
        assert [(s["name"], s["backends"][0]["port"]) for s in after] == \
               [(s["name"], s["backends"][0]["port"]) for s in before]
    finally:
        be.close()


@pytest.mark.bpf
def test_delete_and_reset_leave_nothing_behind(lb, cgroup):
    cli, apply, pin = lb
    be = Backends(1)
    try:
        assert apply(services_yaml(be.ports, [1])).returncode == 0
        assert cli("delete", "web").returncode == 0
        assert json.loads(cli("status", "--json").stdout)["services"] == []
        assert cli("delete", "web").returncode == 2
        r = cli("reset")
        from bpfscope.lb.kernel import MAPS, PROGRAMS
        assert r.returncode == 0 and f"removed {len(MAPS) + len(PROGRAMS)} pins" in r.stdout
        assert not os.path.exists(pin)
        shown = subprocess.run(["bpftool", "cgroup", "show", str(cgroup)], capture_output=True, text=True)
        assert "lb_" not in shown.stdout
        got = connects(cgroup, 3)  # no longer redirected: nothing listens on the VIP
        assert got["errors"] and not got["seen"]
    finally:
        be.close()


BACKEND_PROCESS = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1024)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(sys.argv[1].encode())
        c.close()
""")


def settles(pred, within_s: float = 5.0, what: str = "") -> float:
    """Seconds until pred() holds (checked with real connects); fails after within_s."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < within_s, f"not within {within_s} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - t0


class Controller:
    """`bpfscope lb run` on a services file in the background; stop() ends it and returns its stderr."""

    def __init__(self, cgroup: Path, pin: str, path: Path, *args: str, interval: str = "0.2",
                 stderr=subprocess.PIPE):
        self.p = subprocess.Popen(BPFSCOPE + ["lb", "run", "--config", str(path), "--cgroup", str(cgroup),
                                              "--pin-dir", pin, "--interval", interval, *args],
                                  stderr=stderr, text=True)

    def stop(self) -> str:
        self.p.terminate()
        try:
            return self.p.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.communicate()[1]


def backend_process(port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", BACKEND_PROCESS, str(port)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.bpf
def test_controller_takes_a_dead_backend_out_within_one_interval_and_back(lb, cgroup, tmp_path):
    import httpx

    from conftest import free_port

    _, _, pin = lb
    ports = [free_port(), free_port()]
    procs = [backend_process(p) for p in ports]
    f = tmp_path / "services.yaml"
    f.write_text(services_yaml(ports, [1, 1], "random"))
    mport = free_port()
    ctl = Controller(cgroup, pin, f, "--timeout", "0.2", "--metrics-port", str(mport), interval="0.5")
    try:
        settles(lambda: connects(cgroup, 1)["seen"], 15, "the first apply")
        assert set(connects(cgroup, 100)["seen"]) == {str(p) for p in ports}

        # kill backend 0: after one interval (0.5 s, plus the probe) it gets no connect
        procs[0].kill()
        procs[0].wait()
        settles(lambda: (c := connects(cgroup, 20))["seen"].keys() == {str(ports[1])} and not c["errors"],
                3.0, "the controller reacts")
        got = connects(cgroup, 200)  # and from then on no connect fails
        assert not got["errors"] and set(got["seen"]) == {str(ports[1])}
        # restart it: it comes back
        procs[0] = backend_process(ports[0])
        settles(lambda: set(connects(cgroup, 50)["seen"]) == {str(p) for p in ports}, 3.0, "the controller reacts")
        # every backend down: connect() fails at once with EHOSTUNREACH
        for p in procs:
            p.kill()
            p.wait()
        settles(lambda: connects(cgroup, 1)["errors"] == {"113": 1}, 3.0, "the controller reacts")
        t0 = time.monotonic()
        assert connects(cgroup, 5)["errors"] == {"113": 5}
        assert time.monotonic() - t0 < 5
        procs = [backend_process(p) for p in ports]
        settles(lambda: set(connects(cgroup, 50)["seen"]) == {str(p) for p in ports}, 3.0, "the controller reacts")
        # a bad edit is refused and the running configuration kept
        f.write_text("services: [\n")
        time.sleep(1.0)
        assert set(connects(cgroup, 100)["seen"]) == {str(p) for p in ports}
        text = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        assert "bpfscope_lb_backend_choices_total" in text and "bpfscope_lb_reload_errors_total 1.0" in text
        # SIGKILL of the controller changes nothing for applications
        ctl.p.kill()
        ctl.p.wait(10)
        assert set(connects(cgroup, 100)["seen"]) == {str(p) for p in ports}
    finally:
        ctl.p.kill()
        ctl.p.wait()
        for p in procs:
            p.kill()
            p.wait()


UDP_CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    vip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    out = []
    for i in range(n):
        s = socket.socket(family, socket.SOCK_DGRAM)  # unconnected: sendto/recvfrom
        s.settimeout(3)
        s.sendto(b"ping %d" % i, (vip, port))
        data, frm = s.recvfrom(64)
        out.append([data.decode(), "%s:%d" % frm[:2]])
        s.close()
    print(json.dumps(out))
""")


@pytest.mark.bpf
def test_udp_request_reply_through_a_vip_comes_back_from_the_vip(lb, cgroup, family):
    _, apply, _ = lb
    vip, host, inside = family

    def udp_server():
        u = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((host, 0))
        return u

    servers = [inside(udp_server) for _ in range(2)]

    def echo(u):
        port = u.getsockname()[1]
        while True:
            try:
                data, frm = u.recvfrom(64)
            except OSError:
                return
            u.sendto(b"%d:" % port + data, frm)

    for u in servers:
        threading.Thread(target=echo, args=(u,), daemon=True).start()
    ports = [u.getsockname()[1] for u in servers]
    try:
        yaml_text = services_yaml(ports, [1, 1], "random", vip=vip, address=host).replace("protocol: tcp", "protocol: udp")
        assert apply(yaml_text).returncode == 0
        out = inside(lambda: subprocess.run([sys.executable, "-c", UDP_CLIENT, str(cgroup), vip, "8080", "40"],
                                            capture_output=True, text=True, timeout=60))
        assert out.returncode == 0, out.stderr
        replies = json.loads(out.stdout)
        assert len(replies) == 40
        assert {frm for _, frm in replies} == {f"{vip}:8080"}  # replies seem to come from the VIP
        assert all(data.split(":", 1)[1] == f"ping {i}" for i, (data, _) in enumerate(replies))
        assert {data.split(":")[0] for data, _ in replies} == {str(p) for p in ports}  # both backends used
    finally:
        for u in servers:
            u.close()


PACED_CLIENT = textwrap.dedent("""
    import json, os, socket, sys, time
    from collections import Counter
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    vip, port, rate, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    seen, errors = Counter(), Counter()
    t0 = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s = socket.socket()
        try:
            s.connect((vip, port))
            seen[s.recv(16).decode()] += 1
        except OSError as e:
            errors[e.errno] += 1
        finally:
            s.close()
    print(json.dumps({"seen": seen, "errors": errors, "elapsed": time.monotonic() - t0}))
""")


def two_services(main_ports, fallback_ports, limit: str) -> str:
    main = "\n".join(f"      - {{address: 127.0.0.1, port: {p}}}" for p in main_ports)
    fb = "\n".join(f"      - {{address: 127.0.0.1, port: {p}}}" for p in fallback_ports)
    return (f"services:\n  - name: web\n    vip: {VIP}\n    port: 8080\n    rate_limit: {limit}\n"
            f"    backends:\n{main}\n  - name: sorry\n    vip: 127.77.0.2\n    port: 8080\n    backends:\n{fb}\n")


@pytest.mark.bpf
@pytest.mark.parametrize("action", ["refuse", "degrade"])
def test_rate_limit_100_per_s_burst_10_accepts_310_of_3000(lb, cgroup, action):
    cli, apply, _ = lb
    main, fallback = Backends(1), Backends(1)
    try:
        limit = ("{per_second: 100, burst: 10}" if action == "refuse"
                 else "{per_second: 100, burst: 10, action: degrade, fallback: sorry}")
        r = apply(two_services(main.ports, fallback.ports, limit))
        assert r.returncode == 0, r.stderr
        out = subprocess.run([sys.executable, "-c", PACED_CLIENT, str(cgroup), VIP, "8080", "1000", "3"],
                             capture_output=True, text=True, timeout=60, check=True)
        got = json.loads(out.stdout)
        accepted = got["seen"].get(str(main.ports[0]), 0)
        expected = 10 + 100 * got["elapsed"]  # the burst, then the rate over the run's real length
        assert abs(accepted - expected) <= 0.10 * expected, (accepted, expected, got)
        rest = 3000 - accepted
        limited = json.loads(cli("status", "--json").stdout)["rate_limited"]
        if action == "refuse":
            assert got["errors"] == {"111": rest}  # ECONNREFUSED
            assert limited == {"refused": rest, "degraded": 0}
        else:
            assert not got["errors"] and got["seen"].get(str(fallback.ports[0]), 0) == rest
            assert limited == {"refused": 0, "degraded": rest}
    finally:
        main.close()
        fallback.close()


def test_degrade_needs_an_existing_fallback():
    text = ("services:\n  - name: web\n    vip: 127.77.0.1\n    port: 80\n"
            "    rate_limit: {per_second: 5, action: degrade, fallback: nope}\n")
    with pytest.raises(ConfigError, match=r"services\[0\].rate_limit.fallback: no other service named 'nope'"):
        parse(text)


@pytest.mark.bpf
def test_upsert_changes_one_service_in_place(lb, cgroup):
    from bpfscope.lb.config import parse as parse_config
    from bpfscope.lb.kernel import LbKernel

    _, apply, pin = lb
    blue, green = Backends(2), Backends(1)
    try:
        assert apply(services_yaml(blue.ports, [1, 1], "random")).returncode == 0
        new = parse_config(services_yaml(green.ports, [1], "random")).services[0]
        with LbKernel(pin) as k:
            for _ in range(3):  # the id flips to its twin and back: never a collision
                k.upsert(new)
                assert len(list(k.map("lb_backends").keys())) == 1
        assert set(connects(cgroup, 50)["seen"]) == {str(green.ports[0])}
    finally:
        blue.close()
        green.close()


TIMED_CLIENT = textwrap.dedent("""
    import json, os, socket, sys, time
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    vip, port, rate, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    print("ready", flush=True)
    out, t0 = [], time.monotonic()
    for i in range(int(rate * seconds)):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s = socket.socket()
        started = time.time()
        try:
            s.connect((vip, port))
            out.append([started, s.recv(16).decode()])
        except OSError as e:
            out.append([started, "error %d" % e.errno])
        finally:
            s.close()
    print(json.dumps(out))
""")


@pytest.mark.bpf
def test_blue_green_switch_under_1000_connects_per_s_fails_none(lb, cgroup):
    import time

    _, apply, _ = lb
    blue, green = Backends(2), Backends(2)
    try:
        assert apply(services_yaml(blue.ports, [1, 1], "random")).returncode == 0
        client = subprocess.Popen([sys.executable, "-c", TIMED_CLIENT, str(cgroup), VIP, "8080", "1000", "3"],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        r = apply(services_yaml(green.ports, [1, 1], "random"))
        switched = time.time()
        assert r.returncode == 0 and "1 changed" in r.stdout
        time.sleep(1.0)
        r = apply(services_yaml(blue.ports, [1, 1], "random"))  # and back
        back = time.time()
        out = json.loads(client.communicate(timeout=60)[0])
        assert len(out) == 3000
        assert not [x for x in out if x[1].startswith("error")]
        green_ports, blue_ports = {str(p) for p in green.ports}, {str(p) for p in blue.ports}
        # every connect that started after the switch returned went to green, until the switch back
        assert all(port in green_ports for t, port in out if switched < t < back - 0.3)
        assert all(port in blue_ports for t, port in out if t > back)
        assert any(port in green_ports for _, port in out) and any(port in blue_ports for _, port in out)
    finally:
        blue.close()
        green.close()


@pytest.mark.bpf
def test_controller_sigkill_under_load_fails_no_connect(lb, cgroup, tmp_path):
    _, _, pin = lb
    be = Backends(2)
    f = tmp_path / "services.yaml"
    f.write_text(services_yaml(be.ports, [1, 1], "random"))
    ctl = Controller(cgroup, pin, f, interval="0.5", stderr=subprocess.DEVNULL)
    try:
        settles(lambda: connects(cgroup, 1)["seen"], 15, "the first apply")
        client = subprocess.Popen([sys.executable, "-c", TIMED_CLIENT, str(cgroup), VIP, "8080", "1000", "2"],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "ready"
        time.sleep(0.7)
        ctl.p.kill()
        ctl.p.wait(10)
        out = json.loads(client.communicate(timeout=60)[0])
        assert len(out) == 2000 and not [x for x in out if x[1].startswith("error")]
    finally:
        ctl.p.kill()
        ctl.p.wait()
        be.close()


@pytest.mark.bpf
def test_canary_gets_its_share_and_chosen_cgroups_always_get_it(lb, cgroup):
    _, apply, _ = lb
    stable, canary = Backends(2), Backends(1)
    chosen = cgroup / "canary-clients"  # nested: the programs on `cgroup` apply to it too
    chosen.mkdir()
    try:
        lines = [f"      - {{address: 127.0.0.1, port: {p}, version: v1}}" for p in stable.ports]
        lines.append(f"      - {{address: 127.0.0.1, port: {canary.ports[0]}, version: v2}}")
        text = (f"services:\n  - name: web\n    vip: {VIP}\n    port: 8080\n"
                f"    canary: {{version: v2, percent: 20, cgroups: ['{chosen}']}}\n    backends:\n"
                + "\n".join(lines) + "\n")
        r = apply(text)
        assert r.returncode == 0, r.stderr
        got = connects(cgroup, 3000)
        assert not got["errors"]
        share = got["seen"].get(str(canary.ports[0]), 0) / 3000
        assert abs(share - 0.20) <= 0.03, share
        assert set(got["seen"]) == {str(p) for p in stable.ports + canary.ports}
        everyone = connects(chosen, 200)  # the chosen clients: always the canary
        assert everyone["seen"] == {str(canary.ports[0]): 200}
        # without the canary the stable backends take everything again
        r = apply(services_yaml(stable.ports, [1, 1], "random"))
        assert r.returncode == 0
        assert set(connects(chosen, 100)["seen"]) == {str(p) for p in stable.ports}
    finally:
        stable.close()
        canary.close()
        chosen.rmdir()


def test_canary_version_must_exist():
    text = ("services:\n  - name: web\n    vip: 127.77.0.1\n    port: 80\n    canary: {version: v9, percent: 5}\n"
            "    backends: [{address: 127.0.0.1, port: 1, version: v1}]\n")
    with pytest.raises(ConfigError, match="canary.version: no backend has version 'v9'"):
        parse(text)

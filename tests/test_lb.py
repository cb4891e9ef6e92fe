"""bpfscope lb: real backends, real connects from a child cgroup, VIPs in 127.77.0.0/16."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest

from bpfscope.lb.alias import alias_table, shares
from bpfscope.lb.config import ConfigError, parse
from conftest import run_cli

VIP = "127.77.0.1"


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
])
def test_malformed_config_names_the_place(text, place):
    with pytest.raises(ConfigError) as err:
        parse(text, "s.yaml")
    assert str(err.value).startswith("s.yaml:") and place in str(err.value)


# ---- kernel ----------------------------------------------------------------------------

class Backends:
    """TCP servers on 127.0.0.1 that answer each connection with their own port."""

    def __init__(self, n: int):
        self.socks = []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(1024)
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()
        self.ports = [s.getsockname()[1] for s in self.socks]

    @staticmethod
    def _serve(s: socket.socket) -> None:
        port = str(s.getsockname()[1]).encode()
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.sendall(port)
            c.close()

    def close(self) -> None:
        for s in self.socks:
            s.close()


CLIENT = textwrap.dedent("""
    import json, os, socket, sys
    from collections import Counter
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    vip, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seen, peers, errors = Counter(), set(), Counter()
    for _ in range(n):
        s = socket.socket()
        try:
            s.connect((vip, port))
            peers.add("%s:%d" % s.getpeername())
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


def services_yaml(ports: list[int], weights: list[int], algorithm: str = "weighted", vip: str = VIP) -> str:
    backends = "\n".join(f"        - {{address: 127.0.0.1, port: {p}, weight: {w}}}" for p, w in zip(ports, weights))
    return textwrap.dedent(f"""\
        services:
          - name: web
            vip: {vip}
            port: 8080
            protocol: tcp
            algorithm: {algorithm}
            backends:
        """) + backends + "\n"


@pytest.mark.bpf
def test_weights_1_2_7_over_3000_connects_and_getpeername_is_the_vip(lb, cgroup):
    cli, apply, _ = lb
    be = Backends(3)
    try:
        r = apply(services_yaml(be.ports, [1, 2, 7]))
        assert r.returncode == 0, r.stderr
        got = connects(cgroup, 3000)
        assert not got["errors"]
        assert got["peers"] == [f"{VIP}:8080"]
        share = [got["seen"].get(str(p), 0) / 3000 for p in be.ports]
        for s, want in zip(share, (0.10, 0.20, 0.70)):
            assert abs(s - want) <= 0.03, share
        status = json.loads(cli("status", "--json").stdout)
        chosen = {b["port"]: b["choices"] for b in status["services"][0]["backends"]}
        assert chosen == {p: got["seen"][str(p)] for p in be.ports}
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
def test_service_without_backends_fails_connect_at_once_with_ehostunreach(lb, cgroup):
    cli, apply, _ = lb
    assert apply("services:\n  - {name: web, vip: 127.77.0.1, port: 8080}\n").returncode == 0
    got = connects(cgroup, 5)
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
        assert r.returncode == 0 and "removed 9 pins" in r.stdout
        assert not os.path.exists(pin)
        shown = subprocess.run(["bpftool", "cgroup", "show", str(cgroup)], capture_output=True, text=True)
        assert "lb_" not in shown.stdout
        got = connects(cgroup, 3)  # no longer redirected: nothing listens on the VIP
        assert got["errors"] and not got["seen"]
    finally:
        be.close()

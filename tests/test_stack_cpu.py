"""bpfscope stack cpu against a program whose profile is known (bench/workloads/stack_hot.c:
main -> hot_a ~75% of the time, main -> hot_b ~25%), and against `perf record` sampling
the same process at the same time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BPFSCOPE, REPO, run_cli
from test_stack_outputs import svg_runs_in_chromium, totals_of_files

pytestmark = pytest.mark.bpf

FREQ = 199  # ~1,200 samples in 6 s: the 75/25 split is then known to +-1.3 points (1 sigma)
SECONDS = 6


def build(tmp: Path, name: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    out = tmp / name
    subprocess.run([cc, "-O1", "-fno-omit-frame-pointer", "-o", str(out), str(REPO / f"bench/workloads/{name}.c")],
                   check=True)
    return out


def perf_shares(data: Path) -> tuple[int, int] | None:
    """(samples with hot_a on the stack, with hot_b) from `perf script`."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym"], capture_output=True, text=True)
    if out.returncode:
        return None
    a = b = 0
    for block in out.stdout.split("\n\n"):
        syms = {line.split()[-1] for line in block.splitlines()[1:] if line.split()}
        a += "hot_a" in syms
        b += "hot_b" in syms
    return a, b


@pytest.fixture(scope="module")
def stack_hot_bin(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("hot"), "stack_hot")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, stack_hot_bin):
    """One profiled run: the exporter's records, its files and perf's view of the same run."""
    tmp = tmp_path_factory.mktemp("cpu")
    hot = stack_hot_bin
    work = subprocess.Popen([str(hot), str(SECONDS + 4)], stdout=subprocess.DEVNULL)
    files = {k: tmp / f"run.{k}" for k in ("folded", "svg", "speedscope", "pprof")}
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "cpu", "--pid", str(work.pid), "--freq", str(FREQ), "--json",
                                            "--interval", "1", "--duration", str(SECONDS),
                                            "--folded", str(files["folded"]), "--flamegraph", str(files["svg"]),
                                            "--speedscope", str(files["speedscope"]), "--pprof", str(files["pprof"])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    perf = None
    if shutil.which("perf"):
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQ), "-g", "-p",
                                 str(work.pid), "-o", str(tmp / "perf.data"), "--", "sleep", str(SECONDS)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out, err = exporter.communicate(timeout=SECONDS + 60)
        if perf:
            perf.wait(60)
        cgroup = Path(f"/proc/{work.pid}/cgroup").read_text()
    finally:
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    perf_ab = perf_shares(tmp / "perf.data") if perf and perf.returncode == 0 else None
    return {"records": records, "pid": work.pid, "files": files, "perf": perf_ab, "cgroup": cgroup, "tmp": tmp}


def _ab(records: list[dict]) -> tuple[int, int]:
    a = sum(r["values"]["count"] for r in records if "hot_a" in r["stack"])
    b = sum(r["values"]["count"] for r in records if "hot_b" in r["stack"])
    return a, b


def test_hot_a_gets_75_and_hot_b_25_percent_with_main_calling_hot_a(cpu_run):
    mine = [r for r in cpu_run["records"] if r["pid"] == cpu_run["pid"]]
    a, b = _ab(mine)
    total = sum(r["values"]["count"] for r in mine)
    assert a + b >= 0.95 * total  # nearly every sample is in one of the two
    assert a + b > FREQ * SECONDS * 0.6, f"only {a + b} samples at {FREQ} Hz over {SECONDS} s"
    assert abs(a / (a + b) - 0.75) <= 0.05, f"hot_a {a}, hot_b {b}"
    assert abs(b / (a + b) - 0.25) <= 0.05
    top = max(mine, key=lambda r: r["values"]["count"])
    stack = top["stack"]
    assert stack[-2:] == ["main", "hot_a"], stack  # root first: ... -> main -> hot_a (leaf)


def test_perf_record_on_the_same_run_agrees_within_5_points(cpu_run):
    if cpu_run["perf"] is None:
        pytest.skip("perf record did not run here")
    pa, pb = cpu_run["perf"]
    a, b = _ab([r for r in cpu_run["records"] if r["pid"] == cpu_run["pid"]])
    assert pa + pb > 100, "perf saw too few samples"
    assert abs(a / (a + b) - pa / (pa + pb)) <= 0.05, f"bpfscope {a}/{b}, perf {pa}/{pb}"


def test_records_carry_pid_tid_comm_and_the_cgroup_of_proc(cpu_run):
    from bpfscope.schema import validate_records

    validate_records(cpu_run["records"])
    mine = [r for r in cpu_run["records"] if r["pid"] == cpu_run["pid"]]
    v2 = next(line.split("::", 1)[1] for line in cpu_run["cgroup"].splitlines() if line.startswith("0::"))
    for r in mine:
        assert (r["domain"], r["kind"], r["tid"], r["comm"]) == ("stack", "cpu_stack", cpu_run["pid"], "stack_hot")
        assert r["labels"]["cgroup"] == v2


def test_output_files_of_the_run_agree_with_the_records(cpu_run):
    f = cpu_run["files"]
    totals = totals_of_files(f["folded"], f["svg"], f["speedscope"], f["pprof"])
    want = sum(r["values"]["count"] for r in cpu_run["records"])
    assert totals == {"folded": want, "svg": want, "speedscope": want, "pprof": want}
    folded = f["folded"].read_text()
    assert "stack_hot;" in folded and ";main;hot_a " in folded


def test_run_flamegraph_opens_in_chromium(cpu_run):
    dom = svg_runs_in_chromium(cpu_run["files"]["svg"], cpu_run["tmp"])
    assert 'data-ready="1"' in dom and "hot_a" in dom


def test_exporter_does_not_profile_itself_and_skips_idle():
    p = run_cli("stack", "cpu", "--json", "--interval", "1", "--duration", "2", "--freq", "99", timeout=60)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert all(r["pid"] not in (0,) for r in records)
    assert all(r["comm"] != "swapper/0" for r in records)


def test_user_only_and_kernel_only_exclude_each_other():
    p = run_cli("stack", "cpu", "--user-only", "--kernel-only", "--duration", "1")
    assert p.returncode == 2 and "exclude" in p.stderr


def test_unknown_pid_and_cgroup_are_one_line_errors():
    p = run_cli("stack", "cpu", "--pid", "999999999", "--duration", "1")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "999999999" in p.stderr
    p = run_cli("stack", "offcpu", "--cgroup", "/no/such/cgroup", "--duration", "1")
    assert p.returncode == 2 and "no cgroup" in p.stderr


def test_up_runs_stack_cpu_and_the_collector_serves_its_flame_graph(tmp_path, stack_hot_bin):
    import httpx
    from conftest import free_port

    port = free_port()
    work = subprocess.Popen([str(stack_hot_bin), "30"], stdout=subprocess.DEVNULL)
    up = subprocess.Popen(BPFSCOPE + ["up", "--domains", "stack", "--db", f"sqlite:///{tmp_path}/up.db",
                                      "--listen", f"127.0.0.1:{port}", "--interval", "1", "--metrics-port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/v1/flamegraph"
    try:
        deadline, tree = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(url, params={"kind": "cpu_stack", "pid": work.pid, "format": "tree", "from": "-5m"},
                              timeout=5)
                if r.status_code == 200 and r.json()["value"] > 50:
                    tree = r.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert tree, f"no cpu_stack records of the workload reached the collector: {up.stderr.read() if up.poll() is not None else ''}"

        def find(node, name):
            if node["name"] == name:
                return node
            for child in node["children"]:
                hit = find(child, name)
                if hit:
                    return hit
            return None

        main = find(tree, "main")
        assert main and {c["name"] for c in main["children"]} >= {"hot_a", "hot_b"}
        hot_a = next(c for c in main["children"] if c["name"] == "hot_a")
        assert abs(hot_a["value"] / main["value"] - 0.75) <= 0.1
    finally:
        work.kill()
        work.wait()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def test_cgroup_filter_keeps_only_tasks_of_that_cgroup(cgroup, stack_hot_bin):
    from bpfscope.hostenv import cgroup2_root

    inside = subprocess.Popen([str(stack_hot_bin), "8"], stdout=subprocess.DEVNULL)
    outside = subprocess.Popen([str(stack_hot_bin), "8"], stdout=subprocess.DEVNULL)
    try:
        (cgroup / "cgroup.procs").write_text(str(inside.pid))
        p = run_cli("stack", "cpu", "--cgroup", str(cgroup), "--freq", "99", "--json", "--interval", "1",
                    "--duration", "2", timeout=60)
    finally:
        inside.kill()
        outside.kill()
        inside.wait()
        outside.wait()
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    rel = "/" + os.path.relpath(cgroup, cgroup2_root())
    assert records and {r["pid"] for r in records} == {inside.pid}
    assert {r["labels"]["cgroup"] for r in records} == {rel}

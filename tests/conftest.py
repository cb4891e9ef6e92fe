"""Shared fixtures. BPF tests run for real; without root/BTF/objects they skip, and under
BPFSCOPE_REQUIRE_BPF=1 (CI) such a skip is a failure instead."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIRE_BPF = os.environ.get("BPFSCOPE_REQUIRE_BPF") == "1"
BPFSCOPE = [sys.executable, "-m", "bpfscope"]


def skip_or_fail(reason: str):
    if REQUIRE_BPF:
        pytest.fail(f"BPFSCOPE_REQUIRE_BPF=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def _bpf_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "BPF tests need root"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel has no BTF"
    from bpfscope.bpf.object import OBJ_DIR
    if not list(OBJ_DIR.glob("*.bpf.o")):
        return f"no BPF objects in {OBJ_DIR} (run make -C bpf)"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("bpf"):
        reason = _bpf_unavailable()
        if reason:
            skip_or_fail(reason)
        from bpfscope.hostenv import ensure_mounts
        ensure_mounts()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cgroup(tmp_path):
    """A child cgroup v2 directory for this test, removed afterwards (even on failure)."""
    from bpfscope.hostenv import cgroup2_root
    root = cgroup2_root()
    if not root:
        skip_or_fail("no cgroup v2 mount")
    path = Path(root) / f"bpfscope-test-{os.getpid()}-{tmp_path.name}"
    path.mkdir()
    try:
        yield path
    finally:
        # move any leftover process back to the root so rmdir can succeed
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    (Path(root) / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
        except OSError:
            pass
        path.rmdir()


@pytest.fixture
def bpffs_dir():
    """A private directory on bpffs for pins, removed with everything in it afterwards."""
    path = Path(f"/sys/fs/bpf/bpfscope-test-{os.getpid()}")
    path.mkdir(exist_ok=True)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


@pytest.fixture(scope="session")
def getppid_loop(tmp_path_factory) -> Path:
    """The known C workload: N getppid() calls (bench/workloads/getppid_loop.c)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("bin") / "getppid_loop"
    subprocess.run([cc, "-O2", "-o", str(out), str(REPO / "bench/workloads/getppid_loop.c")], check=True)
    return out


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(BPFSCOPE + list(args), capture_output=True, text=True, timeout=timeout, **kw)


def _pg_bin() -> Path:
    if os.environ.get("BPFSCOPE_PG_BIN"):
        return Path(os.environ["BPFSCOPE_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()




def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root we drop to the postgres user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def pg_server():
    """(host, port) of a private PostgreSQL server for this module."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        skip_or_fail(f"no PostgreSQL server binaries in {PG_BIN}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            skip_or_fail("no 'postgres' user to run the PostgreSQL server as")
    tmp = Path(tempfile.mkdtemp(prefix="bpfscope-pg-"))
    data, log = tmp / "data", tmp / "server.log"
    port = free_port()
    started = False
    try:
        if os.geteuid() == 0:
            shutil.chown(tmp, "postgres", "postgres")
        run = lambda cmd: subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120)  # noqa: E731
        p = run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--no-sync"])
        assert p.returncode == 0, f"initdb failed: {p.stderr}"
        options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
        p = run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
        started = p.returncode == 0
        assert started, f"pg_ctl start failed: {p.stderr}\n{log.read_text() if log.exists() else ''}"
        yield "127.0.0.1", port
    finally:
        if started or (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)



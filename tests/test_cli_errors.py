"""User mistakes end in one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import run_cli


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bpfscope: ")
    for n in needles:
        assert n in lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--frobnicate"], "No such option: --frobnicate"),
    (["sys", "--bogus"], "No such option: --bogus"),
    (["sys", "--interval", "soon"], "--interval"),
    (["nosuchcommand"], "No such command"),
    (["up", "--domains", "sys,nosuch"], "unknown domain 'nosuch'"),
])
def test_bad_flags_exit_2_with_one_line(args, needle):
    proc = run_cli(*args)
    _one_line_error(proc, needle)
    assert proc.returncode == 2


@pytest.mark.parametrize("url,needle", [
    ("nosuchdb://x/y", "bad --db URL"),
    ("not a url", "bad --db URL"),
    ("sqlite:////proc/no/such/dir/x.db", "sqlite"),
])
def test_bad_db_url_is_one_line(url, needle):
    proc = run_cli("collector", "--db", url, "--listen", "127.0.0.1:1")
    _one_line_error(proc, needle)


def test_unknown_pid_is_one_line():
    proc = run_cli("sys", "--pid", "999999999")
    _one_line_error(proc, "no process with pid 999999999")


@pytest.mark.parametrize("command", [["sys"], ["doctor"], ["up"]])
def test_not_root_is_one_line_exit_2(command):
    if os.geteuid() != 0:
        proc = run_cli(*command)
    else:
        # Import everything as root, then drop to nobody and run the real CLI code path.
        code = textwrap.dedent(f"""
            import os, sys
            import bpfscope.cli, bpfscope.hostenv, bpfscope.doctor, bpfscope.exporters.sys, bpfscope.supervisor
            import bpfscope.storage.store
            os.setgid(65534); os.setuid(65534)
            sys.exit(bpfscope.cli.main({command!r}))
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    _one_line_error(proc, "root")
    assert proc.returncode == 2

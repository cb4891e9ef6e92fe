"""bpfscope stack --comm filters in the kernel: while processes of another name do the
same work next to the target, the `counts` map itself holds the target's rows only (a
busy host can no longer fill it and push the target out)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bpfscope.decode import c_string
from bpfscope.exporters.stack import StackExporter

pytestmark = pytest.mark.bpf

# Renames itself (PR_SET_NAME), then for argv[2] s: computes, writes to /dev/null,
# allocates 100 kB through malloc and sleeps 1 ms: work for every mode.
WORKER = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
fd = os.open("/dev/null", os.O_WRONLY)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    x = sum(range(20000))
    os.write(fd, bytes(100_000))
    time.sleep(0.001)
"""


@pytest.mark.parametrize("mode", ["cpu", "offcpu", "io", "mem"])
def test_comm_keeps_other_tasks_out_of_the_kernel_map(mode):
    kw = {"freq": 499} if mode == "cpu" else {}
    exporter = StackExporter(mode, comm="bpfs_target", **kw)
    exporter.open()
    try:
        workers = [subprocess.Popen([sys.executable, "-c", WORKER, name, "1.5"])
                   for name in ("bpfs_target", "bpfs_other", "bpfs_other")]
        for w in workers:
            w.wait(30)
        time.sleep(0.2)
        rows = exporter.obj.maps["counts"].batch()
        comms = {c_string(bytes(key.comm)) for key, _val in rows}
        records = exporter.collect(1.0)
    finally:
        exporter.close()
    assert comms == {"bpfs_target"}, comms
    if mode != "mem":  # mem: the target exited, its rows are forgotten (freed with it)
        assert sum(val.count for _key, val in rows) > 0
        assert records and {r["comm"] for r in records} == {"bpfs_target"}

"""bpfscope stack block against direct writes of a known size to a file on a real disk,
checked against the disk's own counters (/sys/dev/block/M:m/stat)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BPFSCOPE

from bpfscope.bpf import wait_for_links

pytestmark = pytest.mark.bpf
MIB = 1 << 20


def _disk_stat(path: Path) -> tuple[list[int], Path] | None:
    """The stat line of the whole disk (not a partition) that holds path, or None (tmpfs, ...)."""
    st = os.stat(path)
    dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not dev.exists():
        return None
    if (dev / "partition").exists():
        dev = dev.resolve().parent
    return [int(x) for x in (dev / "stat").read_text().split()], dev


def test_16_mib_of_direct_writes_are_on_the_direct_io_stack_with_the_disks_own_bytes():
    target = Path("/var/tmp") / f"bpfscope-block-{os.getpid()}"
    target.write_bytes(b"")
    before = _disk_stat(target)
    if before is None:
        target.unlink()
        pytest.skip("/var/tmp is not on a block device")
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "block", "--comm", "dd", "--json", "--interval", "0.5",
                                            "--duration", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        assert wait_for_links(exporter, at_least=3), exporter.stderr.read()
        stat0, dev = _disk_stat(target)
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=16", "oflag=direct"],
                       capture_output=True, check=True)
        stat1, _ = _disk_stat(target)
        time.sleep(0.7)
    finally:
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
        target.unlink()
    records = [json.loads(line) for line in out.splitlines()]
    writes = [r for r in records if r["labels"]["op"] == "write" and any(f.startswith("iomap_dio_rw")
                                                                          or f.startswith("__blkdev_direct_IO")
                                                                          for f in r["stack"])]
    assert writes, f"no direct-write requests of dd: {records} {err}"
    assert all(r["kind"] == "block_stack" and r["comm"] == "dd" for r in writes)
    assert sum(r["values"]["bytes"] for r in writes) == 16 * MIB
    assert any(f.startswith("vfs_write") for f in writes[0]["stack"])
    # the disk completed at least these requests and sectors meanwhile (others may write too)
    reqs = sum(r["values"]["count"] for r in writes)
    assert 16 <= reqs <= stat1[4] - stat0[4], (reqs, stat1[4] - stat0[4], dev)
    assert (stat1[6] - stat0[6]) * 512 >= 16 * MIB
    # device time: positive, and within what the disk counted for all its writes (ms, from queueing)
    ns = sum(r["values"]["ns"] for r in writes)
    assert 0 < ns <= (stat1[7] - stat0[7] + 2) * 1e6, (ns, stat1[7] - stat0[7])

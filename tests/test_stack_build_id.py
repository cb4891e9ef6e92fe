"""User stacks with build ids are resolved once per (process, stack), not per event: every
event takes the plain-address stack (the key of `counts`), and the kernel pairs it with
its (build id, file offset) stack in `ubuild` only the first time that process shows that
stack (the build-id walk cost ~8 us a stack on every event before). The pairs of an exited
process stay until its rows were read, then go."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from test_stack_mem import build_source

from bpfscope.exporters.stack import STAT_BUILD_ID_WALKS, STAT_SAMPLES, StackExporter

pytestmark = pytest.mark.bpf

WRITES = 5000

# 5000 writes of 64 bytes to /dev/null from one call site, then exit
WRITER = r"""
#include <fcntl.h>
#include <unistd.h>

__attribute__((noinline)) void write_site(int times)
{
	static char buf[64];
	int fd = open("/dev/null", O_WRONLY);

	for (int i = 0; i < times; i++)
		if (write(fd, buf, sizeof(buf)) != sizeof(buf))
			_exit(2);
	close(fd);
	__asm__ volatile("");
}

int main(void)
{
	write_site(5000);
	return 0;
}
"""


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    return build_source(tmp_path_factory.mktemp("buildid"), "bidwriter", WRITER)


def pair_tgids(exporter: StackExporter) -> set[int]:
    return {k.tgid for k, _ in exporter.obj.maps["ubuild"].batch()}


def site_writes(records: list[dict], pid: int | None = None) -> list[dict]:
    """write(2) from main (libc's write keeps no frame pointer: write_site's own return
    address is not on the chain)"""
    return [r for r in records if r["kind"] == "io_stack" and r["stack"][-1:] == ["write"]
            and "main" in r["stack"] and (pid is None or r["pid"] == pid)]


@pytest.mark.parametrize("build_id", [True, False])
def test_io_walks_one_build_id_stack_per_site_not_per_call(writer, build_id):
    exporter = StackExporter("io", comm="bidwriter", kernel_stacks=False, build_id=build_id)
    exporter.open()
    try:
        work = subprocess.run([str(writer)], timeout=30)
        assert work.returncode == 0
        time.sleep(0.2)  # reaped: its frames are named from the build ids, or not at all
        records = exporter.collect(1.0)
        stats = exporter._stats
    finally:
        exporter.close()
    if not build_id:  # BPFSCOPE_STACK_BUILD_ID=0: addresses only, no build-id walk
        assert stats[STAT_BUILD_ID_WALKS] == 0
        return
    writes = site_writes(records)
    assert sum(r["values"]["count"] for r in writes) == WRITES, [r["stack"] for r in records]
    assert not any(f.startswith("[unknown]") for r in records for f in r["stack"])
    assert stats[STAT_SAMPLES] >= WRITES
    # the write site is one stack; ld.so's reads of the libraries a few more
    assert 1 <= stats[STAT_BUILD_ID_WALKS] <= 10, stats


def test_two_processes_at_the_same_addresses_each_pair_their_stack_and_exited_pairs_go(writer):
    """Two runs of one program without ASLR share plain stack ids: each process gets its
    own pair (tgid in the key), both are named after they exited, and their pairs are
    deleted at the interval after the one that found them gone."""
    if not shutil.which("setarch"):
        pytest.skip("no setarch")
    exporter = StackExporter("io", comm="bidwriter", kernel_stacks=False, build_id=True)
    exporter.open()
    try:
        pids = []
        for _ in range(2):
            work = subprocess.Popen(["setarch", "-R", str(writer)])
            assert work.wait(timeout=30) == 0
            pids.append(work.pid)  # setarch execs the program: same pid
        time.sleep(0.2)
        assert set(pids) <= pair_tgids(exporter)
        ids = {}
        for k, _ in exporter.obj.maps["ubuild"].batch():
            ids.setdefault(k.tgid, set()).add(k.user_stack_id)
        assert ids[pids[0]] & ids[pids[1]], ids  # the same addresses: a shared plain id
        records = exporter.collect(1.0)
        for pid in pids:
            assert sum(r["values"]["count"] for r in site_writes(records, pid)) == WRITES, \
                [(r["pid"], r["stack"]) for r in records]
        assert not any(f.startswith("[unknown]") for r in records for f in r["stack"])
        # gone at this read: kept once more (a row counted just before the exit is read at
        # the next interval), deleted at the next
        assert set(pids) <= pair_tgids(exporter)
        exporter.collect(1.0)
        assert not set(pids) & pair_tgids(exporter)
        assert os.getpid() not in pair_tgids(exporter)
    finally:
        exporter.close()

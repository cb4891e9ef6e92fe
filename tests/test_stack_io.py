"""bpfscope stack io against a program that writes exactly 64 MiB with write(2)
(bench/workloads/write_64m.c), checked also against the kernel's own count in
/proc/PID/io (wchar); and against direct writes to a disk, whose block requests the
same run files under their kernel stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BPFSCOPE
from test_stack_cpu import build
from bpfscope.bpf import wait_for_links

pytestmark = pytest.mark.bpf
MIB = 1 << 20
MIB64 = 64 << 20


def _wchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def test_64_mib_written_with_write_are_on_the_writing_stack(tmp_path):
    prog = build(tmp_path, "write_64m")
    work = subprocess.Popen([str(prog)], stdin=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "io", "--pid", str(work.pid), "--json", "--interval", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(exporter), exporter.stderr.read()
        before = _wchar(work.pid)
        work.stdin.write("go\n")
        work.stdin.flush()
        deadline = time.monotonic() + 30
        while _wchar(work.pid) - before < MIB64 and time.monotonic() < deadline:
            time.sleep(0.05)
        wchar = _wchar(work.pid) - before
        time.sleep(1.2)  # two reads while the process is alive
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines() if json.loads(line)["pid"] == work.pid]
    writes = [r for r in records if r["labels"]["direction"] == "write"]
    assert wchar == MIB64
    assert sum(r["values"]["bytes"] for r in writes) == MIB64
    assert sum(r["values"]["count"] for r in writes) >= 64
    top = max(writes, key=lambda r: r["values"]["bytes"])
    assert "main" in top["stack"] and "write" in top["stack"][-1], top["stack"]
    reads = [r for r in records if r["labels"]["direction"] == "read"]
    assert sum(r["values"]["bytes"] for r in reads) == 3  # "go\n"


# After a line on stdin: 8 MiB written with O_DIRECT pwrite(2) in 1 MiB calls from
# direct_out(), then waits for stdin to close. argv[1]: the file (on a real disk).
DIRECT_WRITER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) int direct_out(int fd, char *buf)
{
	for (int i = 0; i < 8; i++)
		if (pwrite(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20)
			return 1;
	return fsync(fd);
}

int main(int argc, char **argv)
{
	char line[64], *buf;
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0600);

	if (fd < 0 || posix_memalign((void **)&buf, 4096, 1 << 20))
		return 1;
	memset(buf, 'x', 1 << 20);
	if (read(0, line, sizeof(line)) < 0 || direct_out(fd, buf))
		return 1;
	while (read(0, line, sizeof(line)) > 0)
		;
	return 0;
}
"""


def test_direct_writes_show_syscall_bytes_on_the_user_stack_and_block_requests_on_the_kernel_stack(tmp_path):
    """One `stack io` run: the 8 MiB of pwrite calls on the program's user stack (io_stack)
    and the same 8 MiB as block requests on the direct-IO kernel stack (block_stack)."""
    from test_stack_block import _disk_stat

    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    src = tmp_path / "direct_writer.c"
    src.write_text(DIRECT_WRITER)
    prog = tmp_path / "direct_writer"
    subprocess.run([cc, "-O1", "-fno-omit-frame-pointer", "-o", str(prog), str(src)], check=True)
    target = Path("/var/tmp") / f"bpfscope-io-{os.getpid()}"
    target.write_bytes(b"")
    if _disk_stat(target) is None:
        target.unlink()
        pytest.skip("/var/tmp is not on a block device")
    work = subprocess.Popen([str(prog), str(target)], stdin=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "io", "--pid", str(work.pid), "--json", "--interval", "0.5",
                                            "--folded", str(tmp_path / "io.folded")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(exporter, at_least=4), exporter.stderr.read()
        work.stdin.write("go\n")
        work.stdin.flush()
        deadline = time.monotonic() + 30
        while _wchar(work.pid) < 8 * MIB and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)  # two reads while the process is alive
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
        target.unlink()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["pid"] for r in records} == {work.pid}
    calls = [r for r in records if r["kind"] == "io_stack" and r["labels"]["direction"] == "write"]
    assert sum(r["values"]["bytes"] for r in calls) == 8 * MIB
    # the frame-pointer walk names main: libc's pwrite keeps its caller's frame pointer
    assert all("main" in r["stack"] and "pwrite" in r["stack"][-1] for r in calls), [r["stack"] for r in calls]
    reqs = [r for r in records if r["kind"] == "block_stack" and r["labels"]["op"] == "write"]
    direct = [r for r in reqs if any(f.startswith(("iomap_dio_rw", "__iomap_dio_rw", "__blkdev_direct_IO"))
                                     for f in r["stack"])]
    assert sum(r["values"]["bytes"] for r in direct) == 8 * MIB, [(r["values"], r["stack"]) for r in reqs]
    assert all("main" in r["stack"] and "vfs_write_[k]" in r["stack"] for r in direct), direct[0]["stack"]
    assert sum(r["values"]["count"] for r in direct) >= 8 and all(r["values"]["ns"] > 0 for r in direct)
    # the folded file keeps the two apart under their own head frames, weighted by bytes
    folded = {}
    for line in (tmp_path / "io.folded").read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        head = stack.split(";")[1]
        folded[head] = folded.get(head, 0) + int(n)
    assert folded["[write]"] == 8 * MIB and folded["[block write]"] >= 8 * MIB, folded

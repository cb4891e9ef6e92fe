"""User frames of a process that exited before the interval's read (its /proc/PID/maps
gone): named all the same. The kernel takes user stacks as (build id, file offset)
frames (BPF_F_STACK_BUILD_ID) and records the file each process exec'd; the symbolizer
finds the build id in that file or in the libraries it has read. Before, every such frame
was `[unknown]+0x7f...`."""

from __future__ import annotations

import subprocess
import time

import pytest
from test_stack_mem import build_source

from bpfscope.exporters.stack import StackExporter
from bpfscope.symbolize.elf import read_build_id, read_elf

pytestmark = pytest.mark.bpf

# ~0.5 s on the CPU in burn_here(), ~0.3 s reading the clock (in the vDSO), 10 sleeps of
# 20 ms, 100 writes of 4 KiB, then exit. The burn ends on a timer signal, not by reading
# the clock, so that its samples stay in burn_here().
SHORTLIVED = r"""
#include <fcntl.h>
#include <signal.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t done;

static void stop(int sig)
{
	done = 1;
}

__attribute__((noinline)) unsigned long burn_here(long usec)
{
	struct itimerval t = { .it_value = { .tv_sec = usec / 1000000, .tv_usec = usec % 1000000 } };
	volatile unsigned long x = 0;

	signal(SIGALRM, stop);
	setitimer(ITIMER_REAL, &t, NULL);
	while (!done)
		x++;
	return x;
}

__attribute__((noinline)) void clock_here(long nsec)
{
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);
	do
		clock_gettime(CLOCK_MONOTONIC, &now);
	while ((now.tv_sec - start.tv_sec) * 1000000000L + now.tv_nsec - start.tv_nsec < nsec);
}

__attribute__((noinline)) void nap_here(int times)
{
	for (int i = 0; i < times; i++)
		usleep(20000);
	__asm__ volatile("");
}

__attribute__((noinline)) void write_here(int times)
{
	static char buf[4096];
	int fd = open("/dev/null", O_WRONLY);

	for (int i = 0; i < times; i++)
		if (write(fd, buf, sizeof(buf)) != sizeof(buf))
			_exit(2);
	close(fd);
	__asm__ volatile("");
}

int main(void)
{
	burn_here(500000);
	clock_here(300000000);
	nap_here(10);
	write_here(100);
	return 0;
}
"""


@pytest.fixture(scope="module")
def shortlived(tmp_path_factory):
    return build_source(tmp_path_factory.mktemp("exited"), "shortlived", SHORTLIVED)


def profile_exited(mode: str, prog, before_read=None, cwd=None, **kw) -> list[dict]:
    """The records of one interval read after `prog` ran to its end and exited."""
    exporter = StackExporter(mode, comm="shortlived", **kw)
    exporter.open()
    try:
        work = subprocess.run([str(prog)], timeout=30, cwd=cwd)
        assert work.returncode == 0
        time.sleep(0.2)  # reaped: /proc/PID is gone before the read
        if before_read:
            before_read(exporter)
        records = exporter.collect(1.0)
    finally:
        exporter.close()
    return records


def user_frames(r: dict) -> list[str]:
    return [f for f in r["stack"] if not f.endswith("_[k]")]


def test_cpu_names_the_function_an_exited_process_burned_cpu_in(shortlived):
    records = profile_exited("cpu", shortlived, freq=199)
    assert records, "no samples of the short-lived program"
    burning = [r for r in records if "burn_here" in r["stack"]]
    # ~100 samples in 0.5 s at 199 Hz; most of them in burn_here (main -> burn_here)
    assert sum(r["values"]["count"] for r in burning) >= 40, records
    assert all(user_frames(r)[-2:] == ["main", "burn_here"] for r in burning), [r["stack"] for r in burning]
    # the vDSO has no file, so no build id: named through the vDSO address the kernel side
    # recorded at exec and this kernel's vDSO image (the same in every process)
    clock = [r for r in records if any(f == "clock_gettime" or f.startswith("[vdso]") for f in user_frames(r))]
    assert sum(r["values"]["count"] for r in clock) >= 10, [r["stack"] for r in records]
    for r in records:
        assert not any(f.startswith("[unknown]") for f in r["stack"]), r["stack"]


def test_a_program_started_by_a_relative_path_is_named_after_it_exited(shortlived):
    """execve("./shortlived") in its own directory: the kernel side records the path as
    given, which names no file once the process (and its cwd) is gone; user space is woken
    at such an exec and reads /proc/PID/exe while the process lives."""
    records = profile_exited("cpu", "./shortlived", cwd=shortlived.parent, freq=199)
    burning = [r for r in records if "burn_here" in r["stack"]]
    assert sum(r["values"]["count"] for r in burning) >= 40, [r["stack"] for r in records]
    assert all(user_frames(r)[-2:] == ["main", "burn_here"] for r in burning), [r["stack"] for r in burning]
    for r in records:
        assert not any(f.startswith(("[unknown]", "[build-id")) for f in r["stack"]), r["stack"]


def test_a_stack_without_build_ids_is_named_through_the_process_s_other_stacks(shortlived):
    """The kernel gives a whole stack as plain addresses when it cannot take the process's
    mmap lock without waiting (khugepaged, a reader of /proc/PID/maps), and that
    (process, stack) pair is not walked again. Here the pairs of burn_here's stacks are
    deleted before the read, so those stacks come as addresses only: they are named
    through where the process's other stacks, taken both ways, show its files were."""
    bid = read_build_id(str(shortlived))
    if not bid:
        pytest.skip("linker wrote no build id")
    out = subprocess.run(["nm", "-S", "--defined-only", str(shortlived)], capture_output=True, text=True,
                         check=True).stdout
    addr, size = next((int(a, 16), int(n, 16)) for a, n, _t, name in (ln.split() for ln in out.splitlines()
                                                                       if ln.count(" ") == 3) if name == "burn_here")
    lo = read_elf(str(shortlived)).vaddr_to_file_offset(addr)

    def lose_burn_here_pairs(exporter):
        pairs = exporter.obj.maps["ubuild"]
        lost = 0
        for k, v in pairs.batch():
            leaf = exporter._build_id_stack(v.build_id_stack_id)[:1] if v.build_id_stack_id >= 0 else ()
            if leaf and leaf[0][:2] == (1, bid) and lo <= leaf[0][2] < lo + size:
                pairs.delete(k)
                lost += 1
        assert lost, "no build-id stack with burn_here as its leaf"

    records = profile_exited("cpu", shortlived, before_read=lose_burn_here_pairs, freq=199)
    burning = [r for r in records if "burn_here" in r["stack"]]
    assert sum(r["values"]["count"] for r in burning) >= 40, [r["stack"] for r in records]
    assert all(user_frames(r)[-2:] == ["main", "burn_here"] for r in burning), [r["stack"] for r in burning]
    for r in records:
        assert not any(f.startswith("[unknown]") for f in r["stack"]), r["stack"]


def test_offcpu_and_io_name_the_frames_of_an_exited_process(shortlived):
    records = profile_exited("offcpu", shortlived)
    # usleep -> clock_nanosleep (libc, without frame pointers: nap_here's own return
    # address is not on the frame-pointer chain) called from main
    naps = [r for r in records if "clock_nanosleep" in user_frames(r)]
    assert naps and "main" in user_frames(naps[0]), [r["stack"] for r in records]
    assert sum(r["values"]["count"] for r in naps) >= 10
    for r in records:
        assert not any(f.startswith("[unknown]") for f in r["stack"]), r["stack"]

    records = profile_exited("io", shortlived)
    writes = [r for r in records if r["kind"] == "io_stack" and r["labels"]["direction"] == "write"]
    assert sum(r["values"]["bytes"] for r in writes) == 100 * 4096, records
    assert all("main" in user_frames(r) for r in writes), [r["stack"] for r in writes]
    for r in records:
        assert not any(f.startswith("[unknown]") for f in r["stack"]), r["stack"]

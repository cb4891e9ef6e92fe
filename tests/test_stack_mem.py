"""bpfscope stack mem against programs whose allocations are known
(bench/workloads/leak.c: 1,000 blocks of 4 KiB kept by leak_here(), 10,000 blocks of
every libc allocator allocated and freed by churn(); MAPPER below: mmap/munmap)."""

from __future__ import annotations

import gzip
import json
import subprocess
import time

import pytest
from conftest import BPFSCOPE
from test_stack_cpu import build
from test_stack_outputs import read_profile
from bpfscope.bpf import wait_for_links
from bpfscope.exporters.stack import MEM_PROBES

pytestmark = pytest.mark.bpf
# every uprobe and uretprobe of `stack mem`: the workload starts once all are attached
# (with the first one only, the first calls of a function probed later were missed)
MEM_LINKS = sum(1 + (ret is not None) for _enter, ret in MEM_PROBES.values())


def run_mem(leak, extra: list[str] = (), cpu: int | None = None) -> tuple[list[dict], int]:
    """The last snapshot of the workload's rows; the workload pinned to `cpu` when given."""
    import os

    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    work = subprocess.Popen([str(leak)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=pin)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "mem", "--pid", str(work.pid), "--json", "--interval", "0.5",
                                            *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(exporter, at_least=MEM_LINKS), exporter.stderr.read()
        work.stdin.write("go\n")
        work.stdin.flush()
        assert work.stdout.readline().strip() == "done"
        time.sleep(1.5)  # at least two reads while the process is alive
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    last_ts = max(r["ts"] for r in records)
    return [r for r in records if r["ts"] == last_ts and r["pid"] == work.pid], work.pid


def test_leaked_4096000_bytes_are_outstanding_on_the_leaking_stack_and_nothing_else(tmp_path):
    leak = build(tmp_path, "leak")
    files = {"pprof": tmp_path / "mem.pb.gz", "speedscope": tmp_path / "mem.speedscope.json"}
    snapshot, pid = run_mem(leak, ["--pprof", str(files["pprof"]), "--speedscope", str(files["speedscope"])])
    leaking = [r for r in snapshot if "leak_here" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in leaking) == 4_096_000
    assert sum(r["values"]["outstanding_count"] for r in leaking) == 1000
    assert leaking[0]["stack"][-2:] == ["main", "leak_here"]  # the caller of malloc, exactly
    assert all(r["kind"] == "alloc_stack" and r["comm"] == "leak" for r in snapshot)
    churned = [r for r in snapshot if "churn" in r["stack"]]
    # (that every allocator's probe fires: test_calloc_realloc_posix_memalign_...)
    assert sum(r["values"]["outstanding_bytes"] for r in churned) == 0, churned
    # the files say bytes, and carry the count of blocks as a second value
    prof = read_profile(gzip.decompress(files["pprof"].read_bytes()))
    assert prof["sample_types"] == [("inuse_space", "bytes"), ("inuse_objects", "count")]
    in_leak = [values for frames, values in prof["samples"] if "leak_here" in frames]
    assert [sum(v[0] for v in in_leak), sum(v[1] for v in in_leak)] == [4_096_000, 1000]
    doc = json.loads(files["speedscope"].read_text())
    assert {p["unit"] for p in doc["profiles"]} == {"bytes"}


def build_source(tmp, name: str, source: str):
    """A C program of this file, built like the workloads (frame pointers kept)."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    src = tmp / f"{name}.c"
    src.write_text(source)
    subprocess.run([cc, "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / name), str(src)], check=True)
    return tmp / name


# Mappings of known sizes, each kind from its own function; write(2), not stdio (whose
# buffer would be one more allocation). map_big() mallocs 1 MiB blocks: libc serves them
# with its own mmap, which must not be counted a second time.
MAPPER = r"""
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define REGION (16 * PAGE)
static void *kept[512];
static int nkept;

static inline __attribute__((always_inline)) void *map(void *at, size_t len, int flags)
{
	void *p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);

	if (p == MAP_FAILED)
		_exit(3);
	return p;
}

__attribute__((noinline)) void map_kept(void)		/* 100 x 64 KiB, kept */
{
	for (int i = 0; i < 100; i++)
		kept[nkept++] = map(NULL, REGION, 0);
	__asm__ volatile("");
}

__attribute__((noinline)) void map_unmapped(void)	/* 200 x 64 KiB, unmapped whole */
{
	for (int i = 0; i < 200; i++)
		munmap(map(NULL, REGION, 0), REGION);
	__asm__ volatile("");
}

__attribute__((noinline)) void map_trimmed(void)	/* 50 x 16 pages, head and tail 4 unmapped: 8 left */
{
	for (int i = 0; i < 50; i++) {
		char *p = map(NULL, REGION, 0);

		munmap(p, 4 * PAGE);
		munmap(p + 12 * PAGE, 4 * PAGE);
		kept[nkept++] = p + 4 * PAGE;
	}
	__asm__ volatile("");
}

__attribute__((noinline)) void map_span(void)		/* 20 x two adjacent mappings, one munmap over both */
{
	for (int i = 0; i < 20; i++) {
		char *p = map(NULL, 2 * REGION, 0);

		munmap(p, 2 * REGION);
		map(p, REGION, MAP_FIXED_NOREPLACE);
		map(p + REGION, REGION, MAP_FIXED_NOREPLACE);
		munmap(p, 2 * REGION);
	}
	__asm__ volatile("");
}

__attribute__((noinline)) void map_odd(void)		/* 10 x 5000 bytes: 2 pages each */
{
	for (int i = 0; i < 10; i++)
		kept[nkept++] = map(NULL, 5000, 0);
	__asm__ volatile("");
}

__attribute__((noinline)) void map_big(void)		/* 5 x malloc(1 MiB), kept */
{
	for (int i = 0; i < 5; i++)
		kept[nkept++] = malloc(1 << 20);
	__asm__ volatile("");
}

int main(void)
{
	char buf[64];

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	map_kept();
	map_unmapped();
	map_trimmed();
	map_span();
	map_odd();
	map_big();
	if (write(1, "done\n", 5) != 5)
		return 1;
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return kept[0] == NULL;
}
"""


def test_mmap_regions_are_outstanding_on_their_stack_until_munmapped(tmp_path):
    snapshot, _ = run_mem(build_source(tmp_path, "mapper", MAPPER))

    def on(func: str) -> tuple[int, int]:
        rows = [r for r in snapshot if r["stack"][-2:] == ["main", func]]
        return (sum(r["values"]["outstanding_bytes"] for r in rows), sum(r["values"]["outstanding_count"] for r in rows))

    assert on("map_kept") == (100 * 65536, 100)
    assert on("map_unmapped") == (0, 0)
    assert on("map_trimmed") == (50 * 8 * 4096, 50)  # head and tail unmapped: the middle 8 pages
    assert on("map_span") == (0, 0)  # one munmap over two mappings laid end to end
    assert on("map_odd") == (10 * 8192, 10)  # a mapping holds whole pages
    assert on("map_big") == (5 << 20, 5)  # malloc's own mmap is not counted again
    total = sum(r["values"]["outstanding_bytes"] for r in snapshot)
    assert total == 100 * 65536 + 50 * 8 * 4096 + 10 * 8192 + (5 << 20), snapshot


PIPES_HOLDER = """
import os, sys
n = int(sys.argv[1]); sys.stdin.readline()
pipes = [os.pipe() for _ in range(n)]
print("open", flush=True); sys.stdin.readline()
for a, b in pipes:
    os.close(a); os.close(b)
print("closed", flush=True); sys.stdin.readline()
"""


def test_kernel_adds_the_kernel_pages_of_the_leak_to_its_libc_blocks_in_one_run(tmp_path):
    """--kernel adds kmem allocations to the libc ones: the 1,000 leaked blocks on
    leak_here (space user, exact) and, in the same snapshot, the heap pages the kernel
    gave their page faults (space kernel, on the fault's kernel stack)."""
    snapshot, _pid = run_mem(build(tmp_path, "leak"), ["--kernel"])
    user = [r for r in snapshot if r["labels"]["space"] == "user"]
    kernel = [r for r in snapshot if r["labels"]["space"] == "kernel"]
    leaking = [r for r in user if "leak_here" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in leaking) == 4_096_000
    assert sum(r["values"]["outstanding_count"] for r in leaking) == 1000
    assert not any(f.endswith("_[k]") for r in user for f in r["stack"])  # a uprobe takes no kernel stack
    assert all(r["kind"] == "alloc_stack" and any(f.endswith("_[k]") for f in r["stack"]) for r in kernel)
    # malloc writes a header into each block: every page of the 4 MB heap was faulted in
    faulted = [r for r in kernel if "exc_page_fault_[k]" in r["stack"]]
    assert sum(r["values"]["outstanding_bytes"] for r in faulted) >= 4_096_000 * 0.9, kernel


@pytest.mark.parametrize("frames", ["user and kernel", "kernel only"])
def test_kernel_memory_of_500_open_pipes_is_outstanding_on_alloc_pipe_info_until_closed(frames):
    """Each pipe(2) kmallocs its pipe_inode_info and its array of 16 pipe_buffers in
    alloc_pipe_info (kernel memory freed only when both ends are closed)."""
    import sys

    only = ["--kernel-only"] if frames == "kernel only" else []

    n = 500
    work = subprocess.Popen([sys.executable, "-c", PIPES_HOLDER, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "mem", "--kernel", "--pid", str(work.pid), "--json",
                                            "--interval", "0.5", *only], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        assert wait_for_links(exporter, at_least=6), exporter.stderr.read()
        marks = []
        for expect in ("open", "closed"):
            work.stdin.write("go\n")
            work.stdin.flush()
            assert work.stdout.readline().strip() == expect
            time.sleep(1.2)  # two reads in this phase
            marks.append(time.time_ns())
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        work.kill()
        work.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]

    def pipe_objects(lo: int, hi: int) -> list[dict]:
        # the last snapshot of the phase; slab pages made on the way stay with the slab
        snap = [r for r in records if lo < r["ts"] <= hi]
        assert snap, f"no snapshot in the phase: {err}"
        last = max(r["ts"] for r in snap)
        return [r for r in snap if r["ts"] == last and any(f.startswith("alloc_pipe_info") for f in r["stack"])
                and not any(f.startswith("allocate_slab") for f in r["stack"])]

    held = pipe_objects(marks[0] - int(1.2e9), marks[0])
    assert sum(r["values"]["outstanding_count"] for r in held) == 2 * n, held
    assert sum(r["values"]["outstanding_bytes"] for r in held) >= n * 16 * 40
    assert all(r["labels"]["space"] == "kernel" and "do_pipe2_[k]" in r["stack"] for r in held)
    user_frames = {f for r in held for f in r["stack"] if not f.endswith("_[k]")}
    if only:
        assert user_frames == set()
    else:
        assert "pipe2" in user_frames, user_frames  # libc's wrapper, the caller of the system call
    assert pipe_objects(marks[0], marks[1]) == []


# realloc's three outcomes, each from its own function: a failure (NULL, the block stays),
# a move or growth (the new block replaces the old), realloc(p, 0) (glibc frees p)
REALLOCER = r"""
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

static void *kept[20];
static volatile size_t huge = PTRDIFF_MAX;	/* more than any allocator gives */

__attribute__((noinline)) void keep_failed(void)	/* 10 x 4096, each realloc'ed to huge: fails */
{
	for (int i = 0; i < 10; i++) {
		kept[i] = malloc(4096);
		if (realloc(kept[i], huge))
			_exit(4);
	}
	__asm__ volatile("");
}

__attribute__((noinline)) void grow(void)		/* 10 x 100 bytes grown to 8192 */
{
	for (int i = 0; i < 10; i++)
		kept[10 + i] = realloc(malloc(100), 8192);
	__asm__ volatile("");
}

__attribute__((noinline)) void to_zero(void)		/* 10 x 300 bytes, realloc(p, 0) */
{
	for (int i = 0; i < 10; i++)
		if (realloc(malloc(300), 0))
			_exit(5);
	__asm__ volatile("");
}

int main(void)
{
	char buf[64];

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	keep_failed();
	grow();
	to_zero();
	if (write(1, "done\n", 5) != 5)
		return 1;
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return kept[0] == NULL;
}
"""


def test_a_failed_realloc_leaves_the_old_block_outstanding(tmp_path):
    snapshot, _ = run_mem(build_source(tmp_path, "reallocer", REALLOCER))

    def on(func: str) -> tuple[int, int]:
        rows = [r for r in snapshot if r["stack"][-2:] == ["main", func]]
        return (sum(r["values"]["outstanding_bytes"] for r in rows), sum(r["values"]["outstanding_count"] for r in rows))

    assert on("keep_failed") == (10 * 4096, 10)  # was forgotten at realloc's entry: (0, 0)
    assert on("grow") == (10 * 8192, 10)
    assert on("to_zero") == (0, 0)
    assert sum(r["values"]["outstanding_bytes"] for r in snapshot) == 10 * 4096 + 10 * 8192, snapshot


# 20,000 blocks of 256 bytes from keep_many(), the first 10,000 freed by drop_half()
MANY = r"""
#include <stdlib.h>
#include <unistd.h>

static void *blocks[20000];

__attribute__((noinline)) void keep_many(void)
{
	for (int i = 0; i < 20000; i++)
		blocks[i] = malloc(256);
	__asm__ volatile("");
}

__attribute__((noinline)) void drop_half(void)
{
	for (int i = 0; i < 10000; i++)
		free(blocks[i]);
	__asm__ volatile("");
}

int main(void)
{
	char buf[64];

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	keep_many();
	drop_half();
	if (write(1, "done\n", 5) != 5)
		return 1;
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return blocks[19999] == NULL;
}
"""


@pytest.mark.parametrize("n", [10, 100])
def test_sample_every_n_scales_a_sampled_tenth_or_hundredth_back_to_the_truth(tmp_path, n):
    """One malloc in N is tracked (a per-CPU count of calls), and the figures are scaled by N.
    The workload is pinned to one CPU, so the calls sampled are exactly every Nth from the
    first: the 10,000 blocks left are 10,000/N samples. Tolerance: one sample either way
    (N blocks, N x 256 bytes), for the sampling phase; not scaled it would be N times too
    small, and every call tracked and scaled, N times too large."""
    snapshot, _ = run_mem(build_source(tmp_path, "many", MANY), ["--sample-every", str(n)], cpu=0)
    rows = [r for r in snapshot if r["stack"][-2:] == ["main", "keep_many"]]
    assert rows, snapshot
    nbytes = sum(r["values"]["outstanding_bytes"] for r in rows)
    count = sum(r["values"]["outstanding_count"] for r in rows)
    assert abs(count - 10_000) <= n, count
    assert abs(nbytes - 10_000 * 256) <= n * 256, nbytes
    assert nbytes == count * 256
    assert {r["labels"].get("sample_every") for r in snapshot} == {str(n)}


# Each allocator from its own function, 2,000 calls, the first 10 blocks kept and the rest
# freed: the leak test's churn frees everything, and outstanding == 0 there would hold as
# well if these probes never fired.
ALLOCATORS = r"""
#include <stdlib.h>
#include <unistd.h>

#define CALLS 2000
#define KEPT 10
static void *kept[4 * KEPT];
static int nkept;

static void keep_or_free(void *p, int i)
{
	if (!p)
		_exit(6);
	if (i < KEPT)
		kept[nkept++] = p;
	else
		free(p);
}

__attribute__((noinline)) void via_calloc(void)
{
	for (int i = 0; i < CALLS; i++)
		keep_or_free(calloc(10, 64), i);
	__asm__ volatile("");
}

__attribute__((noinline)) void via_realloc(void)
{
	for (int i = 0; i < CALLS; i++) {
		void *p = malloc(300);

		keep_or_free(realloc(p, 5000), i);
	}
	__asm__ volatile("");
}

__attribute__((noinline)) void via_posix_memalign(void)
{
	for (int i = 0; i < CALLS; i++) {
		void *p = NULL;

		if (posix_memalign(&p, 64, 1000))
			_exit(7);
		keep_or_free(p, i);
	}
	__asm__ volatile("");
}

__attribute__((noinline)) void via_aligned_alloc(void)
{
	for (int i = 0; i < CALLS; i++)
		keep_or_free(aligned_alloc(64, 256), i);
	__asm__ volatile("");
}

int main(void)
{
	char buf[64];

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	via_calloc();
	via_realloc();
	via_posix_memalign();
	via_aligned_alloc();
	if (write(1, "done\n", 5) != 5)
		return 1;
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return kept[0] == NULL;
}
"""


def test_calloc_realloc_posix_memalign_aligned_alloc_are_each_seen_on_their_stack(tmp_path):
    snapshot, _ = run_mem(build_source(tmp_path, "allocators", ALLOCATORS))

    def on(func: str) -> tuple[int, int]:
        rows = [r for r in snapshot if r["stack"][-2:] == ["main", func]]
        return (sum(r["values"]["outstanding_bytes"] for r in rows), sum(r["values"]["outstanding_count"] for r in rows))

    # 10 kept of 2,000 each: the allocation probe fired (bytes of that allocator's size,
    # realloc's new size, not malloc's 300), and so did every free of the other 1,990
    assert on("via_calloc") == (10 * 640, 10)
    assert on("via_realloc") == (10 * 5000, 10)
    assert on("via_posix_memalign") == (10 * 1000, 10)
    assert on("via_aligned_alloc") == (10 * 256, 10)
    assert sum(r["values"]["outstanding_bytes"] for r in snapshot) == 10 * (640 + 5000 + 1000 + 256), snapshot


# Two processes of one program at the same addresses (setarch -R: no ASLR, so the same
# malloc calls return the same heap addresses in both). "hold" keeps 100 blocks, and frees
# 50 of them once "churn" has allocated and freed 100 blocks at those very addresses.
TWIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N 100
static void *blocks[N];

__attribute__((noinline)) void twin_alloc(void)
{
	for (int i = 0; i < N; i++)
		blocks[i] = malloc(4096);
	__asm__ volatile("");
}

__attribute__((noinline)) void twin_free(int n)
{
	for (int i = 0; i < n; i++)
		free(blocks[i]);
	__asm__ volatile("");
}

static void say(const char *what)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "%s %p\n", what, blocks[0]);

	if (write(1, line, n) != n)
		_exit(1);
}

static void wait_line(void)
{
	char buf[64];

	if (read(0, buf, sizeof(buf)) <= 0)
		_exit(0);
}

int main(int argc, char **argv)
{
	int churn = argc > 1 && !strcmp(argv[1], "churn");

	wait_line();
	twin_alloc();
	if (churn)
		twin_free(N);
	say("allocated");
	if (!churn) {
		wait_line();
		twin_free(N / 2);
		say("freed");
	}
	wait_line();	/* until the test is done */
	return blocks[0] == NULL;
}
"""


def test_two_processes_at_the_same_heap_addresses_keep_their_own_outstanding_bytes(tmp_path):
    """System-wide `stack mem`: live allocations are keyed by (process, address). Keyed by
    address alone, churn's malloc of hold's addresses took hold's entries and churn's free
    deleted them, so hold's later frees found nothing: 100 blocks instead of 50."""
    import shutil

    if not shutil.which("setarch"):
        pytest.skip("no setarch")
    twin = build_source(tmp_path, "twin", TWIN)
    exporter = subprocess.Popen(BPFSCOPE + ["stack", "mem", "--comm", "twin", "--json", "--interval", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = []
    try:
        assert wait_for_links(exporter, at_least=MEM_LINKS), exporter.stderr.read()
        hold, churn = (subprocess.Popen(["setarch", "-R", str(twin), role], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True) for role in ("hold", "churn"))
        procs = [hold, churn]

        def step(p) -> str:
            p.stdin.write("go\n")
            p.stdin.flush()
            return p.stdout.readline().split()[-1]

        held_at = step(hold)
        churned_at = step(churn)
        assert held_at == churned_at, "setarch -R gave the two processes different heap addresses"
        step(hold)  # hold frees 50 of its 100 blocks
        time.sleep(1.5)  # at least two reads after the frees
        exporter.terminate()
        out, err = exporter.communicate(timeout=30)
    finally:
        exporter.kill()
        for p in procs:
            p.kill()
            p.wait()
    assert exporter.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    last_ts = max(r["ts"] for r in records)
    snapshot = [r for r in records if r["ts"] == last_ts]

    def outstanding(pid: int) -> tuple[int, int]:
        rows = [r for r in snapshot if r["pid"] == pid and "twin_alloc" in r["stack"]]
        return (sum(r["values"]["outstanding_bytes"] for r in rows), sum(r["values"]["outstanding_count"] for r in rows))

    assert outstanding(hold.pid) == (50 * 4096, 50), snapshot
    assert outstanding(churn.pid) == (0, 0), snapshot

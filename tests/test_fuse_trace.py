"""The FUSE tracer counts exactly the requests a known workload makes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from bpfscope.fuse.umount import connection_of

from fuse_helpers import BPFSCOPE, mounted, source_and_mountpoint

pytestmark = pytest.mark.bpf


@pytest.fixture
def stats():
    from bpfscope.fuse.trace import FuseStats
    s = FuseStats()
    yield s
    s.close()


def _settled(stats, timeout_s: float = 5.0) -> dict:
    """A snapshot once the counts stand still for 0.2 s: RELEASE is sent asynchronously
    after close(), and one arriving late would be counted in the next workload's window."""
    snap, deadline = stats.snapshot(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        snap, last = stats.snapshot(), snap
        if snap == last:
            break
    return snap


def _tiny_files(n: int) -> dict:
    """f0 .. f<n-1>, one byte each."""
    return {f"f{i}": "x" for i in range(n)}


def _trace_json(mnt, workload, *extra: str) -> tuple[subprocess.Popen, list, str, str]:
    """`fuse trace --mount MNT --json` over one 2 s interval, workload() run once its programs are
    attached; (the process, its records, stdout, stderr)."""
    from bpfscope.bpf import wait_for_links
    proc = subprocess.Popen(BPFSCOPE + ["fuse", "trace", "--mount", str(mnt), "--interval", "2", "--duration", "2",
                                        "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_links(proc, at_least=2)
        workload()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc, [json.loads(line) for line in out.splitlines()], out, err


def _workload_counts(stats, conn, fn):
    from bpfscope.fuse.trace import delta
    before = _settled(stats)
    fn()
    return {k[1]: v for k, v in delta(_settled(stats), before).items() if k[0] == conn}


def test_100_stats_of_fresh_files_are_100_lookups(stats, tmp_path):
    from bpfscope.fuse import protocol as P
    src, mnt = source_and_mountpoint(tmp_path, _tiny_files(100))
    with mounted(str(src), str(mnt), "plain"):
        conn = connection_of(str(mnt))
        got = _workload_counts(stats, conn, lambda: [os.stat(mnt / f"f{i}") for i in range(100)])
        missing = _workload_counts(stats, conn, lambda: [os.path.exists(mnt / f"nope{i}") for i in range(50)])
    assert got[P.LOOKUP]["count"] == 100 and got[P.LOOKUP]["errors"] == 0
    assert sum(got[P.LOOKUP]["hist"]) == 100
    assert missing[P.LOOKUP]["count"] == 50 and missing[P.LOOKUP]["errors"] == 50  # ENOENT replies


def test_write_bytes_and_requests_match_the_workload(stats, tmp_path):
    from bpfscope.fuse import protocol as P
    src, mnt = source_and_mountpoint(tmp_path)
    chunk = os.urandom(1 << 20)

    def write8():
        fd = os.open(mnt / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        for _ in range(8):
            os.write(fd, chunk)
        os.close(fd)

    with mounted(str(src), str(mnt), "plain"):
        got = _workload_counts(stats, connection_of(str(mnt)), write8)
    assert got[P.WRITE]["count"] == 8
    # each WRITE: fuse_in_header (40) + fuse_write_in (40) + the data
    assert got[P.WRITE]["request_bytes"] == 8 * ((1 << 20) + 80)
    assert got[P.CREATE]["count"] == 1 and got[P.RELEASE]["count"] == 1
    assert (src / "big").stat().st_size == 8 << 20


def test_trace_cli_json_has_the_mount_opcodes_and_a_histogram_of_every_request(tmp_path):
    """100 stats in plain: one LOOKUP record of count 100 whose log2 latency slots (hist_<i>)
    hold 100 requests, and whose p99 is the upper bound of the highest slot that reaches 99."""
    src, mnt = source_and_mountpoint(tmp_path, _tiny_files(100))
    with mounted(str(src), str(mnt), "plain"):
        _, recs, out, err = _trace_json(mnt, lambda: [os.stat(mnt / f"f{i}") for i in range(100)])
    lookup = [r for r in recs if r["labels"]["opcode"] == "LOOKUP"]
    assert len(lookup) == 1, (out, err)
    v = lookup[0]["values"]
    assert lookup[0]["labels"]["mount"] == str(mnt) and v["count"] == 100
    assert lookup[0]["domain"] == "fuse" and lookup[0]["kind"] == "fuse_op"
    hist = {int(k[5:]): n for k, n in v.items() if k.startswith("hist_")}
    assert sum(hist.values()) == 100 and all(n > 0 for n in hist.values()), v
    assert 2 ** min(hist) <= v["avg_us"] * 1000 < 2 ** (max(hist) + 1), v  # a mean inside the slots seen
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= 99:
            assert v["p99_us"] == 2 ** (i + 1) / 1000, v
            break
    for r in recs:  # every record's slots add up to its count
        assert sum(n for k, n in r["values"].items() if k.startswith("hist_")) == r["values"]["count"], r


def test_plain_small_file_read_is_lookup_open_read_flush_release(stats, tmp_path):
    """plain asks the server for every operation, and only once: the attributes a LOOKUP returns
    serve that open's permission check and its reads' size checks (before: 4 GETATTR per file)."""
    from bpfscope.fuse import protocol as P
    src, mnt = source_and_mountpoint(tmp_path, {f"d/f{i}": b"y" * 4096 for i in range(100)})

    def read100():
        dfd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
        for i in range(100):
            fd = os.open(f"f{i}", os.O_RDONLY, dir_fd=dfd)
            while os.read(fd, 65536):
                pass
            os.close(fd)
        os.close(dfd)

    with mounted(str(src), str(mnt), "plain"):
        conn = connection_of(str(mnt))
        read100()  # the first pass looks the directory up; the second one is measured
        got = _workload_counts(stats, conn, read100)
        again = _workload_counts(stats, conn, read100)
    for counts in (got, again):
        assert counts[P.LOOKUP]["count"] == 100 + 1  # + the directory, opened by its path
        for op in (P.OPEN, P.READ, P.FLUSH, P.RELEASE):
            assert counts[op]["count"] == 100, (op, counts[op]["count"])
        assert counts[P.READ]["reply_bytes"] == 100 * (16 + 4096)  # the page cache was dropped at each open
        # the directory's attributes, at most once per kernel tick (4 ms at HZ=250)
        assert counts.get(P.GETATTR, {"count": 0})["count"] < 100


def test_pairs_of_dead_connections_leave_the_map_and_a_new_mount_is_still_counted_exactly(tmp_path):
    """A map of 48 (connection, opcode) pairs outlives 12 mounts of ~7 opcodes each because every
    read removes the pairs of unmounted connections; the 13th mount's requests are all counted.
    A connection id is the lowest free anonymous device number, which a tmpfs mounted after each
    unmount takes (as other mounts of a busy machine do), so each FUSE mount gets a new id."""
    from bpfscope.fuse import protocol as P
    from bpfscope.fuse.trace import FuseStats
    src, mnt = source_and_mountpoint(tmp_path, _tiny_files(100))
    s = FuseStats(max_ops=48)
    pins = []
    try:
        conns = set()
        for n in range(12):
            with mounted(str(src), str(mnt), "plain"):
                conns.add(connection_of(str(mnt)))
                for i in range(5):
                    (mnt / f"f{i}").read_text()
            pin = tmp_path / f"pin{n}"
            pin.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "pin", str(pin)], check=True)
            pins.append(pin)
            s.snapshot()  # one read per exporter interval
        assert len(conns) == 12
        with mounted(str(src), str(mnt), "plain"):
            got = _workload_counts(s, connection_of(str(mnt)), lambda: [os.stat(mnt / f"f{i}") for i in range(100)])
        assert got.get(P.LOOKUP, {}).get("count") == 100
        assert s.untracked() == 0
        assert s.removed >= 12 * 5
        assert not {c for c, _ in s.snapshot()} & conns  # no pair of a dead connection left
    finally:
        s.close()
        for pin in pins:
            subprocess.run(["umount", "-l", str(pin)])


def test_a_full_map_is_reported_not_silent(tmp_path):
    """With room for 2 pairs a mount's other opcodes are not counted: the trace says so on stderr
    and in bpfscope_fuse_untracked_requests_total."""
    src, mnt = source_and_mountpoint(tmp_path, _tiny_files(20))
    with mounted(str(src), str(mnt), "plain"):
        # each read: LOOKUP OPEN READ FLUSH RELEASE, 5 opcodes
        proc, recs, out, err = _trace_json(mnt, lambda: [(mnt / f"f{i}").read_text() for i in range(20)],
                                           "--max-pairs", "2")
    assert proc.returncode == 0, err
    assert len({r["labels"]["opcode"] for r in recs}) == 2, out
    counted = sum(r["values"]["count"] for r in recs)
    m = re.search(r"bpfscope fuse: (\d+) requests not counted: the map of \(mount, opcode\) pairs is full "
                  r"\(2 live pairs\)", err)
    assert m, err
    assert counted + int(m.group(1)) >= 100  # every request of the workload is counted or reported


@pytest.mark.parametrize("mode,reads", [("passthrough", 0), ("plain", 4)])
def test_passthrough_reads_never_reach_the_server(stats, tmp_path, mode, reads):
    """A 4 MiB file read through a passthrough mount: OPEN and RELEASE reach the server, no READ
    (plain beside it: at least 4 READs of at most 1 MiB); a kernel without passthrough
    fails the mount instead of quietly serving plain."""
    from bpfscope.fuse import protocol as P
    data = os.urandom(4 << 20)
    src, mnt = source_and_mountpoint(tmp_path, {"big": data})

    def read():
        assert (mnt / "big").read_bytes() == data

    with mounted(str(src), str(mnt), mode):
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
        got = _workload_counts(stats, connection_of(str(mnt)), read)
    assert got[P.OPEN]["count"] == 1 and got[P.RELEASE]["count"] == 1
    if reads:
        assert got[P.READ]["count"] >= reads
    else:
        assert P.READ not in got, got[P.READ]


def test_bench_smoke_json_has_every_phase_and_the_requests_per_small_read(tmp_path):
    """`fuse bench` with tiny sizes: every phase for native and each mode, ratios to native, and
    FUSE requests per operation from the tracepoints: ~5 per cold small-file read in plain
    (LOOKUP OPEN READ FLUSH RELEASE), at most 2 in fast."""
    from bpfscope.fuse.bench import PHASES
    r = subprocess.run(BPFSCOPE + ["fuse", "bench", str(tmp_path), "--modes", "plain,fast", "--files", "200",
                                   "--big-mib", "4", "--rand-reads", "100", "--creates", "50", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["params"] == {"files": 200, "file_bytes": 4096, "big_mib": 4, "rand_reads": 100, "creates": 50}
    assert list(out["variants"]) == ["native", "plain", "fast"]
    for name, res in out["variants"].items():
        assert set(res) == {key for key, _, _ in PHASES}, name
        for key, ph in res.items():
            assert ph["seconds"] > 0 and ph["throughput"] > 0, (name, key)
            if name == "native":
                assert ph["ratio_to_native"] == 1.0 and "requests" not in ph
            else:
                assert ph["ratio_to_native"] > 0 and ph["requests_per_op"] >= 0, (name, key)
    plain, fast = out["variants"]["plain"]["cold_small"], out["variants"]["fast"]["cold_small"]
    assert 4.8 <= plain["requests_per_op"] <= 5.5, plain
    for op in ("LOOKUP", "OPEN", "READ", "FLUSH", "RELEASE"):
        assert 0.99 <= plain["requests"][op] / 200 <= 1.05, (op, plain["requests"])
    assert fast["requests_per_op"] <= 2, fast
    assert out["variants"]["fast"]["warm_small"]["requests_per_op"] < 0.1
    assert len(os.listdir(tmp_path / "fsr-data" / "small")) == 200  # the data stays for the next run


def test_bench_bad_input_is_one_line(tmp_path):
    for args, msg in ((["--modes", "plain,bogus"], "bpfscope: unknown mode 'bogus'"),
                      (["--files", "0"], "--files")):
        r = subprocess.run(BPFSCOPE + ["fuse", "bench", str(tmp_path), *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr and msg in r.stderr, r.stderr
    r = subprocess.run(BPFSCOPE + ["fuse", "bench", str(tmp_path / "nope")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and r.stderr.strip() == f"bpfscope: {tmp_path / 'nope'} is not a directory", r.stderr

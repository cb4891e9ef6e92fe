"""The built-in web page in headless Chromium, against a real collector holding real records.

Each page is loaded by its address (/#page?filters), once with --dump-dom after its scripts
ran (the data must be in the DOM) and once with --screenshot, kept in test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zlib
from collections import Counter

import httpx
import orjson
import pytest

from bpfscope.schema import make_record
from conftest import BPFSCOPE, REPO, free_port, skip_or_fail

ARTIFACTS = REPO / "test-artifacts"
S = 10**9
WIDTH, HEIGHT = 1400, 900
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--lang=en-US",
                 "--hide-scrollbars", "--virtual-time-budget=5000"]

# What the sys exporter sends each interval, per process and syscall: (pid, comm, {syscall: count}).
SYSCALLS = [(6593, "getppid_loop", {"getppid": 6_059_999, "mmap": 8}),
            (1083, "nginx", {"read": 420, "write": 310, "epoll_wait": 150})]
STACKS = [  # (frames root first, samples): the flame graph must show these frames
    (["_start", "__libc_start_main", "main", "serve_request", "parse_headers"], 40),
    (["_start", "__libc_start_main", "main", "serve_request", "send_response", "writev"], 25),
    (["_start", "__libc_start_main", "main", "serve_request"], 5),
    (["_start", "__libc_start_main", "main", "event_loop", "epoll_wait"], 20),
    (["_start", "__libc_start_main", "main", "gc_collect", "mark_objects"], 10),
]
STATES = ["running", "sleeping", "runnable", "running", "blocked", "sleeping"]


def dataset(now: int) -> list[dict]:
    records = []
    for i in range(60):  # ten minutes of 10 s intervals
        ts = now - (59 - i) * 10 * S
        for pid, comm, calls in SYSCALLS:
            for name, count in calls.items():
                records.append(make_record("system", "syscall", ts=ts, pid=pid, comm=comm, labels={"syscall": name},
                                           values={"count": count, "rate_per_s": count / 10}))
        other = make_record("system", "syscall", ts=ts, pid=77, comm="postgres", labels={"syscall": "pread64"},
                            values={"count": 90, "rate_per_s": 9.0})
        records.append({**other, "host": "node-b"})
    for j, (frames, samples) in enumerate(STACKS):
        records.append(make_record("stack", "cpu_stack", ts=now - (j + 1) * S, pid=1083, tid=1083, comm="nginx",
                                   values={"count": samples}, stack=frames))
    for tid in (1083, 1084, 1085):
        ts = now - 90 * S
        for k in range(12):
            duration = (2 + (k * tid) % 5) * S
            records.append(make_record("proc", "thread_state", ts=ts, pid=1083, tid=tid, comm="nginx",
                                       labels={"state": STATES[(k + tid) % len(STATES)]},
                                       values={"duration_ns": duration}))
            ts += duration
    return records


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if not path:
        skip_or_fail("no chromium (apt-get install chromium) for the web page test")
    return path


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    """A real collector process with the dataset stored; yields (base URL, records)."""
    tmp = tmp_path_factory.mktemp("web")
    port = free_port()
    cmd = [BPFSCOPE[0], "-m", "bpfscope.collector", "--db", f"sqlite:///{tmp}/web.db", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        records = dataset(time.time_ns())
        r = httpx.post(f"{url}/api/v1/records", content=orjson.dumps(records))
        assert r.json() == {"stored": len(records)}, r.text
        yield url, records
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def browse(chromium: str, url: str, *mode: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="bpfscope-chromium-") as profile:
        proc = subprocess.Popen([chromium, *BROWSER_FLAGS, f"--user-data-dir={profile}", *mode, url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helper processes, only ours
            proc.communicate()
            pytest.fail(f"chromium did not finish loading {url}")
    assert proc.returncode == 0, err[-2000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def dom(chromium: str, url: str) -> str:
    html = browse(chromium, url, "--dump-dom").stdout
    assert "collector unreachable" not in html and 'class="status bad"' not in html, html[-3000:]
    return html


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows of RGB(A) bytes, bytes per pixel) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color_type = header[:4]
    assert depth == 8 and color_type in (2, 6), header
    bpp = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a, b = (line[i - bpp] if i >= bpp else 0), prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def screenshot(chromium: str, url: str, name: str, *extra: str) -> Counter:
    """Save test-artifacts/<name>.png, check it is a real picture; returns its colour counts."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    path.unlink(missing_ok=True)
    browse(chromium, url, f"--screenshot={path}", f"--window-size={WIDTH},{HEIGHT}", *extra)
    data = path.read_bytes()
    assert len(data) > 20_000, f"{path}: only {len(data)} bytes"
    width, height, rows, bpp = png_pixels(data)
    assert (width, height) == (WIDTH, HEIGHT)
    colors = Counter(row[i:i + 3] for row in rows for i in range(0, len(row), bpp * 2))  # every other pixel
    most = colors.most_common(1)[0][1] / sum(colors.values())
    assert len(colors) > 50 and most < 0.9, f"{path} looks blank: {len(colors)} colours, top one {most:.0%}"
    return colors


def near(colors: Counter, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    return sum(n for c, n in colors.items() if all(abs(c[i] - rgb[i]) <= tolerance for i in range(3)))


# -- the pages -------------------------------------------------------------------------------------


def test_overview_page(chromium, collector):
    url, records = collector
    html = dom(chromium, f"{url}/#overview")
    for text in (">syscall<", ">cpu_stack<", ">thread_state<", ">node-b<", ">sys<", ">flame graph<", ">timeline<",
                 ">chart<", f"{len(records):,} records", "4 streams"):
        assert text in html, text
    assert f">{records[0]['host']}<" in html
    screenshot(chromium, f"{url}/#overview", "web-overview")
    screenshot(chromium, f"{url}/#overview", "web-overview-dark", "--force-dark-mode")


def test_records_page(chromium, collector):
    url, _ = collector
    page = f"{url}/#records?domain=system&kind=syscall&comm=getppid_loop&limit=20"
    html = dom(chromium, page)
    assert "20 records" in html
    assert html.count("getppid_loop") >= 20 and ">getppid<" in html and ">mmap<" in html
    assert "6,059,999" in html and "nginx" not in html.split("<tbody>", 1)[1]  # the comm filter applied
    html = dom(chromium, f"{url}/#records?domain=stack&kind=cpu_stack")
    assert "5 records" in html and "parse_headers (5)" in html and "<li>serve_request</li>" in html
    screenshot(chromium, f"{url}/#records?domain=system&kind=syscall&limit=40", "web-records")


def test_charts_page(chromium, collector):
    url, _ = collector
    page = f"{url}/#charts?kind=syscall&group_by=syscall&bucket=10&scale=log"
    html = dom(chromium, page)
    for name in ("getppid", "read", "write", "epoll_wait", "mmap", "pread64"):
        assert f'data-series="{name}"' in html, name
    assert 'aria-label="line chart: 6 series,' in html
    colors = screenshot(chromium, page, "web-charts")
    # the busiest series' colour (the first of the palette) is drawn as a line, not only in the legend
    assert near(colors, (0x4C, 0x8D, 0xFF)) > 300


def test_flame_graph_page(chromium, collector):
    url, _ = collector
    page = f"{url}/#flame?kind=cpu_stack"
    html = dom(chromium, page)
    for frame in ("total", "_start", "main", "serve_request", "parse_headers", "send_response", "epoll_wait",
                  "gc_collect"):
        assert f">{frame}<" in html, frame
    assert html.count('class="fr') >= 12  # every frame of the known stacks is drawn
    assert "total 100 (count)" in html and "40.0 %" in html  # parse_headers' self share in the table
    colors = screenshot(chromium, page, "web-flame")
    assert near(colors, (0xF0, 0x90, 0x50), 60) > 2000  # warm flame colours fill the graph


def test_timeline_page(chromium, collector):
    url, _ = collector
    html = dom(chromium, f"{url}/#timeline")
    for text in (">nginx:1083<", ">nginx:1084<", ">nginx:1085<", ">running<", ">sleeping<", ">blocked<",
                 ">runnable<", "3 series"):
        assert text in html, text
    screenshot(chromium, f"{url}/#timeline", "web-timeline")


def test_unknown_page_falls_back_to_overview(chromium, collector):
    url, _ = collector
    html = dom(chromium, f"{url}/#no-such-page?x=1")
    assert 'id="page-overview"' in html and ">syscall<" in html


def test_connections_page(chromium, collector):
    """Snapshot rows of two connections (the newest row of each wins) and one close, shaped as
    `bpfscope net` sends them; posted last so the other pages' counts are not changed."""
    import time

    import httpx

    from bpfscope.schema import make_record

    url, _ = collector
    now = time.time_ns()

    def conn(conn_id, ts, direction, lport, rport, acked, received, rx_rate=None):
        values = {"bytes_acked": acked, "bytes_received": received, "srtt_us": 1460, "snd_cwnd": 20,
                  "snd_ssthresh": 2147483647, "total_retrans": 0}
        if rx_rate is not None:
            values.update(tx_bytes_per_s=0.0, rx_bytes_per_s=rx_rate)
        return make_record("net", "tcp_conn", ts=ts, pid=28348, tid=28348, comm="python3",
                           labels={"conn_id": conn_id, "direction": direction, "state": "ESTABLISHED",
                                   "family": "ipv4", "laddr": "127.0.0.1", "lport": lport,
                                   "raddr": "127.0.0.1", "rport": rport},
                           values=values)

    records = [conn("7", now - 2_000_000_000, "in", "7003", "58188", 0, 1_000_000),
               conn("7", now - 1_000_000_000, "in", "7003", "58188", 0, 101_600_000, rx_rate=101_600_000.0),
               conn("8", now - 1_000_000_000, "out", "58188", "7003", 101_700_000, 0, rx_rate=0.0),
               make_record("net", "tcp_close", ts=now, pid=4242, comm="curl",
                           labels={"direction": "out", "laddr": "127.0.0.1", "lport": "40000",
                                   "raddr": "127.0.0.1", "rport": "8080"},
                           values={"bytes_acked": 77, "bytes_received": 4096})]
    assert httpx.post(f"{url}/api/v1/records", json=records, timeout=10).status_code == 200
    html = dom(chromium, f"{url}/#net?from=-5m")
    assert "2 connections" in html
    body = html.split("<tbody>", 1)[1]
    assert body.index("127.0.0.1:7003") < body.index("127.0.0.1:58188")  # the busiest (rx 102 MB/s) first
    assert "102MB/s" in body and "1MB/s" not in body  # the newest row of connection 7, not the older one
    assert ">curl<" in html and "4.1k" in html
    screenshot(chromium, f"{url}/#net?from=-5m", "web-connections")


# -- the flame graph page with records of real runs (posted last: they change no other page) ----


def js_duration(seconds: float) -> str:
    """api.js fmtDuration for values under 2 minutes."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def js_bytes(n: float) -> str:
    """api.js fmtSI + "B" for values of at least 1000."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}B"
    return f"{n:.3g}B"


@pytest.fixture(scope="module")
def stack_runs(collector, tmp_path_factory):
    """`bpfscope stack offcpu` on a program that sleeps 3 x 200 ms and `bpfscope stack mem` on
    one that keeps 1,000 blocks of 4 KiB, both for real, sending to this module's collector
    (and printing the same records as JSON, the truth the page is checked against)."""
    from test_stack_cpu import build
    from test_stack_mem import run_mem
    from test_stack_offcpu import run_offcpu

    url, _ = collector
    tmp = tmp_path_factory.mktemp("web-stacks")
    offcpu, sleeper, _ = run_offcpu(build(tmp, "sleep_loop"), 3, 200, ["--collector", url])
    snapshot, leaker = run_mem(build(tmp, "leak"), ["--collector", url])
    return {"offcpu": (offcpu, sleeper), "mem": (snapshot, leaker)}


@pytest.mark.bpf
def test_flame_graph_page_offers_every_stack_kind(chromium, collector):
    url, _ = collector
    html = dom(chromium, f"{url}/#flame?kind=block_stack&from=-1h")
    select = html.split('name="kind"', 1)[1].split("</select>", 1)[0]
    for kind in ("cpu_stack", "offcpu_stack", "alloc_stack", "alloc_stack:kernel", "io_stack", "block_stack",
                 "load_stack"):
        assert f'value="{kind}"' in select, kind
    assert "no block_stack stacks" in html


@pytest.mark.bpf
def test_flame_graph_page_draws_a_real_offcpu_run(chromium, collector, stack_runs):
    url, _ = collector
    records, pid = stack_runs["offcpu"]
    asleep = [r for r in records if r["pid"] == pid and r["labels"]["state"] == "sleep"]
    on_nanosleep = sum(r["values"]["ns"] for r in asleep if "hrtimer_nanosleep_[k]" in r["stack"])
    assert abs(on_nanosleep - 0.6e9) <= 0.06e9  # the workload's truth: 3 x 200 ms
    page = f"{url}/#flame?kind=offcpu_stack&pid={pid}&label=state:sleep&from=-10m"
    html = dom(chromium, page)
    total = sum(r["values"]["ns"] for r in asleep)  # what the exporter sent, polls of stdin included
    assert f"total {js_duration(total / 1e9)} (ns)" in html, html[-3000:]
    for frame in ("main", "clock_nanosleep", "hrtimer_nanosleep_[k]"):
        assert f">{frame}<" in html, frame
    table = html.split("Top frames", 1)[1]
    assert js_duration(on_nanosleep / 1e9) in table  # hrtimer_nanosleep: the leaf, its total in the frames table
    colors = screenshot(chromium, page, "web-flame-offcpu")
    assert near(colors, (0xF0, 0x90, 0x50), 60) > 2000
    # the time range applies: nothing before the run
    html = dom(chromium, f"{url}/#flame?kind=offcpu_stack&pid={pid}&from=-2h&to=-1h")
    assert "no offcpu_stack stacks" in html


@pytest.mark.bpf
def test_flame_graph_page_draws_a_real_mem_run_as_its_newest_snapshot(chromium, collector, stack_runs):
    url, _ = collector
    snapshot, pid = stack_runs["mem"]  # the exporter's last read
    assert sum(r["values"]["outstanding_bytes"] for r in snapshot if "leak_here" in r["stack"]) == 4_096_000
    total = sum(r["values"]["outstanding_bytes"] for r in snapshot)
    sent = httpx.get(f"{url}/api/v1/records", params={"kind": "alloc_stack", "pid": pid, "limit": 10000}).json()
    assert len({r["ts"] for r in sent}) >= 2  # several reads arrived: a sum over them would be wrong
    page = f"{url}/#flame?kind=alloc_stack&pid={pid}&from=-10m"
    html = dom(chromium, page)
    assert f"total {js_bytes(total)} (outstanding_bytes) outstanding at the newest read" in html, html[-3000:]
    for frame in ("main", "leak_here"):
        assert f">{frame}<" in html, frame
    table = html.split("Top frames", 1)[1].split("</table>", 1)[0]
    row = table.split(">leak_here<", 1)[1].split("</tr>", 1)[0]
    assert f">{js_bytes(4_096_000)}<" in row  # 4.1MB: self of leak_here (malloc's caller)
    screenshot(chromium, page, "web-flame-mem")
    # the kernel-space selection does not mix these user-space allocations in
    assert "no alloc_stack stacks" in dom(chromium, f"{url}/#flame?kind=alloc_stack:kernel&pid={pid}&from=-10m")

"""The FUSE page, fed by a real `bpfscope fuse trace` of a real `plain` mount through a real
collector: the numbers of a known workload (lookups, ENOENT errors, write bytes) are on the page."""

from __future__ import annotations

import os
import re

import httpx
import pytest
from fuse_helpers import BPFSCOPE, mounted, world_dir
from test_web_ui import chromium, collector, dom, screenshot  # noqa: F401 (fixtures)

pytestmark = pytest.mark.bpf

FILES, MISSING, CHUNK, WRITES = 137, 41, 64 * 1024, 3


def _section(html: str, title: str) -> str:
    """The page from the heading that starts with title to the next heading."""
    start = html.index(f"<h2>{title}")
    end = html.find("<h2>", start + 4)
    return html[start:end if end >= 0 else len(html)]


def _row(html: str, *cells: str) -> str:
    """The one table row holding every cell text given."""
    rows = [r for r in re.findall(r"<tr>.*?</tr>", html, re.S) if all(f">{c}<" in r for c in cells)]
    assert len(rows) == 1, (cells, rows)
    return rows[0]


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)


def test_fuse_page_shows_the_requests_of_a_known_workload(chromium, collector):  # noqa: F811
    import subprocess

    from bpfscope.bpf import wait_for_links

    url, _ = collector
    with world_dir() as d:
        src, mnt = os.path.join(d, "src"), os.path.join(d, "mnt")
        os.mkdir(src), os.mkdir(mnt)
        for i in range(FILES):
            with open(os.path.join(src, f"f{i}"), "w") as f:
                f.write("x")
        with mounted(src, mnt, "plain"):
            trace = subprocess.Popen(BPFSCOPE + ["fuse", "trace", "--mount", mnt, "--collector", url, "--quiet",
                                                 "--interval", "1", "--duration", "3"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert wait_for_links(trace, at_least=2), trace.stderr.read() if trace.poll() is not None else ""
                for i in range(FILES):
                    os.stat(os.path.join(mnt, f"f{i}"))  # plain: one LOOKUP each
                for i in range(MISSING):
                    assert not os.path.exists(os.path.join(mnt, f"nope{i}"))  # one LOOKUP each, ENOENT
                # a LOOKUP (ENOENT) then CREATE
                fd = os.open(os.path.join(mnt, "written"), os.O_WRONLY | os.O_CREAT, 0o644)
                for _ in range(WRITES):
                    os.write(fd, b"w" * CHUNK)  # one WRITE each: 40 + 40 bytes of headers + the data
                os.close(fd)
                _, err = trace.communicate(timeout=60)
            finally:
                if trace.poll() is None:
                    trace.kill()
                    trace.wait()
            assert trace.returncode == 0, err

    records = httpx.get(f"{url}/api/v1/records", params={"domain": "fuse", "kind": "fuse_op", "from": "-5m"}).json()
    lookups = [r for r in records if r["labels"]["mount"] == mnt and r["labels"]["opcode"] == "LOOKUP"]
    lookup_count, lookup_errors = FILES + MISSING + 1, MISSING + 1  # + the create's
    assert sum(r["values"]["count"] for r in lookups) == lookup_count

    for r in lookups:
        assert sum(n for k, n in r["values"].items() if k.startswith("hist_")) == r["values"]["count"], r

    page = dom(chromium, f"{url}/#fuse?from=-5m")
    html = _section(page, "Per mount and opcode")
    lookup = _cells(_row(html, mnt, "LOOKUP"))
    assert lookup[2:4] == [f"{lookup_count:,}", f"{lookup_errors}"], lookup
    write = _cells(_row(html, mnt, "WRITE"))
    assert write[2] == f"{WRITES}" and write[4] == f"{WRITES * (CHUNK + 80):,}", write
    assert float(write[6]) > 0, write  # a mean latency was measured
    # the distribution: every request of the row in one log2 bucket column or another
    dist = _section(page, "Latency distribution")
    heads = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", dist, re.S)
    assert heads[:3] == ["mount", "opcode", "requests"] and all(t.startswith("&lt; ") for t in heads[3:]), heads
    for opcode, want in (("LOOKUP", lookup_count), ("WRITE", WRITES)):
        cells = _cells(_row(dist, mnt, opcode))
        assert len(cells) == len(heads) and cells[2] == f"{want:,}", cells
        counts = [int(re.sub(r"<[^>]+>", "", c).replace(",", "") or 0) for c in cells[3:]]
        assert sum(counts) == want and any(counts), cells
    screenshot(chromium, f"{url}/#fuse?from=-5m", "fuse")
    # the mount filter keeps only that mount
    html = dom(chromium, f"{url}/#fuse?from=-5m&mount={mnt}")
    assert ">LOOKUP<" in html and "1 mount," in html

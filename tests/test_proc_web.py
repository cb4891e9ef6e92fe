"""The Processes page and the timeline, fed by real `bpfscope proc` runs through a real
collector (its records go over HTTP like under `bpfscope up`)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest
from conftest import run_cli
from proc_workloads.build import build as build_workloads
from test_web_ui import chromium, collector, dom  # noqa: F401 (fixtures)

pytestmark = pytest.mark.bpf


def test_processes_page_shows_a_portrait_and_the_table(chromium, collector):  # noqa: F811
    url, _ = collector
    r = run_cli("proc", "--collector", url, "--quiet", "--interval", "0.5", "--",
                "sh", "-c", "sleep 0.3; exit 5", timeout=60)
    assert r.returncode == 5, r.stderr  # the command's exit code
    r = run_cli("proc", "--collector", url, "--quiet", "--interval", "0.5", "--duration", "1.2", timeout=60)
    assert r.returncode == 0, r.stderr
    got = httpx.get(f"{url}/api/v1/records", params={"domain": "proc", "kind": "process_summary", "from": "-5m"}).json()
    assert any(x["values"].get("exit_code") == 5 for x in got)
    html = dom(chromium, f"{url}/#proc?from=-5m")
    assert "exit 5" in html and "/usr/bin/sleep" in html
    assert "Every process (newest interval)" in html and " portraits" in html
    # the sleep's state spans are on the timeline page
    rows = httpx.get(f"{url}/api/v1/timeline", params={"domain": "proc", "kind": "thread_state", "comm": "sleep",
                                                      "from": "-5m"}).json()
    assert any("sleeping" in row.values() for row in rows), rows[:5]


class _Dom(HTMLParser):
    """The dumped page as nested [tag, attrs, children] (text as str children)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self, html: str):
        super().__init__()
        self.root = ["root", {}, []]
        self.open = [self.root]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        el = [tag, dict(attrs), []]
        self.open[-1][2].append(el)
        if tag not in self.VOID:
            self.open.append(el)

    def handle_endtag(self, tag):
        for i in range(len(self.open) - 1, 0, -1):
            if self.open[i][0] == tag:
                del self.open[i:]
                break

    def handle_data(self, data):
        self.open[-1][2].append(data)


def _walk(el):
    yield el
    for c in el[2]:
        if isinstance(c, list):
            yield from _walk(c)


def _text(el) -> str:
    return "".join(c if isinstance(c, str) else _text(c) for c in el[2])


def _section(root, title: str):
    """The element right after the <h2> whose text starts with title."""
    for el in _walk(root):
        kids = [c for c in el[2] if isinstance(c, list)]
        for i, c in enumerate(kids[:-1]):
            if c[0] == "h2" and _text(c).startswith(title):
                return kids[i + 1]
    raise AssertionError(f"no section {title!r}")


def _rows(section) -> list[list[str]]:
    return [[_text(td).strip() for td in tr[2] if isinstance(td, list) and td[0] == "td"]
            for tr in _walk(section) if tr[0] == "tr" and any(isinstance(td, list) and td[0] == "td" for td in tr[2])]


def _si(text: str) -> float:
    """"1.23MB" -> 1230000.0 (api.js fmtSI with a unit)."""
    num = text.rstrip("B")
    scale = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(num[-1:], 1)
    return float(num.rstrip("kMGT")) * scale


def test_processes_page_shows_the_tree_switch_reasons_resources_and_pthread_holds(chromium, collector,  # noqa: F811
                                                                                   tmp_path):
    built = build_workloads(tmp_path)
    if built is None:
        pytest.skip("no C compiler")
    url, _ = collector
    out = tmp_path / "mutex.out"
    # a shell with two pipelines: the mutex workload (its two threads, their switch-outs,
    # 2 x 100 pthread holds) and the resources one (32 MiB of heap, 4 MiB written, then
    # still for 3 s: resource samples over time); a tree of sh, its children and threads
    cmd = (f'echo go | {built["mutex"]} > {out} & '
           f'(echo go; sleep 3; echo done) | {built["resources"]} {tmp_path}/res.dat 32 4 > /dev/null; wait')
    r = run_cli("proc", "--collector", url, "--quiet", "--interval", "0.5", "--pthread", "--", "sh", "-c", cmd,
                timeout=90)
    assert r.returncode == 0, r.stderr
    workers = {int(line.split()[1]) for line in out.read_text().splitlines()}  # "thread TID SECONDS"
    assert len(workers) == 2, out.read_text()

    def get(kind):
        return httpx.get(f"{url}/api/v1/records", params={"domain": "proc", "kind": kind, "from": "-5m",
                                                         "limit": "5000"}).json()

    [mutex] = [x for x in get("process_summary") if x["values"].get("exec", "").endswith("/mutex")]
    sh = mutex["values"]["parent_pid"]
    html = dom(chromium, f"{url}/#proc?from=-5m")
    page = _Dom(html).root

    # the tree: the workload under its shell, its two workers under it
    tree = _section(page, "Process tree")
    [sh_li] = [el for el in _walk(tree) if el[0] == "li" and el[1].get("data-pid") == str(sh)]
    [mutex_li] = [el for el in _walk(sh_li) if el[0] == "li" and el[1].get("data-pid") == str(mutex["pid"])]
    assert {int(el[1]["data-tid"]) for el in _walk(mutex_li) if "data-tid" in el[1]} == workers, _text(mutex_li)
    assert f"{mutex['pid']} mutex exec {mutex['values']['exec']}: exit 0" in _text(mutex_li), _text(mutex_li)

    # switch-out reasons: the workers' rows, as the records give them (tid, reason, state, blocked on, count)
    want = {(x["tid"], x["labels"]["reason"], x["labels"]["state"], x["labels"]["blocked_on"], x["values"]["count"])
            for x in get("switch_reason_summary") if x["tid"] in workers}
    assert any(w[3].startswith("futex") for w in want), want  # the workers wait for the mutex
    got = {(int(c[1]), c[3], c[4], c[5], int(c[6].replace(",", "")))
           for c in _rows(_section(page, "Switch-out reasons")) if c[1].isdigit() and int(c[1]) in workers}
    assert got == want

    # resources: one row per sample of the resources workload, newest first, with the
    # RSS and written bytes of each sample (its 32 MiB of heap once touched)
    [res] = [x for x in get("process_summary") if x["values"].get("exec", "").endswith("/resources")]
    samples = [x for x in get("resources") if x["pid"] == res["pid"]]
    rows = [c for c in _rows(_section(page, "Resources over time")) if c[1] == str(res["pid"])]
    assert len(samples) >= 2 and len(rows) == len(samples), (samples, rows)
    assert max(x["values"]["rss_bytes"] for x in samples) >= 32 << 20, samples
    for row, x in zip(rows, samples):  # both newest first
        assert abs(_si(row[4]) - x["values"]["rss_bytes"]) <= 0.005 * x["values"]["rss_bytes"], (row, x)
        assert _si(row[6]) == pytest.approx(x["values"]["write_bytes"], rel=0.005, abs=1), (row, x)

    # pthread holds: each worker held the one mutex 100 times
    holds = {int(c[1]): c for c in _rows(_section(page, "pthread lock hold times")) if c[1].isdigit()
             and int(c[1]) in workers and c[4] == "mutex"}
    assert set(holds) == workers, holds
    assert {c[5] for c in holds.values()} == {"100"} and len({c[3] for c in holds.values()}) == 1, holds

"""The Processes page and the timeline, fed by real `bpfscope proc` runs through a real
collector (its records go over HTTP like under `bpfscope up`)."""

from __future__ import annotations

import httpx
import pytest
from conftest import run_cli
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

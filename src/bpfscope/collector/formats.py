"""Pure transformations from stored records to what the pages and Grafana panels draw.

No database and no HTTP here: the app fetches, these functions shape, the tests pin the shapes.

- flame graphs: stacks (root first) merged into a tree, served nested ({name, value, self,
  children}) for the built-in page or as Grafana's flame graph data frame in nested-set
  form (rows {level, value, self, label} in depth-first order);
- state timelines: state records turned into rows {time, <series>: state} for Grafana's
  state-timeline panel (through the Infinity datasource) and the built-in page;
- the overview: record counts per (host, domain, kind) turned into rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ROOT = "total"
# The exporter (CLI sub-command) that produces a domain, where its name differs.
EXPORTER_OF_DOMAIN = {"system": "sys"}
RECORD_FIELDS = ("host", "domain", "kind", "pid", "tid", "comm")


def _number(value: Any) -> float | int | None:
    """A positive finite number (floats that are whole become ints), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            value = int(value)
    return value if value > 0 else None


# -- flame graphs ---------------------------------------------------------------------------


def flame_tree(stacks: Iterable[tuple[Sequence[str], Any]]) -> dict:
    """Merge (frames root first, value) pairs into {name, value, self, children} nodes.

    The root is named "total" and holds the sum of every value. Siblings are sorted by
    name, as classic flame graphs do, so the same data always gives the same tree.
    Values that are not positive numbers are skipped; an empty stack counts as the root's own.
    """
    root: dict = {"name": ROOT, "value": 0, "children": {}}
    for frames, raw in stacks:
        value = _number(raw)
        if value is None:
            continue
        node = root
        node["value"] += value
        for frame in frames:
            children = node["children"]
            child = children.get(frame)
            if child is None:
                child = children[frame] = {"name": frame, "value": 0, "children": {}}
            child["value"] += value
            node = child
    # Iteratively (stacks can be hundreds of frames deep): dict children -> sorted lists, self.
    todo = [root]
    while todo:
        node = todo.pop()
        kids = [node["children"][name] for name in sorted(node["children"])]
        node["self"] = node["value"] - sum(k["value"] for k in kids)
        node["children"] = kids
        todo.extend(kids)
    return root


def flame_rows(tree: Mapping) -> list[dict]:
    """A flame tree as Grafana's nested-set frame: rows {level, value, self, label}, depth first.

    value includes the children, self does not; level 0 is the root ("total").
    """
    rows: list[dict] = []
    todo: list[tuple[Mapping, int]] = [(tree, 0)]
    while todo:
        node, level = todo.pop()
        rows.append({"level": level, "value": node["value"], "self": node["self"], "label": node["name"]})
        todo.extend((child, level + 1) for child in reversed(node["children"]))
    return rows


# -- state timelines --------------------------------------------------------------------------


def series_name(record: Mapping, spec: str) -> str:
    """The series a record belongs to: spec is ':'-separated names, each a record field
    (host, domain, kind, pid, tid, comm) or else a label key; 'comm:tid' -> 'nginx:1234'."""
    parts = []
    for name in spec.split(":"):
        value = record.get(name) if name in RECORD_FIELDS else (record.get("labels") or {}).get(name)
        parts.append("?" if value is None or value == "" else str(value))
    return ":".join(parts)


def _natural(name: str) -> tuple:
    # 'x:2' before 'x:10': numbers compare as numbers, words as words.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(":"))


def timeline_rows(records: Iterable[Mapping], series: str = "comm:tid", state: str = "state",
                  duration: str = "duration_ns", max_series: int = 50) -> list[dict]:
    """State records -> rows {time (epoch ms), <series>: state or null}, sorted by time.

    The record shape this expects (the proc domain emits it; any domain may):

        {"domain": "proc", "kind": "thread_state", "ts": <ns when the state began>,
         "pid": 1234, "tid": 1235, "comm": "nginx",
         "labels": {"state": "running"},            # or sleeping, blocked, runnable, ...
         "values": {"duration_ns": 1500000}}        # optional: how long the state lasted

    A state lasts until the series' next record, or for duration_ns when given (then the
    series shows no state, null, until its next record). The state is read from
    labels[state], else values[state]; records without one are skipped.

    Rows are dense: one per moment where some series changes, each carrying every series'
    current state, so Grafana's state-timeline panel draws it with default options (nulls
    are gaps). Changes within one millisecond collapse to the last. At most max_series
    series are kept, those with the most records; columns are in natural name order.
    """
    per_series: dict[str, list[tuple[int, int | None, str]]] = {}
    for r in records:
        value = (r.get("labels") or {}).get(state)
        if value is None:
            value = (r.get("values") or {}).get(state)
        if value is None:
            continue
        span = (r.get("values") or {}).get(duration)
        end = None
        if isinstance(span, (int, float)) and not isinstance(span, bool) and span >= 0:
            end = r["ts"] + int(span)
        per_series.setdefault(series_name(r, series), []).append((r["ts"], end, str(value)))
    if len(per_series) > max_series:
        keep = sorted(per_series, key=lambda s: (-len(per_series[s]), _natural(s)))[:max(max_series, 0)]
        per_series = {s: per_series[s] for s in keep}
    names = sorted(per_series, key=_natural)

    # Changes (ns, order, series, state): a state that ends before the next one begins
    # leaves a null; at the same ns a start (order 1) wins over an end (order 0).
    changes: list[tuple[int, int, str, str | None]] = []
    for name in names:
        spans = sorted(per_series[name], key=lambda s: s[0])
        for i, (start, end, value) in enumerate(spans):
            changes.append((start, 1, name, value))
            following = spans[i + 1][0] if i + 1 < len(spans) else None
            if end is not None and (following is None or following > end):
                changes.append((end, 0, name, None))
    changes.sort(key=lambda c: (c[0], c[1]))

    rows: list[dict] = []
    current: dict[str, str | None] = dict.fromkeys(names)
    i = 0
    while i < len(changes):
        ms = changes[i][0] // 1_000_000
        while i < len(changes) and changes[i][0] // 1_000_000 == ms:
            current[changes[i][2]] = changes[i][3]
            i += 1
        rows.append({"time": ms, **current})
    return rows


# -- overview ----------------------------------------------------------------------------------


def overview_streams(groups: Iterable[tuple[str, str, str, int, int]], since_ns: int, until_ns: int,
                     now_ns: int) -> list[dict]:
    """(host, domain, kind, records, last ts ns) per group -> rows with rate and last seen.

    rate_per_s is records over the window; age_s is how long ago the last record was stamped.
    Sorted by host, then domain and kind.
    """
    window_s = max((until_ns - since_ns) / 1e9, 1e-9)
    rows = []
    for host, domain, kind, count, last_ns in groups:
        rows.append({
            "host": host, "exporter": EXPORTER_OF_DOMAIN.get(domain, domain), "domain": domain, "kind": kind,
            "records": count, "rate_per_s": round(count / window_s, 3),
            "last_seen": last_ns // 1_000_000, "age_s": round(max(now_ns - last_ns, 0) / 1e9, 3),
        })
    rows.sort(key=lambda r: (r["host"], r["domain"], r["kind"]))
    return rows

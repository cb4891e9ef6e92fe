"""Files a stack run leaves behind, from the totals of the whole run:

- folded (Brendan Gregg's `comm;root;...;leaf weight` lines; flamegraph.pl, speedscope,
  inferno and most tools read them);
- a self-contained interactive flame graph SVG (hover for details, click to zoom,
  Ctrl-F or the Search button to highlight matching frames; no network needed);
- speedscope's JSON file format (one sampled profile per process);
- pprof (profile.proto, gzipped: `go tool pprof`, Pyroscope and Parca read it).

Every writer takes the same (comm, pid, frames root first) -> weight totals, so the
files of one run agree on their total weight.
"""

from __future__ import annotations

import gzip
import html
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ValueType:
    """One value of every sample: what pprof calls it (type, unit) and the record value
    (`values` of a stack record) it is summed from."""
    type: str
    unit: str
    field: str


# mode -> the values of a sample, the flame graph's weight first (pprof's default sample
# type). Names follow Go's profiles where one exists (inuse_space/inuse_objects: heap).
MODE_VALUES: dict[str, tuple[ValueType, ...]] = {
    "cpu": (ValueType("samples", "count", "count"), ValueType("cpu", "nanoseconds", "cpu_ns")),
    "load": (ValueType("samples", "count", "count"), ValueType("cpu", "nanoseconds", "cpu_ns")),
    "offcpu": (ValueType("offcpu", "nanoseconds", "ns"), ValueType("blocks", "count", "count")),
    "block": (ValueType("device_time", "nanoseconds", "ns"), ValueType("requests", "count", "count"),
              ValueType("io", "bytes", "bytes")),
    "mem": (ValueType("inuse_space", "bytes", "outstanding_bytes"),
            ValueType("inuse_objects", "count", "outstanding_count")),
    # io: syscalls and block requests (their device time; 0 for a syscall) under one weight
    "io": (ValueType("io", "bytes", "bytes"), ValueType("calls", "count", "count"),
           ValueType("device_time", "nanoseconds", "ns")),
}
# without a mode: the weight alone, named after its display unit
_UNIT_VALUE = {"samples": ValueType("samples", "count", "weight"),
               "nanoseconds": ValueType("time", "nanoseconds", "weight"),
               "bytes": ValueType("space", "bytes", "weight")}


class StackTotals:
    """(comm, pid, tid, state, frames) -> weight (and the other values of the mode),
    summed over a run."""

    def __init__(self, unit: str = "samples", title: str = "bpfscope stack", mode: str | None = None,
                 freq: int | None = None):
        self.unit = unit  # of the weight, as the SVG shows it
        self.title = title
        types = MODE_VALUES.get(mode) or (_UNIT_VALUE.get(unit, ValueType("weight", unit, "weight")),)
        # cpu time per sample is 1/freq s: only when the sampling frequency is known
        self.period_ns = 10**9 // freq if freq else 0
        self.value_types = tuple(t for t in types if t.field != "cpu_ns" or self.period_ns)
        self.weights: dict[tuple, int] = defaultdict(int)
        self.others: dict[tuple, list[int]] = {}  # the values after the weight, per key
        self.start_ns = time.time_ns()

    def add(self, comm: str, pid: int, tid: int, state: str | None, frames: list[str], weight: int,
            values: dict | None = None) -> None:
        if weight <= 0:
            return
        key = (comm, pid, tid, state, tuple(frames))
        self.weights[key] += int(weight)
        others = self.others.setdefault(key, [0] * (len(self.value_types) - 1))
        values = values or {}
        for i, vt in enumerate(self.value_types[1:]):
            if vt.field == "cpu_ns":
                others[i] += int(values.get("count", weight)) * self.period_ns
            else:
                others[i] += int(values.get(vt.field, 0))

    def clear(self) -> None:
        self.weights.clear()
        self.others.clear()

    def values(self, key: tuple) -> list[int]:
        """Every value of a key, the weight first (the order of value_types)."""
        return [self.weights[key]] + self.others.get(key, [0] * (len(self.value_types) - 1))

    @property
    def total(self) -> int:
        return sum(self.weights.values())

    def folded(self) -> dict[tuple[str, ...], int]:
        """Stacks with the command as the root frame (and the task state below it for
        off-CPU time), merged over pids and tids."""
        out: dict[tuple[str, ...], int] = defaultdict(int)
        for (comm, _pid, _tid, state, frames), w in self.weights.items():
            head = (comm or "?",) + ((f"[{state}]",) if state else ())
            out[head + frames] += w
        return dict(out)


class StackOutputs(StackTotals):
    """The totals plus the files to write when the run ends."""

    def __init__(self, unit: str = "samples", title: str = "bpfscope stack", folded: str | None = None,
                 flamegraph: str | None = None, speedscope: str | None = None, pprof: str | None = None,
                 mode: str | None = None, freq: int | None = None):
        super().__init__(unit, title, mode, freq)
        self.paths = {"folded": folded, "flamegraph": flamegraph, "speedscope": speedscope, "pprof": pprof}

    def write(self) -> None:
        for what, path in self.paths.items():
            if path:
                WRITERS[what](self, Path(path))


# ---- folded -------------------------------------------------------------------------------------

def _clean(frame: str) -> str:
    return frame.replace(";", ":").replace("\n", " ")


def folded_lines(totals: StackTotals) -> list[str]:
    return [f"{';'.join(_clean(f) for f in stack)} {w}" for stack, w in sorted(totals.folded().items())]


def write_folded(totals: StackTotals, path: Path) -> None:
    path.write_text("".join(line + "\n" for line in folded_lines(totals)))


def parse_folded(text: str) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = defaultdict(int)
    for line in text.splitlines():
        stack, _, w = line.rstrip().rpartition(" ")
        if stack:
            out[tuple(stack.split(";"))] += int(w)
    return dict(out)


# ---- flame graph SVG ------------------------------------------------------------------------------

def _tree(stacks: dict[tuple[str, ...], int]) -> dict:
    root = {"n": "all", "v": 0, "c": {}}
    for stack, w in stacks.items():
        node = root
        node["v"] += w
        for frame in stack:
            node = node["c"].setdefault(frame, {"n": frame, "v": 0, "c": {}})
            node["v"] += w
    return root


def _colour(name: str, depth: int) -> str:
    h = 0
    for ch in name:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    if name.endswith("_[k]"):  # kernel: orange
        return f"rgb(230,{110 + h % 70},{20 + h % 40})"
    if name.startswith("[") or "+0x" in name:  # unnamed: grey
        return f"rgb({170 + h % 30},{170 + h % 30},{170 + h % 30})"
    if depth == 1:  # the command: blue-grey
        return f"rgb({100 + h % 40},{140 + h % 40},200)"
    return f"rgb(240,{90 + h % 130},{40 + h % 50})"  # user: flamegraph.pl's warm palette


_SVG_JS = r"""
var svg = document.documentElement, W = +svg.getAttribute('data-width'), TOTAL = +svg.getAttribute('data-total');
var frames = Array.prototype.slice.call(document.getElementsByClassName('f'));
var status = document.getElementById('status'), unit = svg.getAttribute('data-unit');
function fmt(v) { return unit === 'nanoseconds' ? (v / 1e6).toFixed(1) + ' ms' : v + ' ' + unit; }
function label(g, w) {
  var t = g.getElementsByTagName('text')[0], n = g.getAttribute('data-n'), fit = Math.floor((w - 6) / 7);
  t.textContent = fit < 3 ? '' : (n.length <= fit ? n : n.slice(0, fit - 2) + '..');
}
function zoom(g) {
  var x0 = +g.getAttribute('data-x'), w0 = +g.getAttribute('data-v'), d0 = +g.getAttribute('data-d');
  var scale = (W - 20) / (w0 * (W - 20) / TOTAL);
  frames.forEach(function (f) {
    var x = +f.getAttribute('data-x'), v = +f.getAttribute('data-v'), d = +f.getAttribute('data-d');
    var r = f.getElementsByTagName('rect')[0], t = f.getElementsByTagName('text')[0];
    var inside = x >= x0 && x + v <= x0 + w0 && d >= d0, above = d < d0 && x <= x0 && x + v >= x0 + w0;
    if (!inside && !above) { f.style.display = 'none'; return; }
    f.style.display = '';
    var px = inside ? 10 + (x - x0) * (W - 20) / w0 : 10, pw = inside ? v * (W - 20) / w0 : W - 20;
    r.setAttribute('x', px); r.setAttribute('width', pw); t.setAttribute('x', px + 3);
    f.style.opacity = above && d < d0 ? 0.6 : 1; label(f, pw);
  });
  document.getElementById('unzoom').style.display = d0 > 0 ? '' : 'none';
}
function search(re) {
  var m = 0, seen = [];
  frames.forEach(function (f) {
    var r = f.getElementsByTagName('rect')[0], hit = re && new RegExp(re).test(f.getAttribute('data-n'));
    r.setAttribute('fill', hit ? 'rgb(230,0,230)' : r.getAttribute('data-fill'));
    if (hit) {  // count a hit once, not again for hits nested under it
      var x = +f.getAttribute('data-x'), v = +f.getAttribute('data-v');
      if (!seen.some(function (s) { return x >= s[0] && x + v <= s[1]; })) { seen.push([x, x + v]); m += v; }
    }
  });
  document.getElementById('matched').textContent = re ? 'Matched: ' + (100 * m / TOTAL).toFixed(1) + '%' : '';
}
frames.forEach(function (f) {
  f.addEventListener('mouseover', function () {
    status.textContent = f.getAttribute('data-n') + ' (' + fmt(+f.getAttribute('data-v')) + ', ' +
      (100 * f.getAttribute('data-v') / TOTAL).toFixed(2) + '%)';
  });
  f.addEventListener('mouseout', function () { status.textContent = ' '; });
  f.addEventListener('click', function () { zoom(f); });
});
document.getElementById('unzoom').addEventListener('click', function () { zoom(frames[0]); });
document.getElementById('search').addEventListener('click', function () {
  var re = prompt('Search frames (regular expression), empty to clear', ''); search(re || null);
});
window.addEventListener('keydown', function (e) {
  if ((e.ctrlKey || e.metaKey) && e.key === 'f') { e.preventDefault(); document.getElementById('search').dispatchEvent(new Event('click')); }
});
svg.setAttribute('data-ready', '1');
"""


def flamegraph_svg(stacks: dict[tuple[str, ...], int], title: str = "Flame Graph", unit: str = "samples",
                   width: int = 1200, frame_h: int = 16) -> str:
    """A self-contained interactive SVG flame graph (root at the bottom) of folded stacks."""
    root = _tree(stacks)
    total = root["v"] or 1
    rows: list[tuple[dict, int, int]] = []  # node, depth, x (in weight units)
    todo = [(root, 0, 0)]
    max_depth = 0
    while todo:
        node, depth, x = todo.pop()
        if node["v"] * (width - 20) / total < 0.1 and depth:  # too thin to draw
            continue
        rows.append((node, depth, x))
        max_depth = max(max_depth, depth)
        cx = x
        kids = [node["c"][k] for k in sorted(node["c"])]
        for kid in kids:
            todo.append((kid, depth + 1, cx))
            cx += kid["v"]
    height = (max_depth + 1) * frame_h + 70
    out = [f'<?xml version="1.0" standalone="no"?>\n'
           f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'xmlns="http://www.w3.org/2000/svg" data-width="{width}" data-total="{total}" data-unit="{unit}">\n'
           '<style>text{font-family:Verdana,sans-serif;font-size:12px;fill:#000}'
           ' .f:hover rect{stroke:#000;stroke-width:0.5} .f{cursor:pointer} #title{font-size:17px}'
           ' .btn{cursor:pointer;fill:#333}</style>\n'
           f'<rect width="100%" height="100%" fill="#f8f8f8"/>\n'
           f'<text id="title" x="{width // 2}" y="24" text-anchor="middle">{html.escape(title)}</text>\n'
           f'<text id="unzoom" class="btn" x="10" y="24" style="display:none">Reset Zoom</text>\n'
           f'<text id="search" class="btn" x="{width - 110}" y="24">Search</text>\n'
           f'<text id="matched" x="{width - 110}" y="{height - 8}"></text>\n'
           f'<text id="status" x="10" y="{height - 8}"> </text>\n']
    for node, depth, x in rows:
        px = 10 + x * (width - 20) / total
        pw = node["v"] * (width - 20) / total
        y = height - 34 - (depth + 1) * frame_h
        name = node["n"]
        fill = _colour(name, depth)
        fit = int((pw - 6) // 7)
        text = "" if fit < 3 else (name if len(name) <= fit else name[: fit - 2] + "..")
        pct = 100 * node["v"] / total
        out.append(f'<g class="f" data-n="{html.escape(name)}" data-x="{x}" data-v="{node["v"]}" data-d="{depth}">'
                   f'<title>{html.escape(name)} ({node["v"]:,} {unit}, {pct:.2f}%)</title>'
                   f'<rect x="{px:.2f}" y="{y}" width="{pw:.2f}" height="{frame_h - 1}" fill="{fill}" '
                   f'data-fill="{fill}" rx="2"/>'
                   f'<text x="{px + 3:.2f}" y="{y + frame_h - 4}">{html.escape(text)}</text></g>\n')
    out.append(f"<script><![CDATA[{_SVG_JS}]]></script>\n</svg>\n")
    return "".join(out)


def write_flamegraph(totals: StackTotals, path: Path) -> None:
    path.write_text(flamegraph_svg(totals.folded(), title=totals.title, unit=totals.unit))


# ---- speedscope -----------------------------------------------------------------------------------

def speedscope_doc(totals: StackTotals) -> dict:
    frames: list[dict] = []
    index: dict[str, int] = {}
    by_proc: dict[tuple[str, int], list[tuple[list[int], int]]] = defaultdict(list)
    for (comm, pid, _tid, state, stack), w in sorted(totals.weights.items(), key=lambda kv: kv[0][:2]):
        names = ((f"[{state}]",) if state else ()) + stack
        ids = []
        for name in names:
            if name not in index:
                index[name] = len(frames)
                frames.append({"name": name})
            ids.append(index[name])
        by_proc[(comm, pid)].append((ids, w))
    profiles = []
    # speedscope's units: none, nanoseconds, microseconds, milliseconds, seconds, bytes
    unit = totals.value_types[0].unit
    unit = unit if unit in ("nanoseconds", "bytes") else "none"
    for (comm, pid), samples in by_proc.items():
        total = sum(w for _, w in samples)
        profiles.append({"type": "sampled", "name": f"{comm} ({pid})", "unit": unit, "startValue": 0, "endValue": total,
                         "samples": [ids for ids, _ in samples], "weights": [w for _, w in samples]})
    return {"$schema": "https://www.speedscope.app/file-format-schema.json", "exporter": "bpfscope",
            "name": totals.title, "activeProfileIndex": 0, "shared": {"frames": frames}, "profiles": profiles}


def write_speedscope(totals: StackTotals, path: Path) -> None:
    path.write_text(json.dumps(speedscope_doc(totals)))


# ---- pprof (profile.proto) -------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_varint(num: int, n: int) -> bytes:
    return _varint(num << 3) + _varint(n)


def _field_bytes(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _packed(num: int, values: list[int]) -> bytes:
    return _field_bytes(num, b"".join(_varint(v) for v in values))


def pprof_bytes(totals: StackTotals) -> bytes:
    """profile.proto (uncompressed): one sample per (comm, pid, tid, state, stack), leaf
    first locations, one value per value type, labels pid/tid/comm(/state); one location
    and function per name."""
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings)
        return strings[text]

    def value_type(vt: ValueType) -> bytes:
        return _field_varint(1, s(vt.type)) + _field_varint(2, s(vt.unit))

    body = bytearray()
    for vt in totals.value_types:
        body += _field_bytes(1, value_type(vt))
    funcs: dict[str, int] = {}
    for (comm, pid, tid, state, stack), w in totals.weights.items():
        locs = []
        for name in reversed((comm or "?",) + stack):
            if name not in funcs:
                funcs[name] = len(funcs) + 1
            locs.append(funcs[name])
        sample = _packed(1, locs) + _packed(2, totals.values((comm, pid, tid, state, stack)))
        labels = [("pid", None, pid), ("tid", None, tid), ("comm", comm, None)] + ([("state", state, None)] if state else [])
        for key, sval, nval in labels:
            lab = _field_varint(1, s(key)) + (_field_varint(2, s(sval)) if sval is not None else _field_varint(3, nval))
            sample += _field_bytes(3, lab)
        body += _field_bytes(2, sample)
    for name, fid in funcs.items():  # location id == function id
        body += _field_bytes(4, _field_varint(1, fid) + _field_bytes(4, _field_varint(1, fid)))
        body += _field_bytes(5, _field_varint(1, fid) + _field_varint(2, s(name)) + _field_varint(3, s(name)))
    body += _field_varint(9, totals.start_ns)
    body += _field_varint(10, max(time.time_ns() - totals.start_ns, 0))
    # period: what one sample stands for (1/freq s of CPU when sampled; else one unit)
    cpu = next((vt for vt in totals.value_types if vt.field == "cpu_ns"), None)
    body += _field_bytes(11, value_type(cpu or totals.value_types[0]))
    body += _field_varint(12, totals.period_ns if cpu else 1)
    body += _field_varint(14, s(totals.value_types[0].type))  # default_sample_type
    for text in strings:  # last: every string is interned by now; insertion order == index
        body += _field_bytes(6, text.encode())
    return bytes(body)


def write_pprof(totals: StackTotals, path: Path) -> None:
    path.write_bytes(gzip.compress(pprof_bytes(totals)))


WRITERS = {"folded": write_folded, "flamegraph": write_flamegraph, "speedscope": write_speedscope,
           "pprof": write_pprof}

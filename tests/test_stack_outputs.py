"""The files of a stack run (folded, flame graph SVG, speedscope, pprof) agree on the
total weight; the pprof file is read back with a protobuf wire-format decoder written
here; the SVG opens in headless Chromium and its script runs."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfscope.exporters.stack_outputs import (
    StackOutputs,
    flamegraph_svg,
    parse_folded,
    pprof_bytes,
    speedscope_doc,
)

# ---- readers, independent of the writers --------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode_message(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Protocol buffers wire format: (field number, varint or bytes) in order."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            ln, i = _varint(buf, i)
            val, i = buf[i:i + ln], i + ln
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((num, val))
    return out


def _packed(buf: bytes) -> list[int]:
    vals, i = [], 0
    while i < len(buf):
        v, i = _varint(buf, i)
        vals.append(v)
    return vals


def read_profile(data: bytes) -> dict:
    """profile.proto -> {"samples": [(frames leaf first, [values])], "sample_types": [(type,
    unit)], "period_type": (type, unit), "period": int, "default_sample_type": str}."""
    msg = decode_message(data)
    strings = [v.decode() for n, v in msg if n == 6]
    funcs = {}
    for n, v in msg:
        if n == 5:
            f = dict(decode_message(v))
            funcs[f[1]] = strings[f[2]]
    locs = {}
    for n, v in msg:
        if n == 4:
            loc = decode_message(v)
            lid = dict(loc)[1]
            line = dict(decode_message(dict(loc)[4]))
            locs[lid] = funcs[line[1]]
    samples = []
    for n, v in msg:
        if n == 2:
            s = decode_message(v)
            ids = _packed(dict(s)[1])
            samples.append(([locs[i] for i in ids], _packed(dict(s)[2])))

    def value_type(buf: bytes) -> tuple[str, str]:
        vt = dict(decode_message(buf))
        return strings[vt[1]], strings[vt[2]]

    top = dict(msg)
    return {"samples": samples, "sample_types": [value_type(v) for n, v in msg if n == 1],
            "period_type": value_type(top[11]) if 11 in top else None, "period": top.get(12),
            "default_sample_type": strings[top[14]] if 14 in top else None}


def read_pprof(data: bytes) -> tuple[list[tuple[list[str], int]], list[str]]:
    """profile.proto -> ([(frames leaf first, first value)], sample type names)."""
    prof = read_profile(data)
    return [(frames, values[0]) for frames, values in prof["samples"]], [t for t, _ in prof["sample_types"]]


def totals_of_files(folded: Path, svg: Path, speedscope: Path, pprof: Path) -> dict[str, int]:
    svg_text = svg.read_text()
    doc = json.loads(speedscope.read_text())
    samples, _ = read_pprof(gzip.decompress(pprof.read_bytes()))
    return {
        "folded": sum(parse_folded(folded.read_text()).values()),
        "svg": int(re.search(r'data-total="(\d+)"', svg_text).group(1)),
        "speedscope": sum(sum(p["weights"]) for p in doc["profiles"]),
        "pprof": sum(v for _, v in samples),
    }


def svg_runs_in_chromium(svg: Path, tmp_path: Path) -> str:
    """The DOM after Chromium loaded the SVG and ran its script."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("no chromium")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chr'}",
                        "--dump-dom", svg.resolve().as_uri()], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


# ---- the writers on a known set of stacks -----------------------------------------------------

def _known() -> StackOutputs:
    out = StackOutputs(unit="samples", title="known")
    out.add("app", 10, 11, None, ["main", "hot_a"], 75)
    out.add("app", 10, 12, None, ["main", "hot_b"], 25)
    out.add("app", 10, 11, None, ["main", "a;b <c>", "x_[k]"], 3)
    out.add("kworker/0:1", 20, 20, None, ["worker_thread_[k]"], 7)
    return out


def test_every_output_file_agrees_on_the_total(tmp_path):
    out = _known()
    paths = {k: tmp_path / f"p.{k}" for k in ("folded", "flamegraph", "speedscope", "pprof")}
    out.paths = {k: str(v) for k, v in paths.items()}
    out.write()
    totals = totals_of_files(paths["folded"], paths["flamegraph"], paths["speedscope"], paths["pprof"])
    assert totals == {"folded": 110, "svg": 110, "speedscope": 110, "pprof": 110}


def test_folded_lines_put_the_command_at_the_root():
    stacks = parse_folded("".join(line + "\n" for line in __import__(
        "bpfscope.exporters.stack_outputs", fromlist=["folded_lines"]).folded_lines(_known())))
    assert stacks[("app", "main", "hot_a")] == 75
    assert stacks[("app", "main", "a:b <c>", "x_[k]")] == 3  # ';' cannot appear inside a frame


def test_offcpu_folded_has_the_state_under_the_command():
    out = StackOutputs(unit="nanoseconds")
    out.add("sleeper", 1, 1, "sleep", ["main", "clock_nanosleep"], 2_000_000_000)
    assert out.folded() == {("sleeper", "[sleep]", "main", "clock_nanosleep"): 2_000_000_000}


def test_pprof_reads_back_with_leaf_first_locations_and_sample_type():
    samples, types = read_pprof(pprof_bytes(_known()))
    assert types == ["samples"]  # no mode: the weight alone
    got = {tuple(frames): v for frames, v in samples}
    assert got[("hot_a", "main", "app")] == 75
    assert got[("worker_thread_[k]", "kworker/0:1")] == 7


# mode -> pprof sample types (type, unit) and speedscope's unit
UNITS = {
    "cpu": ([("samples", "count"), ("cpu", "nanoseconds")], "none"),
    "load": ([("samples", "count"), ("cpu", "nanoseconds")], "none"),
    "offcpu": ([("offcpu", "nanoseconds"), ("blocks", "count")], "nanoseconds"),
    "block": ([("device_time", "nanoseconds"), ("requests", "count"), ("io", "bytes")], "nanoseconds"),
    "mem": ([("inuse_space", "bytes"), ("inuse_objects", "count")], "bytes"),
    "io": ([("io", "bytes"), ("calls", "count"), ("device_time", "nanoseconds")], "bytes"),
}


@pytest.mark.parametrize("mode", sorted(UNITS))
def test_pprof_and_speedscope_say_the_unit_of_each_mode(mode):
    from bpfscope.exporters.stack import MODES

    values = {"count": 10, "ns": 5_000_000, "bytes": 40_960, "outstanding_bytes": 40_960, "outstanding_count": 10}
    out = StackOutputs(unit=MODES[mode].unit, mode=mode, freq=100 if mode in ("cpu", "load") else None)
    out.add("app", 10, 11, None, ["main", "f"], values[MODES[mode].weight], values)
    prof = read_profile(pprof_bytes(out))
    types, unit = UNITS[mode]
    assert prof["sample_types"] == types
    assert prof["default_sample_type"] == types[0][0]
    # every value of the sample, in the order of the types
    expect = {("samples", "count"): 10, ("cpu", "nanoseconds"): 10 * 10_000_000, ("blocks", "count"): 10,
              ("requests", "count"): 10, ("calls", "count"): 10, ("inuse_objects", "count"): 10}
    expect.update({t: 5_000_000 for t in types if t[1] == "nanoseconds" and t[0] != "cpu"})
    expect.update({t: 40_960 for t in types if t[1] == "bytes"})
    assert prof["samples"] == [(["f", "main", "app"], [expect[t] for t in types])]
    if mode in ("cpu", "load"):
        assert (prof["period_type"], prof["period"]) == (("cpu", "nanoseconds"), 10_000_000)
    assert {p["unit"] for p in speedscope_doc(out)["profiles"]} == {unit}


def test_cpu_pprof_without_a_known_frequency_has_no_cpu_time():
    out = StackOutputs(unit="samples", mode="cpu")
    out.add("app", 10, 11, None, ["main"], 3, {"count": 3})
    prof = read_profile(pprof_bytes(out))
    assert prof["sample_types"] == [("samples", "count")] and prof["samples"][0][1] == [3]


def test_speedscope_profiles_per_process_index_shared_frames():
    doc = speedscope_doc(_known())
    names = [f["name"] for f in doc["shared"]["frames"]]
    prof = next(p for p in doc["profiles"] if p["name"] == "app (10)")
    stacks = {tuple(names[i] for i in s): w for s, w in zip(prof["samples"], prof["weights"])}
    assert stacks[("main", "hot_a")] == 75 and prof["endValue"] == 103


def test_flamegraph_svg_widths_follow_the_weights():
    svg = flamegraph_svg({("app", "main", "hot_a"): 75, ("app", "main", "hot_b"): 25}, width=1020)
    widths = {m.group(1): float(m.group(2)) for m in
              re.finditer(r'data-n="([^"]+)"[^>]*>.*?<rect x="[\d.]+" y="\d+" width="([\d.]+)"', svg)}
    assert widths["all"] == pytest.approx(1000)
    assert widths["hot_a"] == pytest.approx(750) and widths["hot_b"] == pytest.approx(250)


def test_flamegraph_svg_opens_in_headless_chromium_and_its_script_runs(tmp_path):
    path = tmp_path / "f.svg"
    path.write_text(flamegraph_svg(_known().folded(), title="known"))
    dom = svg_runs_in_chromium(path, tmp_path)
    assert 'data-ready="1"' in dom  # the last line of the script ran without an error
    assert "hot_a" in dom

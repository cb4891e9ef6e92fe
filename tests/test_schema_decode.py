"""The shared record validator and the label decoders, each alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from bpfscope.decode import c_string, syscall_name, syscall_number
from bpfscope.schema import describe_error, make_record, validate_records

GOOD = make_record("system", "syscall", pid=1, comm="init", labels={"syscall": "read"}, values={"count": 3})


def _error(record: dict) -> str:
    with pytest.raises(ValidationError) as exc:
        validate_records([GOOD, record])
    return describe_error(exc.value)


def test_a_good_record_validates():
    (rec,) = validate_records([GOOD])
    assert rec.v == 1 and rec.values == {"count": 3}


@pytest.mark.parametrize("change,message", [
    ({"v": 2}, "records[1].v: Input should be 1"),
    ({"ts": "1"}, "records[1].ts: Input should be a valid integer"),
    ({"ts": -5}, "records[1].ts: Input should be greater than or equal to 0"),
    ({"domain": "disk"}, "records[1].domain: Input should be"),
    ({"pid": 1.5}, "records[1].pid"),
    ({"labels": {"a": 1}}, "records[1].labels.a: Input should be a valid string"),
    ({"values": {"x": [1]}}, "records[1].values.x"),
    ({"stack": "main"}, "records[1].stack: Input should be a valid list"),
    ({"extra": 1}, "records[1].extra: Extra inputs are not permitted"),
])
def test_a_bad_field_is_named(change, message):
    assert _error({**GOOD, **change}).startswith(message)


def test_a_missing_field_is_named():
    rec = dict(GOOD)
    del rec["host"]
    assert _error(rec) == "records[1].host: Field required"


def test_bool_is_not_an_int():
    assert "records[1].pid" in _error({**GOOD, "pid": True})


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 numbers")
def test_syscall_names_follow_the_uapi_table():
    assert syscall_name(0) == "read" and syscall_name(110) == "getppid" and syscall_name(39) == "getpid"
    assert syscall_number("getppid") == 110


def test_unknown_syscall_has_a_name_not_a_bare_number():
    assert syscall_name(99999) == "syscall_99999"


def test_c_string_stops_at_nul():
    assert c_string(b"bash\0garbage") == "bash"
    assert c_string([104, 105, 0, 120]) == "hi"


def test_missing_clang_is_one_clear_line():
    bpf_dir = Path(__file__).resolve().parent.parent / "bpf"
    proc = subprocess.run(["make", "-s", "-C", str(bpf_dir), "check", "CLANG="], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "clang not found" in proc.stdout + proc.stderr

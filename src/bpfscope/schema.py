"""The unified record, schema version 1 (see docs/design and ARCHITECTURE.md).

One validator, shared by the exporters (before sending) and the collector (on ingest).
Strict types: "1" is not an int and 1.5 is not a ts; a bad record is named by its field.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

SCHEMA_VERSION = 1
DOMAINS = ("net", "stack", "proc", "lb", "fuse", "system")

Number = StrictInt | StrictFloat
# ts, pid and tid are stored as 64-bit integers (SQLite INTEGER, PostgreSQL BIGINT).
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1]
    ts: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
    host: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    domain: Literal["net", "stack", "proc", "lb", "fuse", "system"]
    kind: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    pid: Int64 | None = None
    tid: Int64 | None = None
    comm: StrictStr | None = None
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    values: dict[StrictStr, Number | StrictStr] = Field(default_factory=dict)
    stack: list[StrictStr] | None = None


RecordList = TypeAdapter(list[Record])


def describe_error(exc: ValidationError, prefix: str = "records") -> str:
    """One line naming the first bad field, e.g. 'records[3].ts: Input should be a valid integer'."""
    err = exc.errors()[0]
    path = prefix
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{path}: {err['msg']}"


def validate_records(items: list) -> list[Record]:
    """Validate a list of record dicts; raises ValidationError naming the bad field."""
    return RecordList.validate_python(items)


def now_ns() -> int:
    return time.time_ns()


def host_name() -> str:
    """The node name records carry: $BPFSCOPE_HOST (set by --host) or the kernel's nodename."""
    return os.environ.get("BPFSCOPE_HOST") or os.uname().nodename


def make_record(domain: str, kind: str, *, ts: int | None = None, pid: int | None = None,
                tid: int | None = None, comm: str | None = None, labels: dict | None = None,
                values: dict | None = None, stack: list[str] | None = None) -> dict:
    """Build a record dict of schema v1 (exporters send dicts; the collector validates)."""
    return {
        "v": SCHEMA_VERSION,
        "ts": ts if ts is not None else time.time_ns(),
        "host": host_name(),
        "domain": domain,
        "kind": kind,
        "pid": pid,
        "tid": tid,
        "comm": comm,
        "labels": labels or {},
        "values": values or {},
        "stack": stack,
    }

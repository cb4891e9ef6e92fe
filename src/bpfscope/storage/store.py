"""Store: records in any SQLAlchemy database (SQLite by default, PostgreSQL for many nodes).

Core, not ORM: ingest is a hot path (one executemany per batch) and the queries are
plain filtered selects, so there is nothing for an ORM to do but cost time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    CursorResult,
    Text,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from bpfscope.schema import SCHEMA_VERSION, Record
from bpfscope.storage.models import metadata, records

AGGREGATES = ("avg", "max", "min", "sum", "count")
# Retention deletes in chunks so that a big purge never holds SQLite's write lock for long.
RETENTION_CHUNK = 50_000
# SQLite WAL checkpoints run in a thread of their own, off the ingest path (they were a
# fifth of the insert time); the writer checkpoints itself only if that thread falls behind.
CHECKPOINT_INTERVAL_S = 0.5


class StoreError(Exception):
    """A database problem, told in one line (bad URL, unreachable server, failed write)."""


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy wraps the driver error and appends SQL and a docs link; the driver's
    # own first line is what a person needs.
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _check_key(name: str, what: str) -> str:
    # Keys end up inside a JSON path ('$."key"'); refuse the characters that would break out.
    if not name or any(c in name for c in '"\\') or not name.isprintable():
        raise ValueError(f"bad {what} {name!r}: use letters, digits and _ . : -")
    return name


class Store:
    def __init__(self, url: str, retention_s: float | None = None, max_rows: int | None = None) -> None:
        self.retention_s = retention_s if retention_s and retention_s > 0 else None
        self.max_rows = max_rows if max_rows and max_rows > 0 else None
        self._engine = self._open(url)
        self.dialect = self._engine.dialect.name
        memory = self.dialect == "sqlite" and self._engine.url.database in (None, "", ":memory:")
        # SQLite has one writer: serialise our own writers instead of letting them spin on
        # busy_timeout. An in-memory DB is one shared connection, so readers wait too.
        lock: Any = threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        self._write_lock = lock
        self._read_lock = lock if memory else contextlib.nullcontext()
        self._insert = insert(records)
        self._closed = threading.Event()
        if self.dialect == "sqlite" and not memory:
            threading.Thread(target=self._checkpoint_loop, name="bpfscope-sqlite-checkpoint", daemon=True).start()

    # -- opening -------------------------------------------------------------------------

    @staticmethod
    def _open(url: str) -> Engine:
        try:
            parsed = make_url(url)
        except Exception as exc:  # ArgumentError, ValueError: not a URL at all
            raise StoreError(f"bad --db URL {url!r}: {_first_line(exc)}") from None
        # Plain postgresql:// means psycopg2 to SQLAlchemy; we ship psycopg 3.
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        shown = parsed.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
        if parsed.drivername.startswith("sqlite"):
            database = parsed.database or ""
            if database in ("", ":memory:"):
                kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                kwargs["connect_args"] = {"check_same_thread": False}
                if not database.startswith("file:"):
                    try:
                        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise StoreError(f"cannot create the directory for {shown}: {exc.strerror}") from None
        else:
            kwargs["pool_pre_ping"] = True
            if parsed.drivername.startswith("postgresql") and "connect_timeout" not in parsed.query:
                kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            engine = create_engine(parsed, **kwargs)
        except Exception as exc:  # NoSuchModuleError, a missing driver module, bad arguments
            raise StoreError(f"bad --db URL {shown!r}: {_first_line(exc)}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            metadata.create_all(engine)
        except Exception as exc:
            engine.dispose()
            raise StoreError(f"cannot open database {shown}: {_first_line(exc)}") from None
        return engine

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._closed.set()
        self._engine.dispose()

    def _checkpoint_loop(self) -> None:
        # PASSIVE never waits for readers or writers; sqlite3 releases the GIL meanwhile.
        while not self._closed.wait(CHECKPOINT_INTERVAL_S):
            try:
                with self._engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except SQLAlchemyError:
                pass  # the next round retries; the writer's own autocheckpoint is the backstop

    # -- writing -------------------------------------------------------------------------

    def insert(self, batch: Iterable[Record | Mapping[str, Any]]) -> int:
        """Store a batch in one transaction: all of it or, on error, none of it."""
        if self.dialect == "sqlite":
            # Hot path: pre-serialised tuples straight to sqlite3's executemany skip
            # SQLAlchemy's per-row bind processing (a third of the ingest time).
            rows: list = [_sqlite_row(r) for r in batch]
            run = lambda conn: conn.exec_driver_sql(_SQLITE_INSERT, rows)  # noqa: E731
        else:
            rows = [_row(r) for r in batch]
            run = lambda conn: conn.execute(self._insert, rows)  # noqa: E731
        if not rows:
            return 0
        try:
            with self._write_lock, self._engine.begin() as conn:
                run(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"insert failed: {_first_line(exc)}") from None
        return len(rows)

    def apply_retention(self) -> int:
        """Delete records older than retention_s and the oldest beyond max_rows; returns how many."""
        deleted = 0
        try:
            if self.retention_s is not None:
                cutoff = time.time_ns() - int(self.retention_s * 1e9)
                while True:
                    ids = select(records.c.id).where(records.c.ts < cutoff).limit(RETENTION_CHUNK)
                    n = self._delete_ids(ids)
                    deleted += n
                    if n < RETENTION_CHUNK:
                        break
            if self.max_rows is not None:
                excess = self.count() - self.max_rows
                while excess > 0:
                    chunk = min(excess, RETENTION_CHUNK)
                    ids = select(records.c.id).order_by(records.c.ts.asc(), records.c.id.asc()).limit(chunk)
                    n = self._delete_ids(ids)
                    deleted += n
                    excess -= chunk
                    if n == 0:
                        break
        except SQLAlchemyError as exc:
            raise StoreError(f"retention failed: {_first_line(exc)}") from None
        return deleted

    def _delete_ids(self, ids_select) -> int:
        with self._write_lock, self._engine.begin() as conn:
            result: CursorResult = conn.execute(delete(records).where(records.c.id.in_(ids_select.scalar_subquery())))
            return result.rowcount

    # -- reading -------------------------------------------------------------------------

    def count(self) -> int:
        return self._scalar(select(func.count()).select_from(records))

    def query(self, domain: str | None = None, kind: str | None = None, host: str | None = None,
              pid: int | None = None, comm: str | None = None, labels: dict[str, str] | None = None,
              since_ns: int | None = None, until_ns: int | None = None, limit: int = 1000,
              order: str = "desc") -> list[dict]:
        """Records matching every given filter, as schema-v1 dicts, newest first unless order='asc'."""
        if order not in ("asc", "desc"):
            raise ValueError(f"bad order {order!r}: use asc or desc")
        if limit < 0:
            raise ValueError("limit must be >= 0")
        direction = (lambda c: c.asc()) if order == "asc" else (lambda c: c.desc())
        c = records.c
        stmt = (select(c.ts, c.host, c.domain, c.kind, c.pid, c.tid, c.comm, c.labels, c["values"], c.stack)
                .where(*_filters(domain, kind, host, pid, comm, labels, since_ns, until_ns))
                .order_by(direction(c.ts), direction(c.id))
                .limit(limit))
        rows = self._all(stmt)
        return [
            {"v": SCHEMA_VERSION, "ts": ts, "host": host_, "domain": domain_, "kind": kind_, "pid": pid_,
             "tid": tid, "comm": comm_, "labels": labels_ or {}, "values": values or {}, "stack": stack}
            for ts, host_, domain_, kind_, pid_, tid, comm_, labels_, values, stack in rows
        ]

    def series(self, field: str, domain: str | None = None, kind: str | None = None, host: str | None = None,
               pid: int | None = None, comm: str | None = None, labels: dict[str, str] | None = None,
               since_ns: int | None = None, until_ns: int | None = None, bucket_s: float = 60,
               agg: str = "avg", group_by: str | None = None) -> list[dict]:
        """values[field] aggregated per time bucket (and per label value): [{time ms, group, value}]."""
        if agg not in AGGREGATES:
            raise ValueError(f"bad agg {agg!r}: use one of {', '.join(AGGREGATES)}")
        _check_key(field, "field")
        bucket_ns = int(bucket_s * 1e9)
        if bucket_ns < 1_000_000:
            raise ValueError("bucket must be at least 0.001 s")
        c = records.c
        value = self._numeric(field)
        group = c.labels[_check_key(group_by, "group_by")].as_string() if group_by else literal_column("NULL")
        # The bucket width is a literal, not a bind parameter: PostgreSQL must see the same
        # expression in SELECT and GROUP BY. The subquery keeps that true for the label too.
        bucket = (c.ts // literal_column(str(bucket_ns))).label("bucket")
        inner = (select(bucket, group.label("grp"), value.label("val"))
                 .where(*_filters(domain, kind, host, pid, comm, labels, since_ns, until_ns))
                 .where(value.is_not(None))
                 .subquery())
        stmt = (select(inner.c.bucket, inner.c.grp, getattr(func, agg)(inner.c.val))
                .group_by(inner.c.bucket, inner.c.grp)
                .order_by(inner.c.bucket, inner.c.grp))
        return [{"time": b * bucket_ns // 1_000_000, "group": g, "value": v} for b, g, v in self._all(stmt)]

    def stacks(self, field: str, domain: str | None = None, kind: str | None = None, host: str | None = None,
               pid: int | None = None, comm: str | None = None, labels: dict[str, str] | None = None,
               since_ns: int | None = None, until_ns: int | None = None,
               latest: bool = False) -> list[tuple[list[str], Any]]:
        """(stack, sum of values[field]) per distinct stack of the matching records that have one.
        latest: only each host's newest matching records (those of its newest timestamp), for
        snapshots such as alloc_stack's outstanding bytes, which a sum over intervals would
        count once per interval."""
        c = records.c
        value = self._numeric(_check_key(field, "field"))
        where = _filters(domain, kind, host, pid, comm, labels, since_ns, until_ns)
        where += [c.stack.is_not(None), value.is_not(None)]
        if latest:
            newest = select(c.host, func.max(c.ts).label("ts")).where(*where).group_by(c.host).subquery()
            where += [c.host == newest.c.host, c.ts == newest.c.ts]
        # Grouped by the stored JSON text (PostgreSQL's json type has no equality); the same
        # serialiser wrote every row, so equal stacks have equal text.
        text = cast(c.stack, Text)
        stmt = select(text, func.sum(value)).where(*where).group_by(text)
        out = []
        for text_, total in self._all(stmt):
            frames = orjson.loads(text_) if text_ else None
            if isinstance(frames, list):
                out.append((frames, total))
        return out

    def streams(self, since_ns: int | None = None, until_ns: int | None = None,
                host: str | None = None) -> list[tuple[str, str, str, int, int]]:
        """(host, domain, kind, record count, newest ts) per group of records in the window."""
        c = records.c
        stmt = (select(c.host, c.domain, c.kind, func.count(), func.max(c.ts))
                .where(*_filters(None, None, host, None, None, None, since_ns, until_ns))
                .group_by(c.host, c.domain, c.kind))
        return [tuple(row) for row in self._all(stmt)]

    def _numeric(self, field: str):
        # values may hold strings too; aggregate only the numbers (NULL otherwise), and
        # never let PostgreSQL try to CAST a string to float.
        element = records.c["values"][field]
        if self.dialect == "sqlite":
            path = f'$."{field}"'
            return case((func.json_type(records.c["values"], path).in_(("integer", "real")),
                         func.json_extract(records.c["values"], path)))
        if self.dialect == "postgresql":
            return case((func.json_typeof(element) == "number", element.as_float()))
        return element.as_float()

    def _all(self, stmt) -> list:
        try:
            with self._read_lock, self._engine.connect() as conn:
                return conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"query failed: {_first_line(exc)}") from None

    def _scalar(self, stmt) -> Any:
        try:
            with self._read_lock, self._engine.connect() as conn:
                return conn.execute(stmt).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(f"query failed: {_first_line(exc)}") from None


def _filters(domain, kind, host, pid, comm, labels, since_ns, until_ns) -> list:
    c = records.c
    where = []
    if domain is not None:
        where.append(c.domain == domain)
    if kind is not None:
        where.append(c.kind == kind)
    if host is not None:
        where.append(c.host == host)
    if pid is not None:
        where.append(c.pid == pid)
    if comm is not None:
        where.append(c.comm == comm)
    for key, value in (labels or {}).items():
        where.append(c.labels[_check_key(key, "label")].as_string() == value)
    if since_ns is not None:
        where.append(c.ts >= since_ns)
    if until_ns is not None:
        where.append(c.ts <= until_ns)
    return where


def _row(r: Record | Mapping[str, Any]) -> dict:
    if isinstance(r, Record):
        return {"ts": r.ts, "host": r.host, "domain": r.domain, "kind": r.kind, "pid": r.pid, "tid": r.tid,
                "comm": r.comm, "labels": r.labels, "values": r.values, "stack": r.stack}
    return {"ts": r["ts"], "host": r["host"], "domain": r["domain"], "kind": r["kind"], "pid": r.get("pid"),
            "tid": r.get("tid"), "comm": r.get("comm"), "labels": r.get("labels") or {},
            "values": r.get("values") or {}, "stack": r.get("stack")}


_SQLITE_INSERT = (
    "INSERT INTO records (ts, host, domain, kind, pid, tid, comm, labels, \"values\", stack) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sqlite_row(r: Record | Mapping[str, Any]) -> tuple:
    dumps = orjson.dumps
    if isinstance(r, Record):
        stack = r.stack
        return (r.ts, r.host, r.domain, r.kind, r.pid, r.tid, r.comm, dumps(r.labels).decode(),
                dumps(r.values).decode(), None if stack is None else dumps(stack).decode())
    stack = r.get("stack")
    return (r["ts"], r["host"], r["domain"], r["kind"], r.get("pid"), r.get("tid"), r.get("comm"),
            dumps(r.get("labels") or {}).decode(), dumps(r.get("values") or {}).decode(),
            None if stack is None else dumps(stack).decode())


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL under WAL: durable across an application crash, at most the last commits
    # lost on power loss; several times faster than FULL for small transactions.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    # The checkpoint thread keeps the WAL short; these bound it if that thread lags.
    cur.execute("PRAGMA wal_autocheckpoint=16384")
    cur.execute("PRAGMA journal_size_limit=67108864")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()

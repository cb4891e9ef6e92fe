"""The collector's HTTP API: ingest, query, series, overview, flame graphs, timelines, health,
/metrics and the built-in web page (index at /, its modules and styles under /web/)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from bpfscope import __version__
from bpfscope.collector.formats import flame_rows, flame_tree, overview_streams, timeline_rows
from bpfscope.collector.ingest import BodyError, decode_batch, too_large
from bpfscope.collector.metrics import IngestStats, make_registry
from bpfscope.storage import AGGREGATES, Store, StoreError
from bpfscope.timeparse import parse_duration, parse_time

MiB = 1024 * 1024
Labels = Annotated[list[str], Query()]  # label=key:value, repeatable
From = Annotated[str | None, Query(alias="from")]
MAX_LIMIT = 100_000
MAX_SERIES = 1000
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
INDEX_HTML = WEB_DIR / "index.html"

log = logging.getLogger("bpfscope.collector")


def _json(obj, status: int = 200) -> Response:
    # orjson straight to bytes: FastAPI's jsonable_encoder walk costs more than the query.
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class ParamError(ValueError):
    pass


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        sep = ":" if ":" in pair else "="
        key, found, value = pair.partition(sep)
        if not found or not key:
            raise ParamError(f"bad label {pair!r}: use label=key:value")
        out[key] = value
    return out


def _bucket_seconds(text: str) -> float:
    """Seconds ('60', '2.5') or a Grafana interval ('1m', '500ms', '$__interval' expanded)."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except ValueError as exc:
            raise ParamError(f"bucket: {exc}") from None
    return value  # the store refuses buckets under 1 ms


def _time(name: str, text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ParamError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Filters:
    """The record filters every query endpoint shares, as the client sent them."""

    domain: str | None
    kind: str | None
    host: str | None
    pid: int | None
    comm: str | None
    label: tuple[str, ...]
    from_: str | None
    to: str | None

    def store_kwargs(self) -> dict:
        """Keyword arguments for the Store's filters; raises ParamError on a bad label or time."""
        return {"domain": self.domain, "kind": self.kind, "host": self.host, "pid": self.pid, "comm": self.comm,
                "labels": _labels(list(self.label)), "since_ns": _time("from", self.from_),
                "until_ns": _time("to", self.to)}


def _filters(domain: str | None = None, kind: str | None = None, host: str | None = None, pid: str | None = None,
             comm: str | None = None, label: Labels = (), from_: From = None, to: str | None = None) -> Filters:
    # An empty parameter means "no filter": Grafana sends `host=` when a variable is All/empty.
    if pid is not None and pid.strip() and not pid.strip().lstrip("-").isdigit():
        raise RequestValidationError([{"loc": ("query", "pid"), "msg": "Input should be a valid integer"}])
    return Filters(domain or None, kind or None, host or None, int(pid) if pid and pid.strip() else None,
                   comm or None, tuple(x for x in label if x), from_, to)


Filtered = Annotated[Filters, Depends(_filters)]


class _WebFiles(StaticFiles):
    # Revalidate every time (ETag -> 304): after an upgrade no browser keeps an old module.
    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


async def _read_capped(request: Request, cap: int) -> bytes:
    """The raw body, or BodyError(413) beyond cap. Drains a moderately oversized body so the
    client reads the 413 instead of a reset connection; gives up draining at 2 x cap."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            if size > 2 * cap:
                break
            chunks.clear()
            continue
        chunks.append(chunk)
    if size > cap:
        raise too_large(cap)
    return b"".join(chunks)


def create_app(store: Store, max_body_bytes: int = 32 * MiB, retention_interval_s: float = 60.0) -> FastAPI:
    stats = IngestStats()
    registry = make_registry(store, stats)
    index_html = INDEX_HTML.read_text(encoding="utf-8") if INDEX_HTML.exists() else "<h1>bpfscope</h1>"

    async def retention_loop() -> None:
        # First pass at startup (a collector restarted on an old database trims it at once).
        while True:
            try:
                stats.retained(await run_in_threadpool(store.apply_retention))
            except Exception as exc:  # keep the loop alive; the next pass may succeed
                log.warning("bpfscope collector: retention: %s", exc)
            await asyncio.sleep(retention_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = None
        if store.retention_s is not None or store.max_rows is not None:
            task = asyncio.create_task(retention_loop())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="bpfscope collector", version=__version__, lifespan=lifespan)
    app.state.store = store
    app.state.stats = stats

    @app.exception_handler(RequestValidationError)
    async def bad_params(_request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
        return _error(400, f"bad parameter {name}: {err.get('msg')}")

    @app.post("/api/v1/records")
    async def ingest(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _read_capped(request, max_body_bytes)
            stored = await run_in_threadpool(_decode_and_store, body, request.headers.get("content-type"),
                                             request.headers.get("content-encoding"))
        except BodyError as exc:
            stats.rejected(exc.records, time.perf_counter() - started)
            return _error(exc.status, exc.message)
        stats.stored(stored, time.perf_counter() - started)
        return _json({"stored": stored})

    def _decode_and_store(body: bytes, content_type: str | None, content_encoding: str | None) -> int:
        # In a worker thread: parsing, validation and the SQLite write never block the loop.
        batch = decode_batch(body, content_type, content_encoding, max_body_bytes)
        try:
            return store.insert(batch)
        except StoreError as exc:
            raise BodyError(503, str(exc), records=len(batch)) from None

    @app.get("/api/v1/records")
    def get_records(f: Filtered, limit: int = 1000, order: str = "desc") -> Response:
        try:
            _check_limit(limit)
            if order not in ("asc", "desc"):
                raise ParamError(f"bad order {order!r}: use asc or desc")
            rows = store.query(**f.store_kwargs(), limit=limit, order=order)
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        for row in rows:
            row["time"] = row["ts"] // 1_000_000  # epoch ms, what Grafana's Infinity reads
        return _json(rows)

    @app.get("/api/v1/series")
    def get_series(f: Filtered, field: str, bucket: str = "60", agg: str = "avg",
                   group_by: str | None = None) -> Response:
        try:
            bucket_s = _bucket_seconds(bucket)
            if agg not in AGGREGATES:
                raise ParamError(f"bad agg {agg!r}: use one of {', '.join(AGGREGATES)}")
            rows = store.series(field, **f.store_kwargs(), bucket_s=bucket_s, agg=agg, group_by=group_by or None)
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        return _json(rows)

    @app.get("/api/v1/overview")
    def get_overview(from_: From = None, to: str | None = None, host: str | None = None) -> Response:
        """Per (host, domain, kind) in the window (default the last 5 minutes): records, rate, last
        seen; the totals; and this collector's own ingest counters since it started."""
        now = time.time_ns()
        try:
            since = _time("from", from_ or "-5m")
            until = _time("to", to) or now
            if since >= until:
                raise ParamError("from must be before to")
            streams = overview_streams(store.streams(since, until, host), since, until, now)
            stored = store.count()
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        return _json({
            "from": since // 1_000_000, "to": until // 1_000_000, "window_s": round((until - since) / 1e9, 3),
            "streams": streams,
            "totals": {"hosts": len({s["host"] for s in streams}), "streams": len(streams),
                       "records": sum(s["records"] for s in streams),
                       "rate_per_s": round(sum(s["rate_per_s"] for s in streams), 3)},
            "collector": {"version": __version__, "db": store.dialect, "stored_records": stored, **stats.snapshot()},
        })

    @app.get("/api/v1/flamegraph")
    def get_flamegraph(f: Filtered, field: str = "count",
                       format_: Annotated[str, Query(alias="format")] = "nested-set",
                       latest: bool = False) -> Response:
        """The stacks of the matching records merged, weighted by values[field].

        format=nested-set (default): Grafana's flame graph frame, rows {level, value, self, label}
        in depth-first order, root "total" at level 0. format=tree: nested {name, value, self,
        children} for the built-in page. latest=true: only each host's newest matching records,
        for snapshot kinds (alloc_stack: what is outstanding, not a sum over intervals)."""
        try:
            if format_ not in ("nested-set", "tree"):
                raise ParamError(f"bad format {format_!r}: use nested-set or tree")
            tree = flame_tree(store.stacks(field, **f.store_kwargs(), latest=latest))
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        if format_ == "nested-set":
            return _json(flame_rows(tree))
        # The stdlib encoder: orjson stops at 254 levels of nesting, ~126 frames of a tree.
        try:
            body = json.dumps(tree, separators=(",", ":"), check_circular=False)
        except RecursionError:
            return _error(400, "stacks too deep for format=tree: use format=nested-set")
        return Response(body, media_type="application/json")

    @app.get("/api/v1/timeline")
    def get_timeline(f: Filtered, series: str = "comm:tid", state: str = "state", limit: int = 5000,
                     max_series: int = 50) -> Response:
        """State-timeline rows {time (epoch ms), <series>: state} of the newest `limit` records of
        a kind (default kind thread_state); see formats.timeline_rows for the record shape.
        series names the columns: ':'-separated record fields or label keys (default comm:tid)."""
        try:
            _check_limit(limit)
            if not 1 <= max_series <= MAX_SERIES:
                raise ParamError(f"max_series must be between 1 and {MAX_SERIES}")
            if not series or not all(series.split(":")):
                raise ParamError(f"bad series {series!r}: use record fields or label keys joined by ':'")
            if not state:
                raise ParamError("state must name the label that holds the state")
            kwargs = f.store_kwargs()
            kwargs["kind"] = kwargs["kind"] or "thread_state"
            records = store.query(**kwargs, limit=limit, order="desc")
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        records.reverse()
        return _json(timeline_rows(records, series=series, state=state, max_series=max_series))

    @app.get("/api/v1/health")
    def health() -> Response:
        try:
            count = store.count()
        except StoreError as exc:
            return _json({"status": "error", "error": str(exc), "db": store.dialect, "version": __version__}, 503)
        return _json({"status": "ok", "records": count, "db": store.dialect, "version": __version__})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(index_html, headers={"Cache-Control": "no-cache"})

    app.mount("/web", _WebFiles(directory=WEB_DIR, check_dir=False), name="web")
    return app


def _check_limit(limit: int) -> None:
    if not 0 <= limit <= MAX_LIMIT:
        raise ParamError(f"limit must be between 0 and {MAX_LIMIT}")

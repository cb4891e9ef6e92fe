"""The collector's HTTP API: ingest, query, series, health, /metrics and the web page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from bpfscope import __version__
from bpfscope.collector.ingest import BodyError, decode_batch, too_large
from bpfscope.collector.metrics import IngestStats, make_registry
from bpfscope.storage import AGGREGATES, Store, StoreError
from bpfscope.timeparse import parse_time

MiB = 1024 * 1024
Labels = Annotated[list[str], Query()]  # label=key:value, repeatable
From = Annotated[str | None, Query(alias="from")]
MAX_LIMIT = 100_000
INDEX_HTML = Path(__file__).resolve().parent.parent / "web" / "index.html"

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


def _time(name: str, text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ParamError(f"{name}: {exc}") from None


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
    def get_records(domain: str | None = None, kind: str | None = None, host: str | None = None,
                    pid: int | None = None, comm: str | None = None, label: Labels = (),
                    from_: From = None, to: str | None = None,
                    limit: int = 1000, order: str = "desc") -> Response:
        try:
            if not 0 <= limit <= MAX_LIMIT:
                raise ParamError(f"limit must be between 0 and {MAX_LIMIT}")
            if order not in ("asc", "desc"):
                raise ParamError(f"bad order {order!r}: use asc or desc")
            rows = store.query(domain=domain, kind=kind, host=host, pid=pid, comm=comm, labels=_labels(label),
                               since_ns=_time("from", from_), until_ns=_time("to", to), limit=limit, order=order)
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        for row in rows:
            row["time"] = row["ts"] // 1_000_000  # epoch ms, what Grafana's Infinity reads
        return _json(rows)

    @app.get("/api/v1/series")
    def get_series(field: str, domain: str | None = None, kind: str | None = None, host: str | None = None,
                   pid: int | None = None, comm: str | None = None, label: Labels = (),
                   from_: From = None, to: str | None = None,
                   bucket: float = 60, agg: str = "avg", group_by: str | None = None) -> Response:
        try:
            if agg not in AGGREGATES:
                raise ParamError(f"bad agg {agg!r}: use one of {', '.join(AGGREGATES)}")
            rows = store.series(field, domain=domain, kind=kind, host=host, pid=pid, comm=comm,
                                labels=_labels(label), since_ns=_time("from", from_), until_ns=_time("to", to),
                                bucket_s=bucket, agg=agg, group_by=group_by or None)
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, str(exc))
        return _json(rows)

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
        return HTMLResponse(index_html)

    return app

"""Running the collector: uvicorn in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import gc
import signal
import socket
import threading

import uvicorn

from bpfscope.collector.app import create_app
from bpfscope.storage import Store, StoreError
from bpfscope.timeparse import parse_duration

DEFAULT_LISTEN = "127.0.0.1:9380"
_NO_RETENTION = ("", "0", "off", "none", "never")


class ServeError(Exception):
    """A user error that stops the collector from starting, told in one line."""


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9380', '[::1]:9380', ':9380' (all interfaces), '9380' -> (host, port)."""
    text = listen.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad listen address {listen!r}: use [IPv6]:PORT, e.g. [::1]:9380")
    elif text.isdigit():
        host, port = "127.0.0.1", text
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"bad listen address {listen!r}: use HOST:PORT, e.g. 127.0.0.1:9380")
        host = host or "0.0.0.0"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad listen address {listen!r}: port must be 1-65535")
    return host, int(port)


def parse_retention(retention: str | None) -> float | None:
    """'7d' -> seconds; None, '0', 'off', 'none', 'never' -> keep everything."""
    if retention is None or retention.strip().lower() in _NO_RETENTION:
        return None
    return parse_duration(retention)


def bind(host: str, port: int) -> socket.socket:
    """Bind ourselves so that 'address in use' is our one-line error, not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(db_url: str, listen: str = DEFAULT_LISTEN, retention: str | None = "7d",
          max_rows: int | None = None) -> None:
    """Serve the collector in the foreground; returns after SIGINT/SIGTERM. Raises ServeError."""
    try:
        host, port = parse_listen(listen)
        retention_s = parse_retention(retention)
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    if max_rows is not None and max_rows < 0:
        raise ServeError(f"bad --max-rows {max_rows}: must be >= 0 (0 = no limit)")
    try:
        store = Store(db_url, retention_s=retention_s, max_rows=max_rows)
    except StoreError as exc:
        raise ServeError(str(exc)) from None
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(store), log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=10))
    _tune_gc()
    try:
        with _quiet_signals():
            server.run(sockets=[sock])
    finally:
        sock.close()
        store.close()


def _tune_gc() -> None:
    # A batch of 1000 records allocates thousands of tracked objects; with the default
    # thresholds the collector runs full GCs that walk every object of the imported
    # frameworks, ~40% of the ingest CPU. Freeze the startup heap, collect less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@contextlib.contextmanager
def _quiet_signals():
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the
    # handler it found; a no-op handler there turns the stop into a normal return (exit 0).
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Ring buffer polling with a Python callback that receives each record as bytes
(or as the ctypes struct given, built from BTF)."""

from __future__ import annotations

import ctypes
from typing import Callable

from . import libbpf as L
from .object import Map


class RingBuffer:
    def __init__(self, rb_map: Map, callback: Callable, record_type: type | None = None):
        self._callback = callback
        self._type = record_type
        self._error: BaseException | None = None

        def on_sample(_ctx, data, size):
            try:
                if self._type is not None:
                    self._callback(self._type.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(self._type))))
                else:
                    self._callback(ctypes.string_at(data, size))
                return 0
            except BaseException as exc:  # surface it after poll instead of losing it in C
                self._error = exc
                return -1

        self._c_callback = L.ring_buffer_sample_fn(on_sample)  # kept alive as long as self
        self.ptr = L.check_ptr(L.ring_buffer__new(rb_map.fd, self._c_callback, None, None),
                               f"ring buffer on map {rb_map.name}")

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to timeout_ms for records and hand each to the callback; returns how many."""
        n = L.ring_buffer__poll(self.ptr, timeout_ms)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if n < 0 and -n != 4:  # EINTR is a normal wake-up (a signal)
            L.check_int(n, "poll ring buffer")
        return max(n, 0)

    def consume(self) -> int:
        n = L.ring_buffer__consume(self.ptr)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return max(n, 0)

    def close(self) -> None:
        if self.ptr:
            L.ring_buffer__free(self.ptr)
            self.ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

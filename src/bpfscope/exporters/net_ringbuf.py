"""A BPF ring buffer of fixed-size records, read straight from its mmap'ed pages.

libbpf's ring_buffer__poll calls back into Python once per record (a ctypes callback:
microseconds each); at tens of thousands of connection closes per second that was most
of the exporter's CPU. The kernel's layout is simple and stable (kernel/bpf/ringbuf.c,
the same one libbpf reads): page 0 holds the consumer position (we write it), page 1 the
producer position, then the data pages, mapped twice in a row so a record that wraps
is still contiguous. Each record is an 8-byte header (u32 length with BUSY and DISCARD
bits, u32 page offset) and the sample, rounded up to 8 bytes. drain() copies everything
committed since the last call in one slice and hands back whole records.
"""

from __future__ import annotations

import mmap
import struct

BUSY_BIT, DISCARD_BIT = 1 << 31, 1 << 30
HDR_SIZE = 8
_U64 = struct.Struct("<Q")


class FixedRingReader:
    def __init__(self, map_fd: int, max_entries: int, record_size: int):
        if max_entries & (max_entries - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * max_entries, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._prod)[page:]
        self.mask = max_entries - 1
        self.record_size = record_size
        self.stride = (record_size + HDR_SIZE + 7) & ~7

    def drain(self) -> bytes:
        """Every committed record since the last call, each `stride` bytes (header first),
        discarded ones left out. Stops at the first record still being written."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        if cons >= prod:
            return b""
        start = cons & self.mask
        region = bytes(self._data[start: start + (prod - cons)])
        stride, size = self.stride, self.record_size
        whole = len(region) - len(region) % stride
        lens = memoryview(region)[:whole].cast("I")[:: stride // 4].tolist()
        good, skipped, used = [], False, 0
        for i, ln in enumerate(lens):
            if ln & BUSY_BIT:
                break
            if ln & DISCARD_BIT:
                skipped = True
            elif ln != size:
                raise ValueError(f"ring buffer record of {ln} bytes, expected {size}")
            else:
                good.append(i)
            used = (i + 1) * stride
        if used:
            _U64.pack_into(self._cons, 0, cons + used)
        if not skipped:
            return region[:used]
        return b"".join(region[i * stride:(i + 1) * stride] for i in good)

    def close(self) -> None:
        self._data.release()
        self._prod.close()
        self._cons.close()

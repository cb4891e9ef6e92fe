"""Kernel symbols from /proc/kallsyms (root sees the real addresses)."""

from __future__ import annotations

import bisect


FUNCTIONS = "tTwW"
DATA = "dDbBrR"  # static data: names a lock by its address


class Kallsyms:
    def __init__(self, path: str = "/proc/kallsyms", types: str = FUNCTIONS):
        rows = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in types:
                    continue
                addr = int(parts[0], 16)
                if addr:
                    rows.append((addr, parts[2]))
        rows.sort()
        self.addrs = [a for a, _ in rows]
        self.names = [n for _, n in rows]

    def __len__(self) -> int:
        return len(self.addrs)

    def lookup(self, addr: int) -> str | None:
        """The function containing addr, or None (below the first symbol or no symbols:
        addresses read as 0 without root)."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return None
        return self.names[i]

    def name_at(self, addr: int, max_offset: int = 4096) -> str | None:
        """The symbol addr lies in as name+0xoff, or None: at most max_offset past its start
        (data symbols have no sizes here) and never past the last symbol."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or i + 1 >= len(self.addrs) or addr - self.addrs[i] > max_offset:
            return None
        off = addr - self.addrs[i]
        return self.names[i] + (f"+0x{off:x}" if off else "")

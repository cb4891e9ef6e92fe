"""Kernel symbols from /proc/kallsyms (root sees the real addresses)."""

from __future__ import annotations

import bisect


class Kallsyms:
    def __init__(self, path: str = "/proc/kallsyms"):
        rows = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in "tTwW":
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

"""User-space addresses of one process -> (file, offset) through /proc/PID/maps."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

DELETED = " (deleted)"


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    dev: str
    inode: int
    path: str  # "" for anonymous memory, "[vdso]", "/usr/lib/..." (" (deleted)" stripped)
    deleted: bool = False

    @property
    def is_file(self) -> bool:
        return self.path.startswith("/")

    def file_offset(self, addr: int) -> int:
        return addr - self.start + self.offset


def parse_maps(text: str) -> list[Mapping]:
    """Executable mappings of a /proc/PID/maps text, sorted by start address."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or "x" not in parts[1]:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5].strip() if len(parts) > 5 else ""
        deleted = path.endswith(DELETED)
        if deleted:
            path = path[: -len(DELETED)]
        out.append(Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), parts[3], int(parts[4]), path, deleted))
    out.sort(key=lambda m: m.start)
    return out


class ProcessMaps:
    def __init__(self, pid: int, proc: str = "/proc"):
        self.pid = pid
        self.proc = proc
        with open(f"{proc}/{pid}/maps") as f:
            self.mappings = parse_maps(f.read())
        self._starts = [m.start for m in self.mappings]

    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def open_path(self, m: Mapping) -> str:
        """A path this process (root) can open for the mapping's file: through
        /proc/PID/root for files inside containers, /proc/PID/map_files for deleted ones."""
        if m.deleted or not os.path.exists(f"{self.proc}/{self.pid}/root{m.path}"):
            return f"{self.proc}/{self.pid}/map_files/{m.start:x}-{m.end:x}"
        return f"{self.proc}/{self.pid}/root{m.path}"


def ns_pid(pid: int, proc: str = "/proc") -> int:
    """The pid of a process inside its own pid namespace (what it names perf-PID.map with)."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


class PerfMap:
    """A JIT's /tmp/perf-PID.map: lines 'START SIZE name' (hex)."""

    def __init__(self, path: str):
        rows = []
        with open(path, errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 2)
                if len(parts) < 3:
                    continue
                try:
                    rows.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
                except ValueError:
                    continue
        rows.sort()
        self.starts = [r[0] for r in rows]
        self.rows = rows

    def lookup(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0:
            start, size, name = self.rows[i]
            if addr < start + max(size, 1):
                return name
        return None

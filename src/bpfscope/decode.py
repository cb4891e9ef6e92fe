"""Label decoders shared by every domain: small, pure, each tested alone.

Kernel numbers become the names a user reads (syscall numbers, ...). Sources are
read from the machine at run time so they follow the running system.
"""

from __future__ import annotations

import functools
import os
import re

_UNISTD = {
    "x86_64": ["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"],
    "aarch64": ["/usr/include/asm-generic/unistd.h"],
}
_NR_RE = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$", re.M)


@functools.cache
def syscall_table(machine: str | None = None) -> dict[int, str]:
    """{number: name} from the UAPI header of this architecture (linux-libc-dev)."""
    for path in _UNISTD.get(machine or os.uname().machine, []):
        try:
            with open(path) as f:
                return {int(nr): name for name, nr in _NR_RE.findall(f.read())}
        except OSError:
            continue
    return {}


def syscall_name(nr: int) -> str:
    """'getppid' for 110 on x86_64; 'syscall_N' when the table lacks it (never a bare number)."""
    return syscall_table().get(nr) or f"syscall_{nr}"


def syscall_number(name: str) -> int | None:
    for nr, n in syscall_table().items():
        if n == name:
            return nr
    return None


def comm_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def c_string(raw) -> str:
    """A NUL-terminated C char array (bytes or list of ints) as str."""
    if isinstance(raw, list):
        raw = bytes(b & 0xFF for b in raw)
    if isinstance(raw, (bytes, bytearray)):
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    return str(raw)

"""Unmount, also when the server hangs or crashed: abort the connection through fusectl, detach."""

from __future__ import annotations

import ctypes
import os

MNT_DETACH = 2
FUSECTL = "/sys/fs/fuse/connections"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fuse_mounts() -> dict[str, tuple[int, str]]:
    """Mount point -> (fuse connection id = device minor, fs type) from mountinfo: reading it never
    touches the (maybe hung) file system itself."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields = left.split()
            fstype = right.split()[0]
            if fstype == "fuse" or fstype.startswith("fuse."):
                out[_unescape(fields[4])] = (int(fields[2].split(":")[1]), fstype)
    return out


def connection_of(mountpoint: str) -> int | None:
    m = fuse_mounts().get(os.path.abspath(mountpoint))
    return m[0] if m else None


def ensure_fusectl() -> bool:
    if os.path.isdir(FUSECTL) and os.listdir(FUSECTL):
        return True
    if not os.path.isdir(FUSECTL):
        return False
    _libc.mount(b"fusectl", FUSECTL.encode(), b"fusectl", 0, None)
    return True


def abort(conn: int) -> bool:
    """Fail every pending and future request of the connection (blocked callers return ENOTCONN)."""
    ensure_fusectl()
    try:
        with open(f"{FUSECTL}/{conn}/abort", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def umount(mountpoint: str, *, force_abort: bool = True) -> None:
    """Abort the connection (a hung or dead server must not keep anyone waiting), then detach."""
    mp = os.path.abspath(mountpoint)
    conn = connection_of(mp)
    if conn is None:
        raise OSError(f"{mp} is not a fuse mount")
    if force_abort:
        abort(conn)
    if _libc.umount2(mp.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(f"umount {mp}: {os.strerror(e)}")

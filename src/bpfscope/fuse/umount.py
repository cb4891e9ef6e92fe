"""Unmount: cleanly while the server answers; when it crashed or hangs, abort the connection
through fusectl and detach."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time

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


class Busy(OSError):
    """A normal unmount was refused: something has a file open or its working directory in the mount."""


def probe(mountpoint: str, timeout_s: float) -> tuple[str, int | None]:
    """Whether the server answers: ("alive" | "dead" | "hung", pid of a probe still stuck).

    A child asks statfs, which the kernel always sends to the server (no cache answers it):
    a dead server's aborted connection fails it at once with ENOTCONN, a hung one never answers.
    A child, because a request the server has read but not answered cannot be interrupted,
    not even by SIGKILL: it ends only with the answer or the abort."""
    pid = os.fork()
    if pid == 0:
        try:
            os.statvfs(mountpoint)
            os._exit(0)
        except OSError as e:
            os._exit(min(e.errno or 1, 255))
        finally:
            os._exit(1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return ("dead" if code in (errno.ENOTCONN, errno.ECONNABORTED) else "alive"), None
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # ends it if the request still waits in the kernel's queue
    return "hung", pid


def _reap(pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)


def _fuse_connection(mp: str) -> int:
    conn = connection_of(mp)
    if conn is None:
        raise OSError(f"{mp} is not a fuse mount")
    return conn


def _umount2(mp: str, flags: int) -> None:
    """umount2(2); a failure is one line naming mp: Busy for a normal unmount's EBUSY, else OSError."""
    if _libc.umount2(mp.encode(), flags) != 0:
        e = ctypes.get_errno()
        if e == errno.EBUSY and not flags & MNT_DETACH:
            raise Busy(f"umount {mp}: busy (a process has a file open or its working directory in it); "
                       "close them, or --force to abort their requests and detach it")
        raise OSError(f"umount {mp}: {os.strerror(e)}")


def unmount(mountpoint: str, *, force: bool = False, probe_s: float = 3.0) -> str:
    """Unmount like umount(8) while the server answers (the server sees its connection end and
    exits; a busy mount raises Busy). Abort and detach when the server is gone or hung, or with
    force. Return what was done, for the CLI to print."""
    mp = os.path.abspath(mountpoint)
    _fuse_connection(mp)
    state, stuck = ("forced", None) if force else probe(mp, probe_s)
    if state == "alive":
        _umount2(mp, 0)
        return "clean unmount"
    umount(mp)
    if stuck:
        _reap(stuck)
    return {"forced": "aborted its requests and detached it (--force)",
            "dead": "the server had exited: detached it",
            "hung": f"the server did not answer within {probe_s:g} s: aborted its requests and detached it"}[state]


def umount(mountpoint: str, *, force_abort: bool = True) -> None:
    """Abort the connection (a hung or dead server must not keep anyone waiting), then detach."""
    mp = os.path.abspath(mountpoint)
    conn = _fuse_connection(mp)
    if force_abort:
        abort(conn)
    _umount2(mp, MNT_DETACH)

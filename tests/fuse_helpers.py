"""Mount helpers for the fuse tests: a mount is always unmounted and its server killed, even on failure."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from bpfscope.fuse.bench import foreground_server
from bpfscope.fuse.umount import fuse_mounts, umount

BPFSCOPE = [sys.executable, "-m", "bpfscope"]


def mounted(src, mnt, mode: str, *extra: str):
    """`bpfscope fuse mount --foreground` as a context: yields the server process once mounted; always
    unmounted and killed."""
    return foreground_server(str(src), str(mnt), mode, *extra, timeout_s=20)


def source_and_mountpoint(base, files: dict | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """base/src holding files (relative name -> str or bytes; parent directories made) and an
    empty base/mnt."""
    src, mnt = pathlib.Path(base, "src"), pathlib.Path(base, "mnt")
    src.mkdir(), mnt.mkdir()
    for name, content in (files or {}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (src / name).write_bytes(content)
        else:
            (src / name).write_text(content)
    return src, mnt


@dataclasses.dataclass
class Compared:
    native: str
    src: str
    mnt: str
    want: object = None   # fn(native)
    got: object = None    # fn(mnt)
    server: subprocess.Popen | None = None


@contextlib.contextmanager
def against_native(base, mode: str, fn, prepare=None):
    """Make base/native, base/src (prepare(root) applied to both) and base/mnt; run fn(native),
    mount src on mnt in mode and run fn(mnt); yield the Compared with the mount still up (a test
    looks through it more), unmounted when the block ends."""
    c = Compared(*(os.path.join(base, name) for name in ("native", "src", "mnt")))
    for d in (c.native, c.src, c.mnt):
        os.mkdir(d)
    if prepare:
        prepare(c.native)
        prepare(c.src)
    c.want = fn(c.native)
    with mounted(c.src, c.mnt, mode) as c.server:
        c.got = fn(c.mnt)
        yield c


@contextlib.contextmanager
def world_dir():
    """A scratch directory every user can traverse (pytest's tmp_path is 0700 root)."""
    d = tempfile.mkdtemp(prefix="bpfscope-fuse-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for mp in list(fuse_mounts()):
            if mp.startswith(d + "/"):
                umount(mp)
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def busy_mount(max_s: float = 300):
    """A `plain` mount of a fresh directory and a thread that stats, reads and misses (ENOENT) its files
    until the block ends (at most max_s): FUSE requests of several opcodes, errors among them.
    Yields the mount point."""
    import threading

    with world_dir() as d:
        src, mnt = os.path.join(d, "src"), os.path.join(d, "mnt")
        os.mkdir(src), os.mkdir(mnt)
        for i in range(20):
            with open(os.path.join(src, f"f{i}"), "wb") as f:
                f.write(b"x" * 4096)
        with mounted(src, mnt, "plain"):
            stop = threading.Event()

            def work():
                end = time.monotonic() + max_s
                while not stop.is_set() and time.monotonic() < end:
                    for i in range(20):
                        with open(os.path.join(mnt, f"f{i}"), "rb") as f:
                            f.read()
                        os.path.exists(os.path.join(mnt, f"missing{i}"))
                    stop.wait(0.05)

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            try:
                yield mnt
            finally:
                stop.set()
                worker.join(30)

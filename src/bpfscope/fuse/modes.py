"""The mount modes: small configurations of one server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    timeout: float        # entry and attribute validity (s); 0 = ask the server every time
    keep_cache: bool      # FOPEN_KEEP_CACHE: the page cache survives open()
    readdirplus: bool     # readdir also fills the dentry and attribute caches
    no_open: bool         # answer OPEN/OPENDIR with ENOSYS: zero-message opens from then on
    no_flush: bool        # answer FLUSH with ENOSYS: close() costs no round trip
    passthrough: bool     # register the backing file at open: read/write never reach the server
    negative: bool = False  # cache "no such name" for the entry timeout too
    watch: bool = False     # inotify on SOURCE -> FUSE_NOTIFY_INVAL_* for changes made behind the mount


MODES = {
    "plain": Mode("plain", 0.0, False, False, False, False, False),
    "cached": Mode("cached", 60.0, True, True, True, True, False, watch=True),
    "passthrough": Mode("passthrough", 0.0, False, False, False, False, True),
    # What the kernel (6.18) allows, measured: a backing file is taken only from an OPEN or
    # CREATE reply, and once OPEN was answered ENOSYS no file of the connection gets an OPEN
    # again, so zero-message opens and passthrough exclude each other; a passthrough open with
    # FOPEN_KEEP_CACHE fails (EIO); and an inode open in passthrough refuses a cached open
    # (EIO), so passthrough only on CREATE breaks the next open. fast therefore takes the
    # cached side (2 requests per cold small-file read, none warm) and adds negative entries.
    "fast": Mode("fast", 60.0, True, True, True, True, False, negative=True, watch=True),
}

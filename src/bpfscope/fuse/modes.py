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
    watch: bool           # inotify on SOURCE -> FUSE_NOTIFY_INVAL_* for changes made behind the mount


MODES = {
    "plain": Mode("plain", 0.0, False, False, False, False, False, False),
    "cached": Mode("cached", 60.0, True, True, True, True, False, True),
    "passthrough": Mode("passthrough", 0.0, False, False, False, False, True, False),
    # The kernel only takes a backing file from an OPEN/CREATE reply, and once OPEN was
    # answered ENOSYS it never sends OPEN again: zero-message opens and passthrough exclude
    # each other per connection. fast = cached metadata + zero-message opens (2 requests for a
    # cold small-file read, none warm) + passthrough for the files it creates (CREATE still
    # carries an open reply).
    "fast": Mode("fast", 60.0, True, True, True, True, True, True),
}

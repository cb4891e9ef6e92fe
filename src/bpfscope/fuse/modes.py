"""The mount modes: small configurations of one server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    timeout: float        # entry validity (s); 0 = every name resolution asks the server (LOOKUP)
    keep_cache: bool      # FOPEN_KEEP_CACHE: the page cache survives open()
    readdirplus: bool     # readdir also fills the dentry and attribute caches
    no_open: bool         # answer OPEN/OPENDIR with ENOSYS: zero-message opens from then on
    no_flush: bool        # answer FLUSH with ENOSYS: close() costs no round trip
    passthrough: bool     # register the backing file at open: read/write never reach the server
    negative: bool = False  # cache "no such name" for the entry timeout too
    watch: bool = False     # inotify on SOURCE -> FUSE_NOTIFY_INVAL_* for changes made behind the mount
    # Attribute validity (s); None: the entry timeout. ONE_TICK: the kernel uses attributes the
    # server just sent for the rest of that operation instead of asking again microseconds later.
    attr_timeout: float | None = None

    @property
    def attr_valid(self) -> float:
        return self.timeout if self.attr_timeout is None else self.attr_timeout


# 1 ns, which the kernel rounds up to one jiffy (fuse_time_to_jiffies): attributes stay valid
# until the next tick but one (4 to 8 ms at HZ=250). With attr_valid 0 the kernel re-asks
# GETATTR for the directory's and the file's permission checks (default_permissions) and
# for every read() that reaches past the cached size: 4 GETATTR per small-file read on top
# of LOOKUP OPEN READ FLUSH RELEASE, each re-fetching what the LOOKUP had just returned.
ONE_TICK = 1e-9


MODES = {
    # plain: every name resolution (LOOKUP), open, read, flush and release goes to the server;
    # the page cache is dropped at every open; attributes live for one operation (ONE_TICK).
    "plain": Mode("plain", 0.0, False, False, False, False, False, attr_timeout=ONE_TICK),
    "cached": Mode("cached", 60.0, True, True, True, True, False, watch=True),
    "passthrough": Mode("passthrough", 0.0, False, False, False, False, True, attr_timeout=ONE_TICK),
    # What the kernel (6.18) allows, measured: a backing file is taken only from an OPEN or
    # CREATE reply, and once OPEN was answered ENOSYS no file of the connection gets an OPEN
    # again, so zero-message opens and passthrough exclude each other; a passthrough open with
    # FOPEN_KEEP_CACHE fails (EIO); and an inode open in passthrough refuses a cached open
    # (EIO), so passthrough only on CREATE breaks the next open. fast therefore takes the
    # cached side (2 requests per cold small-file read, none warm) and adds negative entries.
    "fast": Mode("fast", 60.0, True, True, True, True, False, negative=True, watch=True),
}

"""Changes made to SOURCE behind a caching mount: inotify on every directory the kernel knows,
turned into FUSE_NOTIFY_INVAL_ENTRY (names that appeared, vanished or moved) and
FUSE_NOTIFY_INVAL_INODE (contents and attributes that changed). Runs in its own thread: a
notification written from a request handler could wait on that very request."""

from __future__ import annotations

import ctypes
import os
import struct
import threading

from . import protocol as P

IN_MODIFY, IN_ATTRIB = 0x2, 0x4
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_IGNORED, IN_ONLYDIR, IN_CLOEXEC = 0x8000, 0x01000000, 0o2000000
NAME_EVENTS = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
# Not IN_CLOSE_WRITE: the server's own O_RDWR opens would fire it on every read request.
DATA_EVENTS = IN_MODIFY | IN_ATTRIB
EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class Watcher:
    def __init__(self, server):
        self.server = server
        self.fd = _libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.wd_node: dict[int, int] = {}   # watch descriptor -> directory node id
        self.node_wd: dict[int, int] = {}
        self.lock = threading.Lock()

    def watch(self, nodeid: int, path: str) -> None:
        """Watch a directory the kernel now has a node for (called on lookup and readdirplus)."""
        if nodeid in self.node_wd:
            return
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), NAME_EVENTS | DATA_EVENTS | IN_ONLYDIR)
        if wd >= 0:
            with self.lock:
                self.wd_node[wd] = nodeid
                self.node_wd[nodeid] = wd

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="fuse-watch").start()

    def _run(self) -> None:
        s = self.server
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except OSError:
                return
            off = 0
            while off < len(buf):
                wd, mask, _cookie, length = EVENT.unpack_from(buf, off)
                name = buf[off + 16: off + 16 + length].rstrip(b"\0")
                off += 16 + length
                if mask & IN_IGNORED:
                    with self.lock:
                        nid = self.wd_node.pop(wd, None)
                        if nid is not None:
                            self.node_wd.pop(nid, None)
                    continue
                parent = self.wd_node.get(wd)
                if parent is None or not name:
                    continue
                if mask & (NAME_EVENTS | DATA_EVENTS):
                    s.notify(P.NOTIFY_INVAL_ENTRY,
                             P.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0")
                if mask & DATA_EVENTS:
                    node = s.nodes.get(parent)
                    if node is None:
                        continue
                    try:
                        st = os.lstat(node.path + "/" + os.fsdecode(name))
                    except OSError:
                        continue
                    child = s.by_key.get((st.st_dev, st.st_ino))
                    if child:
                        s.notify(P.NOTIFY_INVAL_INODE, P.NOTIFY_INVAL_INODE_OUT.pack(child, 0, 0))

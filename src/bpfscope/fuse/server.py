"""The server: mount(2) with an fd of /dev/fuse, then threads that read requests and answer them
with os.* calls on SOURCE. Python per request is the cost, so the hot path is lean: one
preallocated buffer per thread, os.readv into it, precompiled structs, a dict dispatch."""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import os
import stat
import struct
import sys
import threading

from ..hostenv import HostError
from . import protocol as P
from .modes import Mode

MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
BUF_SIZE = MAX_WRITE + 4096 * 2
MS_NOSUID, MS_NODEV = 2, 4
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


# Listings kept for zero-message readdir: enough for many readers at once, bounded in memory.
LISTINGS_KEPT = 64
ENTRIES_KEPT = 1 << 20

_READ_HEAD = struct.Struct("<QQI")  # fuse_read_in: fh, offset, size


class FuseError(HostError):
    """A user-facing failure (bad source, not root, mount refused): one line from the CLI."""


def mount(source: str, mountpoint: str, *, allow_other: bool = True) -> int:
    """Mount a fuse file system on `mountpoint`; return the /dev/fuse fd that serves it."""
    if not os.path.isdir(source):
        raise FuseError(f"source {source} is not a directory")
    if not os.path.isdir(mountpoint):
        raise FuseError(f"mount point {mountpoint} is not a directory")
    if os.geteuid() != 0:
        raise FuseError("fuse mount needs root (mount(2) and passthrough need CAP_SYS_ADMIN)")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise FuseError(f"cannot open /dev/fuse: {e.strerror}") from None
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,default_permissions"
    if allow_other:
        opts += ",allow_other"
    r = _libc.mount(os.path.abspath(source).encode(), os.path.abspath(mountpoint).encode(),
                    b"fuse.bpfscope", MS_NOSUID | MS_NODEV, opts.encode())
    if r != 0:
        e = ctypes.get_errno()
        os.close(fd)
        raise FuseError(f"mount {mountpoint}: {os.strerror(e)}")
    return fd


class Node:
    __slots__ = ("path", "nlookup", "fd", "key")

    def __init__(self, path: str, key):
        self.path = path
        self.nlookup = 0
        self.fd = -1      # kept open when the name was unlinked while the kernel still knows the inode
        self.key = key    # (st_dev, st_ino) of the source file


def _split(seconds: float) -> tuple[int, int]:
    """Seconds as the (sec, nsec) pair of a FUSE reply; a positive value never rounds to 0."""
    sec = int(seconds)
    nsec = round((seconds - sec) * 1e9)
    return sec, max(nsec, 1) if seconds > 0 and not sec else nsec


def _dtype(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


class Server:
    def __init__(self, devfd: int, source: str, mode: Mode, threads: int = 4):
        self.fd = devfd
        self.source = os.path.abspath(source)
        self.mode = mode
        self.threads = threads
        st = os.lstat(self.source)
        root = Node(self.source, (st.st_dev, st.st_ino))
        root.nlookup = 1 << 62
        self.nodes: dict[int, Node] = {P.ROOT_ID: root}
        self.by_key: dict[tuple, int] = {root.key: P.ROOT_ID}
        self.next_id = 2
        self.lock = threading.Lock()
        self.dirs: dict[int, list] = {}     # open directory handle -> listing
        # zero-message opendir: generation -> (node id, listing), least recently used first
        self.listings: collections.OrderedDict[int, tuple[int, list]] = collections.OrderedDict()
        self.next_gen = 1
        self.listed = 0                     # entries in self.listings
        self.next_dh = 1
        self.backing: dict[int, list] = {}  # node id -> [backing id, open files]: one backing file per inode
        self.fh_node: dict[int, int] = {}   # file handle (fd) in passthrough -> node id
        self.passthrough = False
        self.no_open = False
        self.valid, self.valid_ns = _split(mode.timeout)            # entries
        self.attr_valid, self.attr_valid_ns = _split(mode.attr_valid)  # attributes
        self.stopping = False
        self.watcher = None
        if mode.watch:
            from .watch import Watcher
            self.watcher = Watcher(self)
            self.watcher.watch(P.ROOT_ID, self.source)
        h = self._handlers = {}
        for op, fn in ((P.INIT, self.op_init), (P.LOOKUP, self.op_lookup), (P.GETATTR, self.op_getattr),
                       (P.SETATTR, self.op_setattr), (P.READLINK, self.op_readlink), (P.SYMLINK, self.op_symlink),
                       (P.MKNOD, self.op_mknod), (P.MKDIR, self.op_mkdir), (P.UNLINK, self.op_unlink),
                       (P.RMDIR, self.op_rmdir), (P.RENAME, self.op_rename), (P.RENAME2, self.op_rename2),
                       (P.LINK, self.op_link), (P.OPEN, self.op_open), (P.READ, self.op_read),
                       (P.WRITE, self.op_write), (P.STATFS, self.op_statfs), (P.RELEASE, self.op_release),
                       (P.FSYNC, self.op_fsync), (P.FLUSH, self.op_flush), (P.OPENDIR, self.op_opendir),
                       (P.READDIR, self.op_readdir), (P.READDIRPLUS, self.op_readdirplus),
                       (P.RELEASEDIR, self.op_releasedir), (P.FSYNCDIR, self.op_fsyncdir),
                       (P.ACCESS, self.op_access), (P.CREATE, self.op_create)):
            h[op] = fn

    # ---- the loop -------------------------------------------------------------------------
    def handshake(self) -> None:
        """Answer FUSE_INIT, which the kernel queued at mount(2), before serving (and before the
        CLI forks): a mode the kernel cannot give fails here, in the command that asked for it."""
        buf = bytearray(BUF_SIZE)
        while True:
            try:
                n = os.readv(self.fd, [buf])
                break
            except InterruptedError:
                continue
            except OSError as e:
                raise FuseError(f"FUSE_INIT not received: {e.strerror}") from None
        _len, opcode, unique = P.IN_HEADER.unpack_from(buf, 0)[:3]
        if opcode != P.INIT:
            raise FuseError(f"the kernel sent opcode {opcode} before FUSE_INIT")
        out = self.op_init(P.ROOT_ID, memoryview(buf)[40:n], 0, 0)
        if self.mode.passthrough and not self.passthrough:
            self._send(unique, -errno.EPROTO, b"")  # the connection fails: nothing half-working stays
            raise FuseError(f"mode {self.mode.name}: the kernel does not offer FUSE passthrough at FUSE_INIT "
                            "(CONFIG_FUSE_PASSTHROUGH, kernel 6.9+); use --mode plain or fast")
        self._send(unique, 0, out)

    def serve(self) -> None:
        """Serve until the file system is unmounted (read returns ENODEV)."""
        os.umask(0)  # the kernel already applied the caller's umask to every mode it sends
        if self.watcher:
            self.watcher.start()
        workers = [threading.Thread(target=self._worker, daemon=True, name=f"fuse{i}")
                   for i in range(self.threads - 1)]
        for t in workers:
            t.start()
        self._worker()
        self.stopping = True
        for t in workers:
            t.join(timeout=1)

    def _worker(self) -> None:
        buf = bytearray(BUF_SIZE)
        mv = memoryview(buf)
        readv, fd, unpack_hdr, handlers = os.readv, self.fd, P.IN_HEADER.unpack_from, self._handlers
        while True:
            try:
                n = readv(fd, [buf])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):  # ENOENT: request interrupted
                    continue
                return  # ENODEV: unmounted, or the connection was aborted
            if not n:
                return  # end of file: never from /dev/fuse, but from a socket standing in for it
            length, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = unpack_hdr(buf, 0)
            try:
                if opcode == P.FORGET:
                    self._forget(nodeid, P.FORGET_IN.unpack_from(buf, 40)[0])
                    continue
                if opcode == P.BATCH_FORGET:
                    count = P.BATCH_FORGET_IN.unpack_from(buf, 40)[0]
                    for i in range(count):
                        nid, nl = P.FORGET_ONE.unpack_from(buf, 48 + 16 * i)
                        self._forget(nid, nl)
                    continue
                if opcode == P.INTERRUPT:
                    continue
                fn = handlers.get(opcode)
                if fn is None:
                    raise OSError(errno.ENOSYS, "")
                out = fn(nodeid, mv[40:n], uid, gid)
                if out is None:
                    self._send(unique, 0, b"")
                else:
                    self._send(unique, 0, out)
            except OSError as e:
                self._send(unique, -(e.errno or errno.EIO), b"")
            except Exception as e:  # a bug costs its request (EIO), never a worker thread
                name = P.OPCODE_NAMES.get(opcode, str(opcode))
                print(f"bpfscope fuse: {name} request failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                if opcode not in (P.FORGET, P.BATCH_FORGET, P.INTERRUPT):  # these take no reply
                    self._send(unique, -errno.EIO, b"")

    def _send(self, unique: int, error: int, payload) -> None:
        hdr = P.OUT_HEADER.pack(16 + len(payload), error, unique)
        try:
            if payload:
                os.writev(self.fd, [hdr, payload])
            else:
                os.write(self.fd, hdr)
        except OSError:
            pass  # ENOENT: the request was interrupted and is gone; ENODEV: unmounted

    def notify(self, code: int, payload: bytes) -> None:
        try:
            os.writev(self.fd, [P.OUT_HEADER.pack(16 + len(payload), code, 0), payload])
        except OSError:
            pass  # ENOENT: the kernel no longer has that inode or dentry cached

    # ---- node table ------------------------------------------------------------------------
    def _node(self, nodeid: int) -> Node:
        try:
            return self.nodes[nodeid]
        except KeyError:
            raise OSError(errno.ESTALE, "") from None

    def _path(self, nodeid: int) -> str:
        return self._node(nodeid).path

    def _child(self, parent: int, name) -> str:
        name = bytes(name)
        if b"/" in name:
            raise OSError(errno.EINVAL, "")
        return self._node(parent).path + "/" + os.fsdecode(name)

    def _remember(self, path: str, st: os.stat_result) -> int:
        """Count one kernel lookup of `path`; return its node id."""
        key = (st.st_dev, st.st_ino)
        with self.lock:
            nid = self.by_key.get(key)
            if nid is None:
                nid = self.next_id
                self.next_id += 1
                node = self.nodes[nid] = Node(path, key)
                self.by_key[key] = nid
            else:
                node = self.nodes[nid]
                node.path = path
            node.nlookup += 1
        if self.watcher and stat.S_ISDIR(st.st_mode):
            self.watcher.watch(nid, path)
        return nid

    def _forget(self, nodeid: int, nlookup: int) -> None:
        with self.lock:
            node = self.nodes.get(nodeid)
            if node is None or nodeid == P.ROOT_ID:
                return
            node.nlookup -= nlookup
            if node.nlookup <= 0:
                del self.nodes[nodeid]
                if self.by_key.get(node.key) == nodeid:
                    del self.by_key[node.key]
                if node.fd >= 0:
                    os.close(node.fd)

    def _rename_paths(self, old: str, new: str) -> None:
        """A renamed directory moves every node below it."""
        prefix = old + "/"
        with self.lock:
            for node in self.nodes.values():
                if node.path == old:
                    node.path = new
                elif node.path.startswith(prefix):
                    node.path = new + node.path[len(old):]

    def _detach(self, path: str) -> None:
        """`path` is about to lose its name: keep the inode reachable for the kernel through an fd."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        with self.lock:
            nid = self.by_key.get((st.st_dev, st.st_ino))
            node = self.nodes.get(nid) if nid else None
            if node is not None and node.path == path and node.fd < 0:
                node.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def _after_unlink(self, path: str) -> None:
        with self.lock:
            for nid, node in self.nodes.items():
                if node.path == path and node.fd >= 0:
                    try:
                        left = os.fstat(node.fd).st_nlink
                    except OSError:
                        left = 0
                    if left == 0 and self.by_key.get(node.key) == nid:
                        del self.by_key[node.key]  # the inode number may be reused by a new file
                    node.path = "\0deleted"

    # ---- replies ---------------------------------------------------------------------------
    def _attr(self, st: os.stat_result) -> tuple:
        return (st.st_ino, st.st_size, st.st_blocks, int(st.st_atime), int(st.st_mtime), int(st.st_ctime),
                st.st_atime_ns % 1_000_000_000, st.st_mtime_ns % 1_000_000_000, st.st_ctime_ns % 1_000_000_000,
                st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, st.st_blksize, 0)

    def _entry(self, path: str) -> bytes:
        st = os.lstat(path)
        nid = self._remember(path, st)
        return P.ENTRY_OUT.pack(nid, 0, self.valid, self.attr_valid, self.valid_ns, self.attr_valid_ns,
                                *self._attr(st))

    def _attr_out(self, st: os.stat_result) -> bytes:
        return P.ATTR_OUT.pack(self.attr_valid, self.attr_valid_ns, 0, *self._attr(st))

    def _stat_node(self, nodeid: int) -> os.stat_result:
        node = self._node(nodeid)
        if node.fd >= 0:
            return os.fstat(node.fd)
        return os.lstat(node.path)

    def _own(self, path: str, uid: int, gid: int, mode: int | None = None) -> None:
        """A new file belongs to the caller, as on a native file system. The server created it as
        root, so in a setgid directory the source file system already gave it the directory's
        group (and a new directory the setgid bit): then only the owner changes."""
        if uid == 0 and gid == 0:
            return
        if os.lstat(os.path.dirname(path)).st_mode & stat.S_ISGID:
            gid = -1
        os.lchown(path, uid, gid)
        # chown clears set-user-id (and set-group-id of a group-executable file), which the
        # caller keeps when creating it natively; the kernel already dropped what it may not keep
        if mode is not None and mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(mode))

    # ---- operations ------------------------------------------------------------------------
    def op_init(self, nodeid, arg, uid, gid):
        major, minor, max_readahead, flags, flags2 = P.INIT_IN.unpack_from(arg, 0)
        kflags = flags | (flags2 << 32 if flags & P.INIT_EXT else 0)
        want = P.ASYNC_READ | P.BIG_WRITES | P.MAX_PAGES | P.PARALLEL_DIROPS | P.INIT_EXT
        if self.mode.readdirplus:
            want |= P.DO_READDIRPLUS
        if self.mode.timeout:
            want |= P.AUTO_INVAL_DATA | P.CACHE_SYMLINKS
        if self.mode.passthrough:
            want |= P.PASSTHROUGH
        flags_out = want & kflags
        self.passthrough = bool(flags_out & P.PASSTHROUGH)
        self.no_open = self.mode.no_open and bool(kflags & P.NO_OPEN_SUPPORT)
        self.no_opendir = self.mode.no_open and bool(kflags & P.NO_OPENDIR_SUPPORT)
        self.kernel_minor = minor
        return P.INIT_OUT.pack(P.KERNEL_VERSION, min(minor, P.KERNEL_MINOR), max_readahead,
                               flags_out & 0xFFFFFFFF, 64, 48, MAX_WRITE, 1, MAX_PAGES, 0,
                               flags_out >> 32, 1 if self.passthrough else 0)

    def op_lookup(self, nodeid, arg, uid, gid):
        try:
            return self._entry(self._child(nodeid, arg[:-1]))
        except FileNotFoundError:
            if not self.mode.negative:
                raise
            # node id 0: the kernel keeps a negative dentry for entry_valid
            return P.ENTRY_OUT.pack(0, 0, self.valid, 0, self.valid_ns, 0, *((0,) * 16))

    def op_getattr(self, nodeid, arg, uid, gid):
        flags, _, fh = P.GETATTR_IN.unpack_from(arg, 0)
        st = os.fstat(fh) if flags & P.GETATTR_FH and fh else self._stat_node(nodeid)
        return self._attr_out(st)

    def op_setattr(self, nodeid, arg, uid, gid):
        (valid, _, fh, size, _lo, atime, mtime, _ct, atimens, mtimens, _ctns, mode, _u4, suid, sgid,
         _u5) = P.SETATTR_IN.unpack_from(arg, 0)
        node = self._node(nodeid)
        target = fh if valid & P.FATTR_FH and fh else (node.fd if node.fd >= 0 else node.path)
        if valid & P.FATTR_MODE:
            if isinstance(target, int):
                os.fchmod(target, stat.S_IMODE(mode))
            elif not os.path.islink(target):  # Linux has no mode on symlinks
                os.chmod(target, stat.S_IMODE(mode))
        if valid & (P.FATTR_UID | P.FATTR_GID):
            u = suid if valid & P.FATTR_UID else -1
            g = sgid if valid & P.FATTR_GID else -1
            if isinstance(target, int):
                os.fchown(target, u, g)
            else:
                os.lchown(target, u, g)
        if valid & P.FATTR_SIZE:
            os.truncate(target, size)
        if valid & (P.FATTR_ATIME | P.FATTR_MTIME):
            st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
            now = None
            if valid & (P.FATTR_ATIME_NOW | P.FATTR_MTIME_NOW):
                import time
                now = time.time_ns()
            a = (now if valid & P.FATTR_ATIME_NOW else atime * 1_000_000_000 + atimens) \
                if valid & P.FATTR_ATIME else st.st_atime_ns
            m = (now if valid & P.FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtimens) \
                if valid & P.FATTR_MTIME else st.st_mtime_ns
            if isinstance(target, int):
                os.utime(target, ns=(a, m))
            else:
                os.utime(target, ns=(a, m), follow_symlinks=False)
        st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
        return self._attr_out(st)

    def op_readlink(self, nodeid, arg, uid, gid):
        return os.fsencode(os.readlink(self._path(nodeid)))

    def op_symlink(self, nodeid, arg, uid, gid):
        name, target = bytes(arg).split(b"\0")[:2]
        path = self._child(nodeid, name)
        os.symlink(target, path)
        self._own(path, uid, gid)
        return self._entry(path)

    def op_mknod(self, nodeid, arg, uid, gid):
        mode, rdev, _umask, _ = P.MKNOD_IN.unpack_from(arg, 0)
        path = self._child(nodeid, arg[16:-1])
        os.mknod(path, mode, rdev)
        self._own(path, uid, gid, mode)
        return self._entry(path)

    def op_mkdir(self, nodeid, arg, uid, gid):
        mode, _umask = P.MKDIR_IN.unpack_from(arg, 0)
        path = self._child(nodeid, arg[8:-1])
        os.mkdir(path, stat.S_IMODE(mode))
        self._own(path, uid, gid)
        return self._entry(path)

    def op_unlink(self, nodeid, arg, uid, gid):
        path = self._child(nodeid, arg[:-1])
        self._detach(path)
        os.unlink(path)
        self._after_unlink(path)

    def op_rmdir(self, nodeid, arg, uid, gid):
        os.rmdir(self._child(nodeid, arg[:-1]))

    def op_rename(self, nodeid, arg, uid, gid):
        return self._rename(nodeid, P.RENAME_IN.unpack_from(arg, 0)[0], arg[8:], 0)

    def op_rename2(self, nodeid, arg, uid, gid):
        newdir, flags, _ = P.RENAME2_IN.unpack_from(arg, 0)
        return self._rename(nodeid, newdir, arg[16:], flags)

    def _rename(self, olddir, newdir, names, flags):
        old, new = bytes(names).split(b"\0")[:2]
        src, dst = self._child(olddir, old), self._child(newdir, new)
        if flags:
            if not flags & RENAME_EXCHANGE:
                self._detach(dst)
            if _libc.renameat2(-100, src.encode(), -100, dst.encode(), flags) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        else:
            self._detach(dst)
            os.rename(src, dst)
        if flags & RENAME_EXCHANGE:
            tmp = "\0exchange"
            self._rename_paths(src, tmp)
            self._rename_paths(dst, src)
            self._rename_paths(tmp, dst)
        else:
            self._after_unlink(dst)
            self._rename_paths(src, dst)

    def op_link(self, nodeid, arg, uid, gid):
        old = P.LINK_IN.unpack_from(arg, 0)[0]
        path = self._child(nodeid, arg[8:-1])
        os.link(self._path(old), path, follow_symlinks=False)
        return self._entry(path)

    def _open_flags(self, flags: int) -> int:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND)  # the kernel gives the offsets
        if flags & os.O_ACCMODE != os.O_RDONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR  # page-cache fills read a written file
        return flags | os.O_CLOEXEC

    def _open_out(self, fd: int, nodeid: int) -> bytes:
        m = self.mode
        oflags = (P.FOPEN_KEEP_CACHE if m.keep_cache else 0) | (P.FOPEN_NOFLUSH if m.no_flush else 0)
        backing = 0
        if self.passthrough and stat.S_ISREG(os.fstat(fd).st_mode):
            # The kernel refuses a second backing file for an inode that is open: every open of
            # a node shares one backing id, closed when the last of them is released.
            with self.lock:
                b = self.backing.get(nodeid)
                if b is None:
                    # a mutable buffer makes fcntl.ioctl return the ioctl's result: the backing id
                    bid = fcntl.ioctl(self.fd, P.DEV_IOC_BACKING_OPEN, bytearray(P.BACKING_MAP.pack(fd, 0, 0)),
                                      True)
                    b = self.backing[nodeid] = [bid, 0]
                b[1] += 1
                self.fh_node[fd] = nodeid
                backing = b[0]
            oflags = (oflags & ~P.FOPEN_KEEP_CACHE) | P.FOPEN_PASSTHROUGH  # the kernel refuses both (EIO)
        return P.OPEN_OUT.pack(fd, oflags, backing)

    def op_open(self, nodeid, arg, uid, gid):
        if self.no_open:
            raise OSError(errno.ENOSYS, "")
        flags = P.OPEN_IN.unpack_from(arg, 0)[0]
        node = self._node(nodeid)
        if node.fd >= 0:
            fd = os.open(f"/proc/self/fd/{node.fd}", self._open_flags(flags))
        else:
            fd = os.open(node.path, self._open_flags(flags))
        return self._open_out(fd, nodeid)

    def op_create(self, nodeid, arg, uid, gid):
        flags, mode, _umask, _ = P.CREATE_IN.unpack_from(arg, 0)
        path = self._child(nodeid, arg[16:-1])
        try:
            fd = os.open(path, self._open_flags(flags) | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # The kernel's negative entry is stale (the name appeared behind the mount): opening
            # it here, as root, would skip its permission check and chown it to the caller.
            # ESTALE makes the kernel look the name up again (LOOKUP_REVAL) and open the file it
            # finds. (No FUSE_NOTIFY_INVAL_ENTRY from here: it waits for the directory lock
            # this CREATE holds.)
            raise OSError(errno.ESTALE, "") from None
        try:
            self._own(path, uid, gid, mode)
            entry = self._entry(path)
        except OSError:
            os.close(fd)
            raise
        return entry + self._open_out(fd, P.ENTRY_OUT.unpack_from(entry, 0)[0])

    def _io(self, nodeid: int, fh: int, fn, *args, write: bool = True):
        """Run fn(fd, *args) on an open file; with zero-message opens (fh 0) open the node for the call."""
        if fh:
            return fn(fh, *args)
        node = self._node(nodeid)
        if node.fd >= 0:
            return fn(node.fd, *args)
        fd = os.open(node.path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
        try:
            return fn(fd, *args)
        finally:
            os.close(fd)

    def op_read(self, nodeid, arg, uid, gid):
        fh, off, size = _READ_HEAD.unpack_from(arg, 0)
        if fh:
            return os.pread(fh, size, off)
        # zero-message opens: the hot path of a cold small-file read, kept to three syscalls
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "")
        if node.fd >= 0:
            return os.pread(node.fd, size, off)
        fd = os.open(node.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, off)
        finally:
            os.close(fd)

    def op_write(self, nodeid, arg, uid, gid):
        fh, off, size = P.READ_IN.unpack_from(arg, 0)[:3]
        n = self._io(nodeid, fh, os.pwrite, arg[40:40 + size], off)
        return P.WRITE_OUT.pack(n, 0)

    def op_statfs(self, nodeid, arg, uid, gid):
        s = os.statvfs(self.source)
        return P.STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                 s.f_bsize, s.f_namemax, s.f_frsize, 0)

    def op_release(self, nodeid, arg, uid, gid):
        fh = P.RELEASE_IN.unpack_from(arg, 0)[0]
        with self.lock:
            nid = self.fh_node.pop(fh, None)
            b = self.backing.get(nid) if nid else None
            if b is not None:
                b[1] -= 1
                if b[1] == 0:
                    del self.backing[nid]
                    fcntl.ioctl(self.fd, P.DEV_IOC_BACKING_CLOSE, bytearray(b[0].to_bytes(4, "little")), True)
        if fh:
            os.close(fh)

    def op_flush(self, nodeid, arg, uid, gid):
        if self.mode.no_flush:
            raise OSError(errno.ENOSYS, "")  # the kernel stops sending FLUSH for this connection

    def op_fsync(self, nodeid, arg, uid, gid):
        fh, flags, _ = P.FSYNC_IN.unpack_from(arg, 0)
        self._io(nodeid, fh, os.fdatasync if flags & 1 else os.fsync)

    def op_opendir(self, nodeid, arg, uid, gid):
        if self.no_opendir:
            raise OSError(errno.ENOSYS, "")
        listing = self._list(nodeid)
        with self.lock:
            dh = self.next_dh
            self.next_dh += 1
            self.dirs[dh] = listing
        return P.OPEN_OUT.pack(dh, P.FOPEN_CACHE_DIR | P.FOPEN_KEEP_CACHE if self.mode.keep_cache else 0, 0)

    def _list(self, nodeid: int) -> list:
        path = self._path(nodeid)
        st = os.lstat(path)
        out = [(b".", st.st_ino, 4), (b"..", 1, 4)]
        with os.scandir(path) as it:
            for e in it:
                if e.is_symlink():
                    t = 10
                elif e.is_dir(follow_symlinks=False):
                    t = 4
                elif e.is_file(follow_symlinks=False):
                    t = 8
                else:
                    t = _dtype(e.stat(follow_symlinks=False).st_mode)
                out.append((os.fsencode(e.name), e.inode(), t))
        return out

    def _listing(self, nodeid: int, fh: int, off: int) -> tuple[list, int, int]:
        """(listing, index to start at, base of the entries' offsets: entry i has base | i + 1).

        With an OPENDIR handle the listing is the handle's. With zero-message opendir every
        reader of a directory sends fh 0, so a listing is made at each offset 0 and kept under
        a generation that the offsets it hands out carry in their upper 32 bits: a reader
        halfway through one listing goes on in it while another starts a new one."""
        if fh:
            listing = self.dirs.get(fh)
            if listing is None:  # not a handle this server gave, or one already released
                raise OSError(errno.EBADF, "")
            return listing, off, 0
        gen, idx = off >> 32, off & 0xFFFFFFFF
        with self.lock:
            kept = self.listings.get(gen) if off else None
            if kept is not None and kept[0] == nodeid:
                self.listings.move_to_end(gen)
                return kept[1], idx, gen << 32
        listing = self._list(nodeid)  # offset 0, or a listing evicted since: its index in a new one
        with self.lock:
            gen = self.next_gen
            self.next_gen += 1
            self.listings[gen] = (nodeid, listing)
            self.listed += len(listing)
            while len(self.listings) > 1 and (len(self.listings) > LISTINGS_KEPT or self.listed > ENTRIES_KEPT):
                self.listed -= len(self.listings.popitem(last=False)[1][1])
        return listing, idx, gen << 32

    def op_readdir(self, nodeid, arg, uid, gid):
        fh, off, size = P.READ_IN.unpack_from(arg, 0)[:3]
        listing, start, base = self._listing(nodeid, fh, off)
        out = bytearray()
        for i in range(start, len(listing)):
            name, ino, dtype = listing[i]
            rec = P.DIRENT.pack(ino, base | (i + 1), len(name), dtype) + name
            rec += b"\0" * (-len(rec) % 8)
            if len(out) + len(rec) > size:
                break
            out += rec
        return bytes(out)

    def op_readdirplus(self, nodeid, arg, uid, gid):
        fh, off, size = P.READ_IN.unpack_from(arg, 0)[:3]
        listing, start, dbase = self._listing(nodeid, fh, off)
        base = self._path(nodeid)
        out = bytearray()
        for i in range(start, len(listing)):
            name, ino, dtype = listing[i]
            reclen = P.ENTRY_OUT.size + P.DIRENT.size + len(name)
            reclen += -reclen % 8
            if len(out) + reclen > size:
                break
            if name in (b".", b".."):
                entry = bytes(P.ENTRY_OUT.size)  # node id 0: no entry for the kernel to link
            else:
                try:
                    entry = self._entry(base + "/" + os.fsdecode(name))
                except OSError:
                    continue  # gone since the listing
            rec = entry + P.DIRENT.pack(ino, dbase | (i + 1), len(name), dtype) + name
            out += rec + b"\0" * (reclen - len(rec))
        return bytes(out)

    def op_releasedir(self, nodeid, arg, uid, gid):
        fh = P.RELEASE_IN.unpack_from(arg, 0)[0]
        self.dirs.pop(fh, None)

    def op_fsyncdir(self, nodeid, arg, uid, gid):
        fd = os.open(self._path(nodeid), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def op_access(self, nodeid, arg, uid, gid):
        mask = P.ACCESS_IN.unpack_from(arg, 0)[0]
        st = self._stat_node(nodeid)
        if uid == 0 or mask == 0:
            return None
        bits = st.st_mode >> 6 if st.st_uid == uid else st.st_mode >> 3 if st.st_gid == gid else st.st_mode
        if mask & ~bits & 7:
            raise OSError(errno.EACCES, "")

"""The FUSE file system against the native one: an fsx-style random sequence, errors, permissions,
changes behind a cached mount, and a server killed or hung."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from bpfscope.fuse.umount import fuse_mounts, umount

from fuse_helpers import BPFSCOPE, against_native, mounted, source_and_mountpoint, world_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                                reason="needs root and /dev/fuse")
MODES = ["plain", "cached", "passthrough", "fast"]
NAMES = [f"f{i}" for i in range(6)]


def fsx(root: str, seed: int, nops: int) -> list:
    """Apply a seeded random sequence of file operations under root; return the log of every result."""
    rnd = random.Random(seed)
    log = []
    fds: dict[str, int] = {}      # name -> fd
    orphans: list[int] = []       # fds whose names were unlinked or renamed over
    os.mkdir(f"{root}/d")

    def p(name):
        return f"{root}/d/{name}"

    def rec(op, fn):
        try:
            log.append((op, fn()))
        except OSError as e:
            log.append((op, errno.errorcode[e.errno]))

    def any_fd():
        pool = list(fds.values()) + orphans
        return rnd.choice(pool) if pool else None

    for i in range(nops):
        r = rnd.random()
        name = rnd.choice(NAMES)
        if r < 0.10:
            if name not in fds:
                rec("open", lambda: fds.__setitem__(name, os.open(p(name), os.O_RDWR | os.O_CREAT, 0o644)))
        elif r < 0.35:
            fd = any_fd()
            if fd is not None:
                off = rnd.choice([0, rnd.randrange(0, 4096), rnd.randrange(0, 300_000)])
                data = rnd.randbytes(rnd.choice([1, 100, 4096, rnd.randrange(1, 70_000)]))
                rec("pwrite", lambda: os.pwrite(fd, data, off))
        elif r < 0.55:
            fd = any_fd()
            if fd is not None:
                off, n = rnd.randrange(0, 310_000), rnd.randrange(1, 80_000)
                rec("pread", lambda: hashlib.sha1(os.pread(fd, n, off)).hexdigest())
        elif r < 0.62:
            fd = any_fd()
            if fd is not None:
                size = rnd.choice([0, rnd.randrange(0, 8192), rnd.randrange(0, 400_000)])
                rec("ftruncate", lambda: os.ftruncate(fd, size))
        elif r < 0.66:
            size = rnd.randrange(0, 200_000)
            rec("truncate", lambda: os.truncate(p(name), size))
        elif r < 0.71:
            other = rnd.choice(NAMES)
            rec("rename", lambda: os.rename(p(name), p(other)))
            if log[-1][1] is None and other != name:
                if other in fds:
                    orphans.append(fds.pop(other))
                if name in fds:
                    fds[other] = fds.pop(name)
        elif r < 0.75:
            rec("unlink", lambda: os.unlink(p(name)))
            if log[-1][1] is None and name in fds:
                orphans.append(fds.pop(name))
        elif r < 0.82:
            data = rnd.randbytes(rnd.randrange(1, 5000))

            def append():
                fd = os.open(p(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    return os.write(fd, data)
                finally:
                    os.close(fd)
            rec("append", append)
        elif r < 0.87:
            fd = any_fd()
            if fd is not None:
                def fst():
                    st = os.fstat(fd)
                    return (st.st_size, st.st_nlink, oct(st.st_mode))
                rec("fstat", fst)
        elif r < 0.90:
            mode = rnd.choice([0o600, 0o644, 0o755, 0o444])
            rec("chmod", lambda: os.chmod(p(name), mode))
        elif r < 0.93:
            rec("link", lambda: os.link(p(name), p(name + "L")))
        elif r < 0.96:
            if name in fds:
                os.close(fds.pop(name))
            elif orphans:
                os.close(orphans.pop(rnd.randrange(len(orphans))))
        else:
            def whole():
                with open(p(name), "rb") as f:
                    return hashlib.sha1(f.read()).hexdigest()
            rec("read", whole)
    for fd in list(fds.values()) + orphans:
        os.close(fd)
    return log


def tree(root: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            path = os.path.join(dirpath, n)
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha1(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path)
            # st_blocks: a hole stays a hole through the mount
            out[os.path.relpath(path, root)] = (oct(st.st_mode), st.st_size, st.st_nlink, st.st_uid, st.st_gid,
                                                st.st_blocks, digest,
                                                st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None)
    return out


def _without_mtimes(t: dict) -> dict:
    """A tree() without its file mtimes, which differ between the native run and the mounted one."""
    return {k: v[:-1] for k, v in t.items()}


@pytest.mark.parametrize("mode", MODES)
def test_fsx_random_sequence_matches_native(mode, tmp_path):
    with against_native(tmp_path, mode, lambda root: fsx(root, seed=1234, nops=3000)) as c:
        through_mount = tree(c.mnt)
    assert len(c.want) > 2000
    assert c.got == c.want
    native_tree = tree(c.native)
    assert any(v[5] * 512 < v[1] for v in native_tree.values()), "no file with a hole to compare"
    assert _without_mtimes(through_mount) == _without_mtimes(native_tree)
    assert _without_mtimes(tree(c.src)) == _without_mtimes(native_tree)
    # what the mount reports is what the source has, mtimes included
    assert through_mount == tree(c.src)


def _errnos(root: str) -> dict:
    os.makedirs(f"{root}/full/sub")
    open(f"{root}/file", "w").close()
    out = {}
    for name, fn in {
        "open_missing": lambda: os.open(f"{root}/missing", os.O_RDONLY),
        "stat_missing": lambda: os.stat(f"{root}/nodir/x"),
        "mkdir_exists": lambda: os.mkdir(f"{root}/full"),
        "create_excl": lambda: os.open(f"{root}/file", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
        "rmdir_notempty": lambda: os.rmdir(f"{root}/full"),
        "rmdir_file": lambda: os.rmdir(f"{root}/file"),
        "unlink_dir": lambda: os.unlink(f"{root}/full"),
        "file_as_dir": lambda: os.open(f"{root}/file/x", os.O_RDONLY),
        "rename_noreplace": lambda: _renameat2(f"{root}/file", f"{root}/full", 1),
        "rename_dir_over_nonempty": lambda: os.rename(f"{root}/full/sub", f"{root}/full"),
        "rename_into_own_subdir": lambda: os.rename(f"{root}/full", f"{root}/full/sub/x"),
        "rename_file_over_dir": lambda: os.rename(f"{root}/file", f"{root}/full"),
        "open_dir_for_write": lambda: os.open(f"{root}/full", os.O_WRONLY),
        "o_directory_on_file": lambda: os.open(f"{root}/file", os.O_RDONLY | os.O_DIRECTORY),
        "truncate_dir": lambda: os.truncate(f"{root}/full", 0),
        "link_dir": lambda: os.link(f"{root}/full", f"{root}/dirlink"),
        "readlink_file": lambda: os.readlink(f"{root}/file"),
        "symlink_exists": lambda: os.symlink("x", f"{root}/file"),
        "write_readonly_fd": lambda: _on_fd(f"{root}/file", os.O_RDONLY, lambda fd: os.write(fd, b"x")),
        "read_writeonly_fd": lambda: _on_fd(f"{root}/file", os.O_WRONLY, lambda fd: os.read(fd, 1)),
        "ftruncate_readonly_fd": lambda: _on_fd(f"{root}/file", os.O_RDONLY, lambda fd: os.ftruncate(fd, 0)),
        "listdir_file": lambda: os.listdir(f"{root}/file"),
        "name_too_long": lambda: os.open(f"{root}/{'n' * 256}", os.O_CREAT | os.O_WRONLY, 0o644),
    }.items():
        try:
            fn()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    return out


def _on_fd(path: str, flags: int, fn):
    fd = os.open(path, flags)
    try:
        return fn(fd)
    finally:
        os.close(fd)


def _renameat2(a: str, b: str, flags: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@pytest.mark.parametrize("mode", MODES)
def test_errors_are_the_native_ones(mode, tmp_path):
    with against_native(tmp_path, mode, _errnos) as c:
        pass
    want, got = c.want, c.got
    assert want["open_missing"] == "ENOENT" and want["mkdir_exists"] == "EEXIST"
    assert want["rmdir_notempty"] == "ENOTEMPTY" and want["rename_into_own_subdir"] == "EINVAL"
    assert want["write_readonly_fd"] == "EBADF" and want["name_too_long"] == "ENAMETOOLONG"
    assert got == want


def _getdents(path: str) -> list[tuple[str, int, int]]:
    """(name, d_type, d_ino) of every entry, from getdents64 itself (os.scandir hides d_type)."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(1 << 16)
    out = []
    try:
        while True:
            n = libc.syscall(217, fd, buf, len(buf))  # SYS_getdents64 on x86_64
            if n < 0:
                raise OSError(ctypes.get_errno(), "getdents64")
            if n == 0:
                return sorted(out)
            raw, pos = buf.raw[:n], 0
            while pos < n:
                ino, _off, reclen, dtype = struct.unpack_from("<QqHB", raw, pos)
                out.append((raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode(), dtype, ino))
                pos += reclen
    finally:
        os.close(fd)


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def _operations(root: str) -> dict:
    """symlink, readlink, chown, utimens, renameat2 flags, directory rename, rmdir, readdir,
    fsync: every result and what each left behind."""
    out = {}

    def rec(name, fn):
        try:
            out[name] = fn()
        except OSError as e:
            out[name] = errno.errorcode[e.errno]

    def read(p):
        with open(f"{root}/{p}") as f:
            return f.read()

    def lst(p):
        st = os.lstat(f"{root}/{p}")
        return [oct(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink]

    os.makedirs(f"{root}/dir/sub")
    for name, text in (("a", "alpha"), ("b", "bravo!"), ("dir/sub/f", "deep"), ("dir/g", "gee")):
        with open(f"{root}/{name}", "w") as f:
            f.write(text)
    rec("symlink", lambda: os.symlink("a", f"{root}/ln"))
    rec("symlink_dangling", lambda: os.symlink("../nowhere/x", f"{root}/dangling"))
    rec("symlink_exists", lambda: os.symlink("b", f"{root}/ln"))
    rec("readlink", lambda: [os.readlink(f"{root}/ln"), os.readlink(f"{root}/dangling")])
    rec("readlink_file", lambda: os.readlink(f"{root}/a"))
    rec("through_symlink", lambda: read("ln"))
    rec("through_dangling", lambda: read("dangling"))
    rec("symlink_lstat", lambda: [lst("ln"), lst("dangling")])
    rec("chown", lambda: os.chown(f"{root}/a", 65534, 100))
    rec("chown_gid_only", lambda: os.chown(f"{root}/b", -1, 65534))
    rec("lchown_symlink", lambda: os.lchown(f"{root}/ln", 1, 2))
    rec("after_chown", lambda: [lst("a"), lst("b"), lst("ln")])
    rec("utime_ns", lambda: os.utime(f"{root}/a", ns=(1_000_000_123, 2_000_000_456)))
    rec("utime_symlink", lambda: os.utime(f"{root}/ln", ns=(3_000_000_007, 4_000_000_009), follow_symlinks=False))
    rec("utime_dir", lambda: os.utime(f"{root}/dir", ns=(5_000_000_001, 6_000_000_002)))
    rec("after_utime", lambda: [(st.st_atime_ns, st.st_mtime_ns) for st in
                                (os.stat(f"{root}/a"), os.lstat(f"{root}/ln"), os.stat(f"{root}/dir"))])
    rec("utime_now", lambda: os.utime(f"{root}/b"))
    rec("utime_now_recent", lambda: abs(os.stat(f"{root}/b").st_mtime - time.time()) < 5)
    rec("exchange", lambda: _renameat2(f"{root}/a", f"{root}/b", RENAME_EXCHANGE))
    rec("after_exchange", lambda: [read("a"), read("b"), read("ln"), lst("a"), lst("b")])
    rec("exchange_missing", lambda: _renameat2(f"{root}/a", f"{root}/none", RENAME_EXCHANGE))
    rec("noreplace", lambda: _renameat2(f"{root}/a", f"{root}/c", RENAME_NOREPLACE))
    rec("after_noreplace", lambda: [os.path.exists(f"{root}/a"), read("c"), lst("c")])
    rec("rename_dir", lambda: os.rename(f"{root}/dir", f"{root}/moved"))
    rec("after_rename_dir", lambda: [os.path.exists(f"{root}/dir"), read("moved/sub/f"), read("moved/g"),
                                     sorted(os.listdir(f"{root}/moved"))])
    rec("exchange_dir_and_file", lambda: _renameat2(f"{root}/moved", f"{root}/c", RENAME_EXCHANGE))
    rec("after_exchange_dir", lambda: [read("moved"), read("c/g"), stat.S_ISDIR(os.stat(f"{root}/c").st_mode)])
    rec("rmdir_nonempty", lambda: os.rmdir(f"{root}/c"))
    rec("unlink_in_sub", lambda: os.unlink(f"{root}/c/sub/f"))
    rec("rmdir", lambda: os.rmdir(f"{root}/c/sub"))
    rec("after_rmdir", lambda: [os.path.exists(f"{root}/c/sub"), os.listdir(f"{root}/c")])
    rec("mkfifo", lambda: os.mkfifo(f"{root}/fifo", 0o640))
    rec("readdir", lambda: [(n, t) for n, t, _ in _getdents(root)])
    rec("readdir_ino", lambda: all(ino == os.lstat(f"{root}/{n}").st_ino
                                   for n, _, ino in _getdents(root) if n not in (".", "..")))
    rec("readdir_sub", lambda: [(n, t) for n, t, _ in _getdents(f"{root}/c")])

    def fsyncs():
        fd = os.open(f"{root}/synced", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x" * 10000)
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return read("synced") == "x" * 10000
    rec("fsync", fsyncs)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_operations_without_an_fsx_counterpart_match_native(mode, tmp_path):
    with against_native(tmp_path, mode, _operations) as c:
        through_mount = tree(c.mnt)
        fs_mnt, fs_src = os.statvfs(c.mnt), os.statvfs(c.src)
    want, got = c.want, c.got
    assert want["readlink"] == ["a", "../nowhere/x"] and want["after_exchange"][:3] == ["bravo!", "alpha", "bravo!"]
    assert want["after_chown"][0][1:3] == [65534, 100] and want["after_utime"][0] == (1_000_000_123, 2_000_000_456)
    assert ("fifo", 1) in want["readdir"] and ("ln", 10) in want["readdir"] and ("c", 4) in want["readdir"]
    assert want["rmdir"] is None and want["fsync"] is True
    assert got == want
    assert _without_mtimes(through_mount) == _without_mtimes(tree(c.native))
    assert through_mount == tree(c.src)
    for f in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(fs_mnt, f) == getattr(fs_src, f), f
    # free space moves with whatever else writes to the disk meanwhile
    assert abs(fs_mnt.f_bavail - fs_src.f_bavail) < fs_src.f_blocks // 100
    assert abs(fs_mnt.f_ffree - fs_src.f_ffree) < fs_src.f_files // 100


NOBODY_SCRIPT = r"""
import errno, json, os, sys
os.setgid(65534); os.setuid(65534)
root = sys.argv[1]
out = {}
def t(name, fn):
    try:
        fn(); out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
t("read_0600", lambda: open(root + "/secret").read())
t("read_0644", lambda: open(root + "/public").read())
t("create_in_root_dir", lambda: open(root + "/new", "w"))
t("create_in_own_dir", lambda: open(root + "/mine/new", "w").close())
t("write_0644", lambda: open(root + "/public", "a"))
t("unlink_in_root_dir", lambda: os.unlink(root + "/public"))
t("chmod_not_owner", lambda: os.chmod(root + "/public", 0o777))
t("list_0700_dir", lambda: os.listdir(root + "/private"))
t("stat_in_0700_dir", lambda: os.stat(root + "/private/inner"))
t("write_0444_own", lambda: open(root + "/mine/ro", "a"))
t("exec_0644", lambda: os.execv(root + "/public", ["x"]))
t("read_0600_again", lambda: open(root + "/secret").read())
t("utime_not_owner", lambda: os.utime(root + "/public", (1, 2)))
t("utime_now_not_owner", lambda: os.utime(root + "/public"))
t("chown_own_file", lambda: os.chown(root + "/mine/ro", 0, -1))
t("rename_from_sticky", lambda: os.rename(root + "/sticky/roots", root + "/sticky/mine"))
t("unlink_in_sticky", lambda: os.unlink(root + "/sticky/roots"))
t("rmdir_0700_dir", lambda: os.rmdir(root + "/private"))
st = os.stat(root + "/mine/new")
out["new_owner"] = [st.st_uid, st.st_gid]
print(json.dumps(out))
"""


def _prepare_perm_tree(root: str) -> None:
    with open(f"{root}/secret", "w") as f:
        f.write("s")
    os.chmod(f"{root}/secret", 0o600)
    with open(f"{root}/public", "w") as f:
        f.write("p")
    os.chmod(f"{root}/public", 0o644)
    os.mkdir(f"{root}/mine")
    os.chown(f"{root}/mine", 65534, 65534)
    os.mkdir(f"{root}/private", 0o700)
    open(f"{root}/private/inner", "w").close()
    with open(f"{root}/mine/ro", "w") as f:
        f.write("r")
    os.chown(f"{root}/mine/ro", 65534, 65534)
    os.chmod(f"{root}/mine/ro", 0o444)
    os.mkdir(f"{root}/sticky")
    os.chmod(f"{root}/sticky", 0o1777)
    open(f"{root}/sticky/roots", "w").close()
    os.chmod(root, 0o755)


def _run_json(script: str, arg: str) -> dict:
    """Run a Python script (which drops to nobody itself) with one argument; return the JSON it prints."""
    import json
    r = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _as_nobody(root: str) -> dict:
    return _run_json(NOBODY_SCRIPT, root)


@pytest.mark.parametrize("mode", MODES)
def test_permissions_for_a_non_root_user_are_native(mode):
    with world_dir() as base:
        with against_native(base, mode, _as_nobody, prepare=_prepare_perm_tree) as c:
            native, mnt, want, got = c.native, c.mnt, c.want, c.got
            # modes changed behind the mount: cached modes learn it from inotify, within 1.5 s
            for root in (native, c.src):
                os.chmod(f"{root}/secret", 0o644), os.chmod(f"{root}/public", 0o600)
                os.chmod(f"{root}/private", 0o755)
            want_after = _as_nobody(native)
            deadline = time.monotonic() + 1.5
            while (got_after := _as_nobody(mnt)) != want_after and time.monotonic() < deadline:
                time.sleep(0.1)
    assert want_after["read_0600"] == "ok" and want_after["read_0644"] == "EACCES"
    assert want_after["stat_in_0700_dir"] == "ok"
    assert got_after == want_after
    assert want["read_0600"] == "EACCES" and want["create_in_root_dir"] == "EACCES"
    assert want["new_owner"] == [65534, 65534]
    assert want["stat_in_0700_dir"] == want["exec_0644"] == want["write_0444_own"] == "EACCES"
    assert want["utime_not_owner"] == want["chown_own_file"] == want["unlink_in_sticky"] == "EPERM"
    assert got == want


SETGID_SCRIPT = r"""
import json, os, stat, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.umask(0o022)
root = sys.argv[1]
made = {}
for d in ("sgid", "own"):
    base = f"{root}/{d}"
    fd = os.open(f"{base}/file", os.O_CREAT | os.O_WRONLY, 0o644); os.close(fd)
    fd = os.open(f"{base}/sgid_exec", os.O_CREAT | os.O_WRONLY, 0o2755); os.close(fd)
    fd = os.open(f"{base}/suid_exec", os.O_CREAT | os.O_WRONLY, 0o4755); os.close(fd)
    os.mkdir(f"{base}/sub", 0o755)
    fd = os.open(f"{base}/sub/nested", os.O_CREAT | os.O_WRONLY, 0o640); os.close(fd)
    os.mkdir(f"{base}/sub/subsub")
    os.symlink("file", f"{base}/link")
    os.mkfifo(f"{base}/fifo", 0o600)
    for n in ("file", "sgid_exec", "suid_exec", "sub", "sub/nested", "sub/subsub", "link", "fifo"):
        st = os.lstat(f"{base}/{n}")
        made[f"{d}/{n}"] = [st.st_uid, st.st_gid, oct(st.st_mode)]
print(json.dumps(made))
"""


def _prepare_setgid_tree(root: str) -> None:
    os.chmod(root, 0o755)
    os.mkdir(f"{root}/sgid")
    os.chown(f"{root}/sgid", 0, 100)  # a group the user is not in
    os.chmod(f"{root}/sgid", 0o2777)
    os.mkdir(f"{root}/own")
    os.chown(f"{root}/own", 65534, 65534)


@pytest.mark.parametrize("mode", MODES)
def test_new_files_in_a_setgid_directory_take_its_group_as_natively(mode):
    """A setgid directory gives new files its group and new subdirectories its setgid bit;
    a set-id mode the caller may keep stays (the server creates as root, then chowns)."""
    with world_dir() as base:
        with against_native(base, mode, lambda root: _run_json(SETGID_SCRIPT, root),
                            prepare=_prepare_setgid_tree) as c:
            pass
        want, got = c.want, c.got
        source = {}
        for n in want:
            st = os.lstat(f"{c.src}/{n}")
            source[n] = [st.st_uid, st.st_gid, oct(st.st_mode)]
    assert want["sgid/file"][:2] == [65534, 100] and want["own/file"][:2] == [65534, 65534]
    assert int(want["sgid/sub"][2], 8) & stat.S_ISGID and int(want["sgid/sub/subsub"][2], 8) & stat.S_ISGID
    assert want["sgid/sub/nested"][1] == 100
    assert got == want
    assert source == want


@pytest.mark.parametrize("mode,timeout", [("cached", "1"), ("cached", "600"), ("fast", "600")])
def test_changes_to_source_show_through_a_cached_mount_within_its_timeout(mode, timeout, tmp_path):
    """With a 1 s timeout the kernel asks again; with 600 s only the inotify invalidation
    (FUSE_NOTIFY_INVAL_ENTRY/INODE) can make the change visible within the 1.5 s allowed."""
    src, mnt = source_and_mountpoint(tmp_path, {"a": "short", "gone": "x"})
    with mounted(str(src), str(mnt), mode, "--timeout", timeout):
        assert not os.path.exists(mnt / "new")  # a negative entry in fast mode
        assert (mnt / "a").read_text() == "short"
        assert os.path.exists(mnt / "gone")
        time.sleep(0.05)
        (src / "a").write_text("much longer now")
        (src / "new").write_text("fresh")
        (src / "gone").unlink()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if ((mnt / "a").read_text() == "much longer now" and os.path.exists(mnt / "new")
                    and not os.path.exists(mnt / "gone")):
                break
            time.sleep(0.05)
        assert (mnt / "a").read_text() == "much longer now"
        assert (mnt / "new").read_text() == "fresh"
        assert not os.path.exists(mnt / "gone")


def _reader(mnt: str) -> subprocess.Popen:
    code = ("import os,sys\nwhile True:\n    try:\n        open(sys.argv[1] + '/a').read(); os.stat(sys.argv[1])\n"
            "    except OSError as e:\n        print(e.errno); sys.exit(0)\n")
    return subprocess.Popen([sys.executable, "-c", code, mnt], stdout=subprocess.PIPE, text=True)


def _umount(mnt, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(BPFSCOPE + ["fuse", "umount", str(mnt), *extra], capture_output=True, text=True,
                          timeout=30)


def test_sigkill_of_the_server_hangs_nobody_and_umount_clears_it(tmp_path):
    src, mnt = source_and_mountpoint(tmp_path, {"a": "data"})
    with mounted(str(src), str(mnt), "plain") as server:
        reader = _reader(str(mnt))
        time.sleep(0.3)
        assert reader.poll() is None  # it is reading happily through the mount
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=5)
        out, _ = reader.communicate(timeout=5)  # returns: no process hangs on the dead server
        assert int(out) in (errno.ENOTCONN, errno.ECONNABORTED)  # in flight when it died: ECONNABORTED
        r = _umount(mnt)
        assert r.returncode == 0, r.stderr
        assert "the server had exited" in r.stdout, r.stdout
        assert str(mnt) not in fuse_mounts()
        assert os.listdir(mnt) == []  # the plain directory again


CRASHING_SERVER = r"""
import sys
from bpfscope.cli import main
from bpfscope.fuse.server import Server
def serve(self):
    raise RuntimeError("the server crashed on purpose")
Server.serve = serve
sys.exit(main(sys.argv[1:]))
"""


def test_a_crashed_background_server_leaves_its_error_in_the_log_that_mount_and_umount_name(tmp_path):
    """A background server's stderr goes to a log named at mount; after a crash `fuse umount` names
    it again and keeps it; a server with nothing to say leaves no log behind."""
    import re

    from bpfscope.fuse.cli import server_log
    src, mnt = source_and_mountpoint(tmp_path, {"a": "data"})
    log = server_log(str(mnt))
    try:
        r = subprocess.run([sys.executable, "-c", CRASHING_SERVER, "fuse", "mount", str(src), str(mnt), "--mode",
                            "plain"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert re.fullmatch(rf"mounted {src} on {mnt} \(mode plain, server pid \d+; its errors: {re.escape(log)}\)",
                            r.stdout.strip()), r.stdout
        deadline = time.monotonic() + 10
        while "RuntimeError: the server crashed on purpose" not in open(log).read() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = _umount(mnt)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"unmounted {mnt} (the server had exited: detached it; its errors: {log})"
        assert "RuntimeError: the server crashed on purpose" in open(log).read()

        r = subprocess.run(BPFSCOPE + ["fuse", "mount", str(src), str(mnt), "--mode", "plain"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and os.path.getsize(log) == 0, r.stderr  # a new mount starts a new log
        assert (mnt / "a").read_text() == "data"
        r = _umount(mnt)
        assert r.returncode == 0 and r.stdout.strip() == f"unmounted {mnt} (clean unmount)", (r.stdout, r.stderr)
        assert not os.path.exists(log)
    finally:
        if str(mnt) in fuse_mounts():
            umount(str(mnt))
        if os.path.exists(log):
            os.unlink(log)


def test_umount_aborts_a_hung_server(tmp_path):
    src, mnt = source_and_mountpoint(tmp_path, {"a": "data"})
    with mounted(str(src), str(mnt), "plain") as server:
        server.send_signal(signal.SIGSTOP)
        try:
            blocked = subprocess.Popen([sys.executable, "-c", f"import os; os.stat({str(mnt / 'b')!r})"],
                                       stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            assert blocked.poll() is None  # waiting on the stopped server
            r = _umount(mnt, "--timeout", "1")
            assert r.returncode == 0, r.stderr
            assert "did not answer within 1 s" in r.stdout, r.stdout
            assert blocked.wait(timeout=5) != 0
            err = blocked.stderr.read()  # aborted while in flight: ECONNABORTED
            assert "Errno 103" in err or "Errno 107" in err, err
            assert str(mnt) not in fuse_mounts()
        finally:
            server.send_signal(signal.SIGKILL)


HOLDER = r"""
import errno, os, sys
fd = os.open(sys.argv[1] + "/a", os.O_RDONLY)
os.chdir(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    try:
        print(os.pread(fd, 100, 0).decode(), os.listdir("."), flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


def _holder(mnt: str) -> subprocess.Popen:
    """A process with a file open and its working directory in the mount; each input line makes
    it read the file and list its directory (or print the errno)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, mnt], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline() == "ready\n"
    return p


def _ask(p: subprocess.Popen) -> str:
    p.stdin.write("go\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def test_umount_with_a_live_server_is_clean_refuses_a_busy_mount_and_the_server_exits_0(tmp_path):
    """A normal unmount: while a process has a file open and its cwd in the mount, one error line
    and the mount keeps working for it (nothing was aborted); once it is gone, the unmount
    ends the connection and the server exits 0 on its own."""
    src, mnt = source_and_mountpoint(tmp_path, {"a": "data"})
    with mounted(str(src), str(mnt), "plain") as server:
        holder = _holder(str(mnt))
        try:
            assert _ask(holder) == "data ['a']"
            r = _umount(mnt)
            assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.strip() == (f"bpfscope: umount {mnt}: busy (a process has a file open or its working "
                                        "directory in it); close them, or --force to abort their requests and "
                                        "detach it"), r.stderr
            assert str(mnt) in fuse_mounts()
            assert _ask(holder) == "data ['a']"  # not aborted: its requests are still answered
        finally:
            holder.stdin.close()
            holder.wait(timeout=10)
        r = _umount(mnt)
        assert r.returncode == 0 and r.stdout.strip() == f"unmounted {mnt} (clean unmount)", (r.stdout, r.stderr)
        assert str(mnt) not in fuse_mounts()
        assert server.wait(timeout=10) == 0
        assert server.stderr.read() == ""
    assert os.listdir(mnt) == [] and (src / "a").read_text() == "data"


def test_force_umount_of_a_busy_mount_aborts_and_detaches(tmp_path):
    src, mnt = source_and_mountpoint(tmp_path, {"a": "data"})
    with mounted(str(src), str(mnt), "plain") as server:
        holder = _holder(str(mnt))
        try:
            assert _umount(mnt).returncode != 0
            r = _umount(mnt, "--force")
            assert r.returncode == 0 and "aborted its requests and detached it (--force)" in r.stdout, r.stderr
            assert str(mnt) not in fuse_mounts()
            assert _ask(holder) in ("ENOTCONN", "ECONNABORTED")  # its file and cwd are of the dead connection
        finally:
            holder.stdin.close()
            holder.wait(timeout=10)
        assert server.wait(timeout=10) == 0
    assert os.listdir(mnt) == []


def test_mount_errors_are_one_line(tmp_path):
    r = subprocess.run(BPFSCOPE + ["fuse", "mount", str(tmp_path / "nope"), str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and r.stderr.strip() == f"bpfscope: source {tmp_path / 'nope'} is not a directory"
    r = _umount(tmp_path)
    assert r.returncode != 0 and "is not a fuse mount" in r.stderr and "Traceback" not in r.stderr


LISTER = r"""
import os, sys
d, rounds = sys.argv[1], int(sys.argv[2])
want = {f"stable-{i:05d}-{'x' * 40}" for i in range(int(sys.argv[3]))}
bad = 0
for _ in range(rounds):
    names = [n for n in os.listdir(d) if n.startswith("stable-")]
    if len(names) != len(want) or set(names) != want:
        bad += 1
print(bad)
"""


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_listings_of_one_directory_each_see_every_name_once(mode, tmp_path):
    """Two processes list one large directory over and over while a third creates and removes
    other names in it: each listing holds every stable name exactly once. (Zero-message
    opendir gives every reader the same handle, 0: a listing at offset 0 must not move the
    offsets another reader is halfway through.)"""
    src, mnt = source_and_mountpoint(tmp_path)
    n = 3000  # ~60 B per dirent: about 45 READDIR requests of 4 KiB per listing
    for i in range(n):
        (src / f"stable-{i:05d}-{'x' * 40}").touch()
    churn = ("import os, sys, time\nd = sys.argv[1]\nend = time.monotonic() + 60\ni = 0\n"
             "while time.monotonic() < end:\n    p = f'{d}/churn-{i % 50}'\n"
             "    if os.path.exists(p):\n        os.unlink(p)\n    else:\n        open(p, 'w').close()\n"
             "    i += 1\n")
    with mounted(str(src), str(mnt), mode):
        churner = subprocess.Popen([sys.executable, "-c", churn, str(mnt)])
        try:
            listers = [subprocess.Popen([sys.executable, "-c", LISTER, str(mnt), "60", str(n)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                       for _ in range(2)]
            results = [p.communicate(timeout=120) for p in listers]
        finally:
            churner.kill()
            churner.wait()
    for (out, err), p in zip(results, listers):
        assert p.returncode == 0, err
        assert int(out) == 0, f"{out.strip()} of 60 listings were wrong"


CREATE_OVER_SCRIPT = r"""
import errno, json, os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
out = {}
for name in ("locked", "open"):
    try:
        os.close(os.open(f"{sys.argv[1]}/{name}", os.O_WRONLY | os.O_CREAT, 0o600))
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
print(json.dumps(out))
"""


def test_create_over_a_name_that_appeared_behind_a_negative_entry_opens_it_as_natively():
    """fast caches "no such name"; a file that appears in SOURCE where inotify cannot see it (SOURCE
    is itself a FUSE mount) meets a CREATE. Natively an O_CREAT open of an existing file checks its
    permissions and keeps its owner: the server must not open it as root and chown it to the caller."""
    with world_dir() as base:
        data, inner, outer, native = f"{base}/data", f"{base}/inner", f"{base}/outer", f"{base}/native"
        for d in (data, inner, outer, native, f"{data}/pub", f"{native}/pub"):
            os.mkdir(d)
        os.chmod(f"{data}/pub", 0o777), os.chmod(f"{native}/pub", 0o777)

        def plant(root):
            for name, mode in (("locked", 0o644), ("open", 0o666)):
                with open(f"{root}/pub/{name}", "w") as f:
                    f.write("root's")
                os.chmod(f"{root}/pub/{name}", mode)

        def as_nobody(root):
            return _run_json(CREATE_OVER_SCRIPT, f"{root}/pub")

        def owners(root):
            return {n: (os.stat(f"{root}/pub/{n}").st_uid, open(f"{root}/pub/{n}").read()) for n in ("locked", "open")}

        plant(native)
        want = as_nobody(native)
        with mounted(data, inner, "plain"), mounted(inner, outer, "fast"):
            assert not os.path.exists(f"{outer}/pub/locked") and not os.path.exists(f"{outer}/pub/open")
            plant(data)  # behind both mounts
            got = as_nobody(outer)
            through = owners(outer)
        assert want == {"locked": "EACCES", "open": "ok"}
        assert got == want
        assert owners(data) == owners(native) == through == {"locked": (0, "root's"), "open": (0, "root's")}


SERVE_ON_FD = r"""
import sys
from bpfscope.fuse.modes import MODES
from bpfscope.fuse.server import Server
Server(int(sys.argv[1]), sys.argv[2], MODES["plain"], threads=1).serve()
"""


def test_a_request_the_server_cannot_serve_costs_that_request_not_its_worker(tmp_path):
    """The kernel never sends a directory handle the server did not give, nor a truncated
    request, so a socket plays /dev/fuse (one message per read, as the device gives one request)
    for the real server in its own process, with one worker thread: READDIR and READDIRPLUS of
    an unknown handle are answered EBADF, a GETATTR too short to parse EIO with one line on
    stderr, and the same worker answers the requests after them."""
    import socket
    import struct

    from bpfscope.fuse import protocol as P

    src = tmp_path / "src"
    src.mkdir()
    for name in ("alpha", "beta"):
        (src / name).write_text(name)
    kernel, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = subprocess.Popen([sys.executable, "-c", SERVE_ON_FD, str(dev.fileno()), str(src)],
                              pass_fds=[dev.fileno()], stderr=subprocess.PIPE, text=True)
    dev.close()
    kernel.settimeout(10)
    unique = 0

    def ask(opcode: int, nodeid: int, body: bytes) -> tuple[int, bytes]:
        nonlocal unique
        unique += 2
        kernel.send(P.IN_HEADER.pack(40 + len(body), opcode, unique, nodeid, 0, 0, os.getpid(), 0, 0) + body)
        reply = kernel.recv(1 << 20)
        length, error, got = P.OUT_HEADER.unpack_from(reply, 0)
        assert got == unique and length == len(reply), (opcode, got, unique)
        return error, reply[16:]

    def names(listing: bytes) -> list[str]:
        out, pos = [], 0
        while pos < len(listing):
            _ino, _off, namelen, _t = P.DIRENT.unpack_from(listing, pos)
            out.append(listing[pos + 24:pos + 24 + namelen].decode())
            pos += (24 + namelen + 7) & ~7
        return sorted(out)

    try:
        error, _ = ask(P.INIT, 0, P.INIT_IN.pack(7, 40, 1 << 17, 0, 0) + bytes(44))
        assert error == 0
        error, out = ask(P.OPENDIR, P.ROOT_ID, P.OPEN_IN.pack(os.O_RDONLY, 0))
        assert error == 0
        dh = P.OPEN_OUT.unpack_from(out, 0)[0]
        readdir = lambda fh: ask(P.READDIR, P.ROOT_ID, P.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))  # noqa: E731
        assert readdir(dh) == (0, readdir(dh)[1]) and names(readdir(dh)[1]) == [".", "..", "alpha", "beta"]
        assert readdir(dh + 1000) == (-errno.EBADF, b"")
        assert ask(P.READDIRPLUS, P.ROOT_ID, P.READ_IN.pack(dh + 1000, 0, 4096, 0, 0, 0, 0)) == (-errno.EBADF, b"")
        assert ask(P.GETATTR, P.ROOT_ID, b"") == (-errno.EIO, b"")  # fuse_getattr_in missing: struct.error
        # the one worker is alive: it still answers
        error, out = ask(P.GETATTR, P.ROOT_ID, P.GETATTR_IN.pack(0, 0, 0))
        assert error == 0 and P.ATTR_OUT.unpack_from(out, 0)[3] == os.stat(src).st_ino
        assert readdir(dh)[0] == 0 and names(readdir(dh)[1]) == [".", "..", "alpha", "beta"]
        assert ask(P.RELEASEDIR, P.ROOT_ID, P.RELEASE_IN.pack(dh, 0, 0, 0)) == (0, b"")
        assert readdir(dh) == (-errno.EBADF, b"")  # released: unknown now
    finally:
        kernel.close()  # end of file: the server returns
        try:
            server.wait(timeout=10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    err = server.stderr.read()
    assert server.returncode == 0, err
    assert err.splitlines() == ["bpfscope fuse: GETATTR request failed: error: unpack_from requires a buffer of at "
                                "least 16 bytes for unpacking 16 bytes at offset 0 (actual buffer size is 0)"], err

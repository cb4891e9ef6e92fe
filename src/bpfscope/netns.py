"""Network namespaces of the host, and running a call inside one.

A BPF iterator over TCP sockets (iter/tcp) walks the network namespace of the task that
creates it; the iterator keeps that namespace once created. To see the sockets of every
namespace, a short-lived thread joins each one (setns affects only the calling thread),
creates the iterator there and hands back its fd."""

from __future__ import annotations

import ctypes
import os
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def network_namespaces() -> dict[int, str]:
    """{namespace inode: a path that opens it}: every namespace a process is in, plus the
    named ones of `ip netns` (which may have no process)."""
    found: dict[int, str] = {}
    candidates = []
    try:
        candidates += [f"/run/netns/{n}" for n in sorted(os.listdir("/run/netns"))]
    except OSError:
        pass
    candidates += [f"/proc/{p}/ns/net" for p in os.listdir("/proc") if p.isdigit()]
    for path in candidates:
        try:
            ino = os.stat(path).st_ino
        except OSError:  # the process exited, or the name is not a mount
            continue
        found.setdefault(ino, path)
    return found


def own_namespace() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def call_in(paths: list[str], fn) -> list:
    """fn() run inside each network namespace in turn, in one thread that leaves the
    caller's namespace alone; an entry is None where the namespace went away or fn failed
    with OSError (a namespace whose last process just exited)."""
    results: list = []
    error: list[BaseException] = []

    def run() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    results.append(None)
                    continue
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        results.append(None)
                        continue
                    try:
                        results.append(fn())
                    except OSError:
                        results.append(None)
                finally:
                    os.close(fd)
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the exporter's network namespace")
        except BaseException as exc:  # surfaced in the caller's thread
            error.append(exc)
        finally:
            os.close(home)

    t = threading.Thread(target=run, name="bpfscope-netns", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return results

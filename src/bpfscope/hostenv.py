"""Preconditions every BPF command shares: root, BTF, tracefs and bpffs mounted."""

from __future__ import annotations

import ctypes
import os

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"


class HostError(Exception):
    """A precondition the user can fix; the CLI prints it as one line."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostError("root is needed to load BPF programs (run as root or with sudo)", 2)


def require_btf() -> None:
    if not os.path.exists(BTF_VMLINUX):
        raise HostError(f"this kernel has no BTF ({BTF_VMLINUX} missing): bpfscope needs CONFIG_DEBUG_INFO_BTF=y", 1)


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def _mount(source: str, target: str, fstype: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise HostError(f"cannot mount {fstype} on {target}: {os.strerror(err)}", 1)


def ensure_mounts() -> None:
    """Mount tracefs and bpffs when missing (fresh machines have neither)."""
    if not is_mounted(TRACEFS) and not os.path.exists(f"{TRACEFS}/events"):
        _mount("tracefs", TRACEFS, "tracefs")
    if not is_mounted(BPFFS):
        _mount("bpf", BPFFS, "bpf")


def prepare_bpf() -> None:
    """Everything a BPF-loading command checks first, in the order a user fixes them."""
    require_root()
    require_btf()
    ensure_mounts()


def cgroup2_root() -> str | None:
    """Where cgroup v2 is mounted: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "cgroup2":
                return parts[1]
    return None

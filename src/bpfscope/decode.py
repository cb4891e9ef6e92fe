"""Label decoders shared by every domain: small, pure, each tested alone.

Kernel numbers become the names a user reads (syscall numbers, ...). Sources are
read from the machine at run time so they follow the running system.
"""

from __future__ import annotations

import functools
import os
import re

_UNISTD = {
    "x86_64": ["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"],
    "aarch64": ["/usr/include/asm-generic/unistd.h"],
}
_NR_RE = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$", re.M)


@functools.cache
def syscall_table(machine: str | None = None) -> dict[int, str]:
    """{number: name} from the UAPI header of this architecture (linux-libc-dev)."""
    for path in _UNISTD.get(machine or os.uname().machine, []):
        try:
            with open(path) as f:
                return {int(nr): name for name, nr in _NR_RE.findall(f.read())}
        except OSError:
            continue
    return {}


def syscall_name(nr: int) -> str:
    """'getppid' for 110 on x86_64; 'syscall_N' when the table lacks it (never a bare number)."""
    return syscall_table().get(nr) or f"syscall_{nr}"


def syscall_number(name: str) -> int | None:
    for nr, n in syscall_table().items():
        if n == name:
            return nr
    return None


def comm_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def c_string(raw) -> str:
    """A NUL-terminated C char array (bytes or list of ints) as str."""
    if isinstance(raw, list):
        raw = bytes(b & 0xFF for b in raw)
    if isinstance(raw, (bytes, bytearray)):
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    return str(raw)


# ---- network --------------------------------------------------------------------------

AF_INET, AF_INET6 = 2, 10

# include/net/tcp_states.h: stable UAPI-visible numbering (ss and /proc/net/tcp use it)
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}
# ss's short names, accepted wherever a state is typed
_TCP_STATE_ALIASES = {"ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
                      "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
                      "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK"}

# enum tcp_ca_state (include/net/tcp.h)
TCP_CA_STATES = {0: "Open", 1: "Disorder", 2: "CWR", 3: "Recovery", 4: "Loss"}


def inet_addr(raw: bytes, family: int) -> str:
    """An address as the kernel stores it (network order; IPv4 in the first 4 bytes)."""
    import ipaddress

    if family == AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    ip = ipaddress.IPv6Address(bytes(raw[:16]))
    if ip.ipv4_mapped:  # as ss prints it
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def tcp_state_name(state: int) -> str:
    return TCP_STATES.get(state, f"state_{state}")


def tcp_state_number(name: str) -> int | None:
    """'ESTABLISHED', 'established' or ss's 'estab' -> 1; None when unknown."""
    key = name.strip().upper()
    key = _TCP_STATE_ALIASES.get(key, key).replace("-", "_")
    for nr, n in TCP_STATES.items():
        if n == key:
            return nr
    return None


def tcp_ca_state_name(ca_state: int) -> str:
    return TCP_CA_STATES.get(ca_state, f"ca_{ca_state}")


def port_class(port: int) -> str:
    """A bounded label for a port: well-known ports by number, the rest by range."""
    if port < 1024:
        return str(port)
    return "registered" if port < 49152 else "ephemeral"


@functools.cache
def drop_reasons() -> dict[int, str]:
    """{value: name} of the running kernel's enum skb_drop_reason, without the
    SKB_DROP_REASON_ prefix (the numbering shifts between kernels: never hard-code it)."""
    from .bpf.btf import Btf

    btf = Btf.vmlinux()
    try:
        values = btf.enum_values("skb_drop_reason")
    finally:
        btf.close()
    return {v: n.removeprefix("SKB_DROP_REASON_") for v, n in values.items()}


def drop_reason_name(reason: int, table: dict[int, str] | None = None) -> str:
    """'NETFILTER_DROP' for the kernel's value of SKB_DROP_REASON_NETFILTER_DROP."""
    names = drop_reasons() if table is None else table
    return names.get(reason) or f"reason_{reason}"

"""The load balancer's kernel state: programs attached to a cgroup and maps, all pinned
under one bpffs directory so they outlive the command (or controller) that set them.

A service change writes the new backends under a fresh service id, then switches the
service entry in one map update, then removes the old backends: a connect() sees the
old set or the new one, never half of either.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..bpf import BpfObject, PinnedMap
from ..decode import c_string
from .alias import ONE, alias_table, shares
from .config import ConfigError, Service

DEFAULT_PIN_DIR = "/sys/fs/bpf/bpfscope/lb"
MAPS = ("lb_services", "lb_backends", "lb_origins", "lb_peers", "lb_choices", "lb_no_backend", "lb_buckets",
        "lb_limited", "lb_canary_clients", "lb_active", "lb_passive", "lb_affinity", "lb_drain")
CANARY_BASE = 1 << 20  # LB_CANARY_BASE: index of a service's first canary backend
PROGRAMS = ("lb_connect4", "lb_connect6", "lb_getpeername4", "lb_getpeername6", "lb_sendmsg4", "lb_sendmsg6",
            "lb_recvmsg4", "lb_recvmsg6")
# Attached (once, then kept until reset) when a service first needs it: every TCP state
# change of the machine runs it, so services without least-conn or passive health don't pay.
TRACKER = "lb_sock_state"
ALGOS = {"random": 0, "weighted": 1, "least-conn": 2}
F_TRACK, F_PASSIVE, F_AFFINITY_CGROUP, F_AFFINITY_NETNS, F_ORIGIN, F_PEER = 1, 2, 4, 8, 16, 32  # LB_F_*
LIMIT_ACTIONS = {"refuse": 0, "degrade": 1}
PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
# A connect that read a service entry just before it was switched still looks up the old
# backends; they are removed only after this grace (BPF programs run in microseconds).
GRACE_S = 0.05
ID_TWIN = 1 << 31  # upsert() alternates a service between id and id ^ ID_TWIN


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class Policy:
    """The per-service choices besides the tables: flags, backup service VIP, affinity."""
    flags: int = 0
    backup: Endpoint | None = None
    affinity_ns: int = 0

    @classmethod
    def of(cls, svc: Service, vips: dict[str, Endpoint], origins: bool = False) -> "Policy":
        """origins: record every socket's VIP and backend (draining needs them)."""
        flags = F_TRACK if svc.algorithm == "least-conn" else 0
        if svc.passive_failures:
            flags |= F_PASSIVE
        # socket storage (allocated per connect) only where the record must live with the
        # socket; getpeername alone needs only the VIP, kept in a slot of lb_peers
        if origins or flags or svc.protocol == "udp":
            flags |= F_ORIGIN
        elif svc.getpeername == "vip":
            flags |= F_PEER
        affinity_ns = 0
        if svc.affinity:
            flags |= F_AFFINITY_NETNS if svc.affinity.by == "netns" else F_AFFINITY_CGROUP
            affinity_ns = int(svc.affinity.timeout * 1e9)
        return cls(flags, vips.get(svc.fallback) if svc.fallback else None, affinity_ns)

    @classmethod
    def in_kernel(cls, cur) -> "Policy":
        return cls(int(cur.flags), _endpoint(cur.backup) if cur.backup.family else None, int(cur.affinity_ns))


@dataclass
class ApplyResult:
    added: list[str]
    changed: list[str]
    unchanged: list[str]
    removed: list[str]


def _fill_addr(dst, ep: Endpoint) -> None:
    ip = ipaddress.ip_address(ep.address)
    raw = ip.packed.ljust(16, b"\0")
    ctypes.memmove(ctypes.addressof(dst.addr), raw, 16)
    dst.port = socket.htons(ep.port)
    dst.proto = PROTOS[ep.protocol]
    dst.family = socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _endpoint(addr) -> Endpoint:
    raw = bytes(addr.addr)
    ip = ipaddress.ip_address(raw[:4] if addr.family == socket.AF_INET else raw)
    proto = "udp" if addr.proto == socket.IPPROTO_UDP else "tcp"
    return Endpoint(str(ip), socket.ntohs(addr.port), proto)


class LbKernel:
    def __init__(self, pin_dir: str = DEFAULT_PIN_DIR, origins: bool = False):
        """origins: record every redirected socket (draining closes only recorded ones)."""
        self.pin_dir = Path(pin_dir)
        self.origins = origins
        self.obj = BpfObject.open("lb", load=False)  # types and programs; maps come from pins
        self._maps: dict[str, PinnedMap] = {}

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        self.obj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- install / reset -----------------------------------------------------------

    @property
    def installed(self) -> bool:
        return (self.pin_dir / "lb_services").exists()

    def _link_pin(self, prog: str) -> Path:
        return self.pin_dir / f"link_{prog}"

    def _load(self) -> None:
        """Load the programs here, on the pinned maps (those not pinned yet are created)."""
        if self.obj.loaded:
            return
        for name in MAPS:
            self.obj.maps[name].reuse_pinned(str(self.pin_dir / name))
        if not kernel_has("bpf_sock_destroy"):
            self.obj.programs["lb_drain_iter"].autoload = False
        self.obj.load()

    def install(self, cgroup: str) -> None:
        """Load, pin the maps and attach the programs to `cgroup` (pinned links), once."""
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        self._load()
        for name in MAPS:
            if not (self.pin_dir / name).exists():
                self.obj.maps[name].pin(str(self.pin_dir / name))
        for prog in PROGRAMS:
            if not self._link_pin(prog).exists():
                self.obj.programs[prog].attach_cgroup(cgroup).pin(str(self._link_pin(prog)))

    def _track(self) -> None:
        """Attach the connection tracker (pinned), unless it already is."""
        if not self._link_pin(TRACKER).exists():
            self._load()
            self.obj.programs[TRACKER].attach().pin(str(self._link_pin(TRACKER)))

    @property
    def tracking(self) -> bool:
        return self._link_pin(TRACKER).exists()

    def reset(self) -> list[str]:
        """Unpin every link (which detaches it) and map; remove the directory."""
        removed = []
        if not self.pin_dir.exists():
            return removed
        self.close_maps()
        for path in sorted(self.pin_dir.iterdir()):
            path.unlink()
            removed.append(path.name)
        self.pin_dir.rmdir()
        return removed

    def close_maps(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def map(self, name: str) -> PinnedMap:
        if name not in self._maps:
            self._maps[name] = PinnedMap(self.obj.maps[name], str(self.pin_dir / name))
        return self._maps[name]

    # ---- services ------------------------------------------------------------------

    def services(self) -> dict[Endpoint, object]:
        """Every service entry, read in one batch."""
        return {_endpoint(key): val for key, val in self.map("lb_services").batch()}

    def backends(self, service_id: int, count: int, base: int = 0) -> list[tuple[Endpoint, int, int]]:
        """[(backend, prob, alias)] of one service's choice table (base: CANARY_BASE for the canary's)."""
        bmap = self.map("lb_backends")
        out = []
        for i in range(count):
            b = bmap.lookup(bmap.key_type(service_id=service_id, index=base + i))
            if b is not None:
                out.append((_endpoint(b.to), b.prob, b.alias))
        return out

    @classmethod
    def _tables(cls, svc: Service) -> tuple[list, list, int]:
        """(main table, canary table, canary share as a u32 threshold)."""
        if not svc.canary:
            return cls._table(svc), [], 0
        version = svc.canary.version
        main = svc.model_copy(update={"backends": [b for b in svc.backends if b.version != version]})
        canary = svc.model_copy(update={"backends": [b for b in svc.backends if b.version == version]})
        return cls._table(main), cls._table(canary), min(ONE - 1, int(svc.canary.percent / 100 * ONE))

    def _write(self, sid: int, svc: Service, limit, value, policy: Policy = Policy()) -> None:
        """Write a service's tables under `sid` and fill its map value (not yet switched)."""
        bmap = self.map("lb_backends")
        main, canary, share = self._tables(svc)
        for base, table in ((0, main), (CANARY_BASE, canary)):
            for i, (ep, prob, alias) in enumerate(table):
                b = bmap.value_type()
                _fill_addr(b.to, ep)
                b.prob, b.alias = prob, alias
                bmap.update(bmap.key_type(service_id=sid, index=base + i), b)
                if base == 0 and len(main) <= len(value.table):  # also inside the entry (LB_INLINE)
                    ctypes.memmove(ctypes.addressof(value.table[i]), ctypes.addressof(b), ctypes.sizeof(b))
        value.id, value.count, value.algo, value.name = sid, len(main), ALGOS[svc.algorithm], svc.name.encode()
        value.canary_count, value.canary_share = len(canary), share
        value.rate_per_s, value.burst, value.limit_action, fallback = limit
        if fallback is not None:
            _fill_addr(value.fallback, fallback)
        value.flags, value.affinity_ns = policy.flags, policy.affinity_ns
        if policy.backup is not None:
            _fill_addr(value.backup, policy.backup)

    def _drop(self, cur) -> None:
        bmap = self.map("lb_backends")
        for base, count in ((0, int(cur.count)), (CANARY_BASE, int(cur.canary_count))):
            for i in range(count):
                bmap.delete(bmap.key_type(service_id=int(cur.id), index=base + i))

    def _same(self, cur, svc: Service, limit, policy: Policy) -> bool:
        main, canary, share = self._tables(svc)
        return (c_string(cur.name) == svc.name and cur.algo == ALGOS[svc.algorithm]
                and self._kernel_limit(cur) == limit and cur.canary_share == share
                and Policy.in_kernel(cur) == policy
                and self.backends(cur.id, cur.count) == main
                and self.backends(cur.id, cur.canary_count, CANARY_BASE) == canary)

    def _sync_canary_clients(self, services: list[Service]) -> None:
        """The (VIP, cgroup id) pairs of every canary's client cgroups, and no others."""
        m = self.map("lb_canary_clients")
        wanted = {}
        for svc in services:
            for path in (svc.canary.cgroups if svc.canary else []):
                try:
                    cgid = os.stat(path).st_ino  # a cgroup v2 directory's inode is its id
                except OSError as exc:
                    raise ConfigError(f"service {svc.name}: canary cgroup {path}: {exc.strerror}") from None
                wanted[(Endpoint(svc.vip, svc.port, svc.protocol), cgid)] = None
        for key in list(m.keys()):
            if (_endpoint(key.vip), int(key.cgroup_id)) not in wanted:
                m.delete(key)
        for vip, cgid in wanted:
            key = m.key_type()
            _fill_addr(key.vip, vip)
            key.cgroup_id = cgid
            m.update(key, 1)

    @staticmethod
    def _table(svc: Service) -> list[tuple[Endpoint, int, int]]:
        live = [b for b in svc.backends if b.weight > 0]
        if not live:
            return []
        eps = [Endpoint(b.address, b.port, svc.protocol) for b in live]
        if svc.algorithm != "weighted":  # random and least-conn: every entry keeps itself
            return [(ep, ONE - 1, i) for i, ep in enumerate(eps)]
        return [(ep, prob, alias) for ep, (prob, alias) in zip(eps, alias_table([b.weight for b in live]))]

    @staticmethod
    def _limit(svc: Service, vips: dict[str, Endpoint]) -> tuple[int, int, int, Endpoint | None]:
        """(rate_per_s, burst, action, fallback VIP) of a service; zeros without a limit."""
        rl = svc.rate_limit
        if rl is None:
            return 0, 0, 0, None
        return rl.per_second, rl.burst or rl.per_second, LIMIT_ACTIONS[rl.action], \
            vips.get(rl.fallback) if rl.fallback else None

    @staticmethod
    def _kernel_limit(cur) -> tuple[int, int, int, Endpoint | None]:
        fallback = _endpoint(cur.fallback) if cur.rate_per_s and cur.fallback.family else None
        return int(cur.rate_per_s), int(cur.burst), int(cur.limit_action), fallback

    def apply(self, services: list[Service]) -> ApplyResult:
        """Make the kernel's services exactly `services` (the file is the whole truth)."""
        svcs, buckets = self.map("lb_services"), self.map("lb_buckets")
        vips = {s.name: Endpoint(s.vip, s.port, s.protocol) for s in services}
        current = self.services()
        used = {int(v.id) & ~ID_TWIN for v in current.values()}  # an id and its twin go together
        next_id = 1
        stale: list = []
        result = ApplyResult([], [], [], [])
        wanted = set()
        if any(Policy.of(s, vips, self.origins).flags & (F_TRACK | F_PASSIVE) for s in services):
            self._track()  # before the first connect that needs it
        for svc in services:
            vip = Endpoint(svc.vip, svc.port, svc.protocol)
            wanted.add(vip)
            limit = self._limit(svc, vips)
            policy = Policy.of(svc, vips, self.origins)
            cur = current.get(vip)
            if cur is not None and self._same(cur, svc, limit, policy):
                result.unchanged.append(svc.name)
                continue
            while next_id in used:
                next_id += 1
            sid, next_id = next_id, next_id + 1
            used.add(sid)  # ids from apply never have the twin bit
            key, val = svcs.key_type(), svcs.value_type()
            _fill_addr(key, vip)
            self._write(sid, svc, limit, val, policy)
            if cur is None or self._kernel_limit(cur) != limit:
                buckets.delete(key)  # a new limit starts with a full bucket
            svcs.update(key, val)  # the switch: one update
            if cur is not None:
                stale.append(cur)
                result.changed.append(svc.name)
            else:
                result.added.append(svc.name)
        for vip, cur in current.items():
            if vip not in wanted:
                key = svcs.key_type()
                _fill_addr(key, vip)
                svcs.delete(key)
                buckets.delete(key)
                stale.append(cur)
                result.removed.append(c_string(cur.name))
        self._sync_canary_clients(services)
        if stale:
            time.sleep(GRACE_S)
            for cur in stale:
                self._drop(cur)
        return result

    def upsert(self, svc: Service, fallback: Endpoint | None = None) -> None:
        """Add or change one service without reading the others: the cost of one update
        (new table under a fresh id, one switch, old table removed), whatever N is."""
        svcs = self.map("lb_services")
        vip = Endpoint(svc.vip, svc.port, svc.protocol)
        key = svcs.key_type()
        _fill_addr(key, vip)
        cur = svcs.lookup(key)
        # an existing service flips the top bit of its id: free by construction (apply never
        # hands out an id whose twin is in use), so no scan of the other N services
        sid = (int(cur.id) ^ ID_TWIN) if cur is not None else self._free_id()
        val = svcs.value_type()
        rate, burst, action, _ = self._limit(svc, {})
        policy = Policy.of(svc, {}, self.origins)
        if policy.flags & (F_TRACK | F_PASSIVE):
            self._track()
        self._write(sid, svc, (rate, burst, action, fallback), val, policy)
        svcs.update(key, val)
        if cur is not None:
            time.sleep(GRACE_S)
            self._drop(cur)

    def _free_id(self) -> int:
        """An id that neither a service nor its twin uses (reads every service once)."""
        ids = {int(v.id) & ~ID_TWIN for _, v in self.map("lb_services").batch()}
        return next(i for i in range(1, len(ids) + 2) if i not in ids)

    def delete(self, name: str) -> bool:
        """Remove one service (entry first, then its tables, bucket and canary clients)."""
        svcs, buckets, clients = self.map("lb_services"), self.map("lb_buckets"), self.map("lb_canary_clients")
        for vip, cur in self.services().items():
            if c_string(cur.name) != name:
                continue
            key = svcs.key_type()
            _fill_addr(key, vip)
            svcs.delete(key)
            buckets.delete(key)
            for ck in list(clients.keys()):
                if _endpoint(ck.vip) == vip:
                    clients.delete(ck)
            time.sleep(GRACE_S)
            self._drop(cur)
            return True
        return False

    # ---- status --------------------------------------------------------------------

    def choices(self) -> dict[Endpoint, int]:
        stats = self.map("lb_choices")
        return {_endpoint(k.backend): sum(stats.cpu_values(v)) for k, v in stats.batch()}

    def limited(self) -> dict[str, int]:
        m = self.map("lb_limited")
        return {"refused": sum(m.cpu_values(m.lookup(0))), "degraded": sum(m.cpu_values(m.lookup(1)))}

    def no_backend_refusals(self) -> int:
        m = self.map("lb_no_backend")
        return sum(m.cpu_values(m.lookup(0)))

    def active(self) -> dict[Endpoint, int]:
        """Open connections per backend of least-conn services."""
        return {_endpoint(k): int(v.value if hasattr(v, "value") else v) for k, v in self.map("lb_active").batch()}

    def passive(self) -> dict[Endpoint, tuple[int, int, int]]:
        """(failed in a row, failed, succeeded) connects per backend of passive-health services."""
        return {_endpoint(k): (int(v.consecutive), int(v.failed), int(v.succeeded))
                for k, v in self.map("lb_passive").batch()}

    def forget_failures(self, ep: Endpoint) -> None:
        """A backend back in the choice starts with no failure in a row."""
        key = self.map("lb_passive").key_type()
        _fill_addr(key, ep)
        self.map("lb_passive").delete(key)

    def drain(self, eps: list[Endpoint]) -> int:
        """Close every remaining TCP connection (of this network namespace) redirected to
        `eps`; the number closed. Needs the kernel's bpf_sock_destroy (6.5+)."""
        self._load()
        prog = self.obj.programs["lb_drain_iter"]
        if not prog.autoload:
            raise ConfigError("draining needs bpf_sock_destroy, which this kernel lacks (Linux 6.5+)")
        m = self.map("lb_drain")
        keys = []
        for ep in eps:
            key = m.key_type()
            _fill_addr(key, ep)
            m.update(key, 1)
            keys.append(key)
        try:
            return len(prog.run_iter())  # one byte per socket closed
        finally:
            for key in keys:
                m.delete(key)

    def status(self) -> list[dict]:
        chosen = self.choices()
        active = self.active()
        passive = self.passive()
        rows = []
        current = self.services()
        for vip, cur in sorted(current.items(), key=lambda kv: c_string(kv[1].name)):
            table = self.backends(cur.id, cur.count)
            share = shares([(p, a) for _, p, a in table]) if table else []
            canary = self.backends(cur.id, cur.canary_count, CANARY_BASE)
            policy = Policy.in_kernel(cur)
            algo = {v: k for k, v in ALGOS.items()}.get(int(cur.algo), "random")

            def extra(ep: Endpoint) -> dict:
                out = {}
                if policy.flags & F_TRACK:
                    out["active"] = active.get(ep, 0)
                if policy.flags & F_PASSIVE:
                    fails, failed, ok = passive.get(ep, (0, 0, 0))
                    out["passive"] = {"failed_in_a_row": fails, "failed": failed, "succeeded": ok}
                return out

            rows.append({
                "name": c_string(cur.name), "vip": vip.address, "port": vip.port, "protocol": vip.protocol,
                "algorithm": algo,
                "rate_per_s": int(cur.rate_per_s) or None,
                "fallback": self._name_of(policy.backup, current) if policy.backup else None,
                "getpeername": "vip" if policy.flags & (F_ORIGIN | F_PEER) else "backend",
                "affinity": {"by": "netns" if policy.flags & F_AFFINITY_NETNS else "cgroup",
                             "timeout_s": policy.affinity_ns / 1e9} if policy.affinity_ns else None,
                "backends": [{"address": ep.address, "port": ep.port, "share": round(s, 4),
                              "choices": chosen.get(Endpoint(ep.address, ep.port, vip.protocol), 0), **extra(ep)}
                             for (ep, _, _), s in zip(table, share)],
                "canary": {"percent": round(cur.canary_share / ONE * 100, 3),
                           "backends": [{"address": ep.address, "port": ep.port,
                                         "choices": chosen.get(Endpoint(ep.address, ep.port, vip.protocol), 0)}
                                        for ep, _, _ in canary]} if canary else None,
            })
        return rows


    @staticmethod
    def _name_of(vip: Endpoint, current: dict) -> str:
        cur = current.get(vip)
        return c_string(cur.name) if cur is not None else f"{vip.address}:{vip.port}"


def kernel_has(func: str) -> bool:
    """Whether the running kernel's BTF has a function (a kfunc) of this name."""
    try:
        return f"\0{func}\0".encode() in Path("/sys/kernel/btf/vmlinux").read_bytes()
    except OSError:
        return False


def pin_dir_default() -> str:
    return os.environ.get("BPFSCOPE_LB_PIN_DIR", DEFAULT_PIN_DIR)

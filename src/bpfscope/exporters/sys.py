"""bpfscope sys: system calls per process and syscall, counted in the kernel.

Kernel side: bpf/sys.bpf.c (raw_tp sys_enter). Most calls are counted in a per-CPU
direct-mapped table of cumulative slots (`slots`), the rest in a per-CPU hash
(`counts`). Each interval both are read in one batch syscall each: the slots give
deltas against the previous read, the hash is emptied as it is read. Either way every
row is the count for that interval only.
"""

from __future__ import annotations

import os
from collections import Counter

from prometheus_client.core import CounterMetricFamily
from rich.table import Table
from rich.text import Text

from ..bpf import BpfObject, Map
from ..decode import c_string, comm_of, syscall_name
from ..schema import make_record
from .base import Exporter


Pair = tuple[int, int]  # (tgid, syscall number)


class SlotTable:
    """User-space side of the kernel's per-CPU direct-mapped slots: deltas per interval,
    and freeing the slots of processes that have exited."""

    def __init__(self, slots: Map):
        self.map = slots
        self.prev: dict[tuple[int, int], tuple[int, int, int]] = {}  # (cpu, idx) -> (tgid, nr, count)

    def deltas(self) -> dict[Pair, tuple[int, str]]:
        out: dict[Pair, tuple[int, str]] = {}
        current: dict[tuple[int, int], tuple[int, int, int]] = {}
        owners: dict[int, set[int]] = {}  # idx -> tgids owning it on some CPU
        for key, per_cpu in self.map.batch():
            idx = key.value
            for cpu, slot in enumerate(self.map.cpu_values(per_cpu)):
                if not slot.count:
                    continue
                tgid, nr, count = slot.tgid, slot.nr, slot.count
                current[(cpu, idx)] = (tgid, nr, count)
                owners.setdefault(idx, set()).add(tgid)
                before = self.prev.get((cpu, idx))
                delta = count - (before[2] if before and before[:2] == (tgid, nr) else 0)
                if delta > 0:
                    n, comm = out.get((tgid, nr), (0, ""))
                    out[(tgid, nr)] = (n + delta, comm or c_string(slot.comm))
        self.prev = current
        self._free_exited(owners)
        return out

    def _free_exited(self, owners: dict[int, set[int]]) -> None:
        # Only when every owner of the index has exited: a live owner's increments would be
        # overwritten. (A brand-new claim racing with the write can lose its first counts.)
        empty = self.map.value_type()
        for idx, tgids in owners.items():
            if not any(os.path.exists(f"/proc/{t}") for t in tgids):
                self.map.update(idx, empty)
                for cpu in range(self.map.ncpus):
                    self.prev.pop((cpu, idx), None)


class SysExporter(Exporter):
    name = "sys"
    domain = "system"

    def __init__(self, pid: int | None = None, comm: str | None = None, top: int = 20, slots: int = 4096):
        if slots < 1 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.slots = slots
        self.pid = pid
        self.comm = comm
        self.top = top
        self.obj: BpfObject | None = None
        self.totals: Counter[str] = Counter()  # per syscall name, for Prometheus (bounded labels)
        self.missed_total = 0

    def open(self) -> None:
        self.obj = BpfObject.open("sys", rodata={"target_tgid": self.pid or 0, "self_tgid": os.getpid(),
                                                 "slot_mask": self.slots - 1},
                                  max_entries={"slots": self.slots})
        self.slot_table = SlotTable(self.obj.maps["slots"])
        self.obj.attach_all()

    def _read(self) -> dict[Pair, tuple[int, str]]:
        rows = self.slot_table.deltas()
        counts = self.obj.maps["counts"]
        for key, per_cpu in counts.batch(delete=True):
            count, comm = 0, ""
            for val in counts.cpu_values(per_cpu):
                count += val.count
                comm = comm or c_string(val.comm)
            before, before_comm = rows.get((key.tgid, key.nr), (0, ""))
            rows[(key.tgid, key.nr)] = (before + count, before_comm or comm)
        return rows

    def collect(self, elapsed_s: float) -> list[dict]:
        rows = self._read()
        missed = self.obj.maps["missed"]
        self.missed_total = sum(missed.cpu_values(missed.lookup(0)))
        out = []
        # The kernel keeps the comm of a pair's first syscall; a process that has exec'd since
        # has a new name. Live processes are named from /proc (one read per pid per interval).
        current = {tgid: comm_of(tgid) for tgid in {t for t, _ in rows}}
        for (tgid, nr), (count, comm) in rows.items():
            comm = current[tgid] or comm
            name = syscall_name(nr)
            self.totals[name] += count
            if self.comm and comm != self.comm:
                continue
            out.append((count, tgid, comm, name))
        out.sort(reverse=True)
        if self.top:
            out = out[: self.top]
        per_s = max(elapsed_s, 1e-9)
        return [
            make_record("system", "syscall", pid=tgid, comm=comm, labels={"syscall": name},
                        values={"count": count, "rate_per_s": round(count / per_s, 3)})
            for count, tgid, comm, name in out
        ]

    def table(self, records: list[dict]) -> Table:
        t = Table(title=f"system calls (top {self.top}, per interval)", title_justify="left", expand=False)
        for col, just in (("PID", "right"), ("COMM", "left"), ("SYSCALL", "left"), ("COUNT", "right"),
                          ("RATE/s", "right")):
            t.add_column(col, justify=just)
        for r in records:
            t.add_row(str(r["pid"]), Text(r["comm"] or ""), r["labels"]["syscall"], f"{r['values']['count']:,}",
                      f"{r['values']['rate_per_s']:,.0f}")
        return t

    def metrics(self):
        c = CounterMetricFamily("bpfscope_syscalls", "System calls seen, by syscall name", labels=["syscall"])
        for name, n in self.totals.items():
            c.add_metric([name], n)
        yield c
        m = CounterMetricFamily("bpfscope_sys_map_full_events", "Syscalls not counted because the map was full")
        m.add_metric([], self.missed_total)
        yield m

    def close(self) -> None:
        if self.obj:
            self.obj.close()
            self.obj = None

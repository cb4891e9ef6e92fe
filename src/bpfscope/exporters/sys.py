"""bpfscope sys: system calls per process and syscall, counted in the kernel.

Kernel side: bpf/sys.bpf.c (raw_tp sys_enter, per-CPU hash keyed by tgid and number).
Each interval the map is read and emptied in one batch syscall, so every row is the
count for that interval only.
"""

from __future__ import annotations

import os
from collections import Counter

from prometheus_client.core import CounterMetricFamily
from rich.table import Table

from ..bpf import BpfObject
from ..decode import c_string, syscall_name
from ..schema import make_record
from .base import Exporter


class SysExporter(Exporter):
    name = "sys"
    domain = "system"

    def __init__(self, pid: int | None = None, comm: str | None = None, top: int = 20):
        self.pid = pid
        self.comm = comm
        self.top = top
        self.obj: BpfObject | None = None
        self.totals: Counter[str] = Counter()  # per syscall name, for Prometheus (bounded labels)
        self.missed_total = 0

    def open(self) -> None:
        self.obj = BpfObject.open("sys", rodata={"target_tgid": self.pid or 0, "self_tgid": os.getpid()})
        self.obj.attach_all()

    def _read(self) -> dict[tuple[int, int], tuple[int, str]]:
        rows: dict[tuple[int, int], tuple[int, str]] = {}
        counts = self.obj.maps["counts"]
        for key, per_cpu in counts.batch(delete=True):
            count, comm = 0, ""
            for val in counts.cpu_values(per_cpu):
                count += val.count
                comm = comm or c_string(val.comm)
            rows[(key.tgid, key.nr)] = (count, comm)
        return rows

    def collect(self, elapsed_s: float) -> list[dict]:
        rows = self._read()
        missed = self.obj.maps["missed"]
        self.missed_total = sum(missed.cpu_values(missed.lookup(0)))
        out = []
        for (tgid, nr), (count, comm) in rows.items():
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
            t.add_row(str(r["pid"]), r["comm"] or "", r["labels"]["syscall"], f"{r['values']['count']:,}",
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

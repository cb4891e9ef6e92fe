"""bpfscope proc: processes from the scheduler's side. Prometheus for every process (time per
state, switches, lock waits by type: bounded labels comm, state, lock type); stored records
for the table, the portraits and a state timeline of the chosen process's threads."""

from __future__ import annotations

from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimelinePanel

from .common import (
    HOST_MATCH,
    INFINITY,
    RATE,
    TIME,
    TIME_RANGE,
    Column,
    Infinity,
    _ref_ids,
    dashboard,
    infinity_table,
    prometheus,
    prometheus_timeseries,
    records_query,
    row,
)

UID = "bpfscope-process"
PROCESS_RECORDS = (("domain", "proc"), ("kind", "process"))
SUMMARY_RECORDS = (("domain", "proc"), ("kind", "process_summary"))
PID, COMM = Column("pid", "pid", "number"), Column("comm", "comm")
TID, ADDR = Column("tid", "tid", "number"), Column("labels.addr", "address")
# whole-life lock records of a portrait (ProcPortrait.final), one per thread and lock
FUTEX_RECORDS = (("domain", "proc"), ("kind", "futex_wait_summary"))
KLOCK_RECORDS = (("domain", "proc"), ("kind", "lock_wait_summary"))
PTHREAD_RECORDS = (("domain", "proc"), ("kind", "pthread_hold_summary"))


def _value(name: str, text: str | None = None) -> Column:
    return Column(f"values.{name}", text or name, "number")


def _timeline(title: str, description: str) -> StateTimelinePanel:
    # /api/v1/timeline: dense rows {time, <comm:tid>: state}; the columns are the threads,
    # so none are declared (Infinity takes every field of the rows).
    query = Infinity("/api/v1/timeline", (("host", "${host}"), ("domain", "proc"), ("kind", "thread_state"),
                                          ("pid", "${pid}"), *TIME_RANGE, ("series", "comm:tid")), ())
    return (StateTimelinePanel().title(title).description(description).datasource(INFINITY)
            .targets(_ref_ids([query])).span(24).height(10))


def _state_seconds_by_comm(title: str, description: str, state: str):
    """The 10 commands with the most seconds per second in one scheduler state."""
    return prometheus_timeseries(
        title, description,
        prometheus(f'topk(10, sum by (comm) (rate(bpfscope_proc_state_seconds_total{{{HOST_MATCH}, '
                   f'state="{state}"}}[{RATE}])))', "{{comm}}"), unit="short")


def _lock_waits_table(title: str, description: str, records, *lock_columns: Column):
    """A half-width table of one thread's waits per lock (futex address or kernel lock): the
    lock's columns, then count and total, longest and mean wait."""
    return infinity_table(
        title, description,
        records_query(*records, columns=(TIME, PID, TID, COMM, ADDR, *lock_columns, _value("count", "waits"),
                                         _value("wait_ns", "total wait ns"), _value("max_wait_ns", "max wait ns"),
                                         _value("avg_wait_ns", "avg wait ns")), limit=500),
        width=12, sort_by="total wait ns")


def build():
    d = dashboard(UID, "bpfscope / Process", "Processes from the scheduler's side: time per state, switches, "
                  "lock waits, and the portraits of followed processes.", tags=("proc",), scope=SUMMARY_RECORDS)

    d = (d.with_row(row("Every process (Prometheus)"))
         .with_panel(_state_seconds_by_comm(
             "CPU time by command", "Seconds on a CPU per second (1 = one CPU), the 10 busiest commands.",
             "running"))
         .with_panel(_state_seconds_by_comm(
             "Run-queue wait by command", "Seconds runnable but waiting for a CPU, per second.", "runnable"))
         .with_panel(prometheus_timeseries(
             "Context switches per second, voluntary and involuntary", "Switch-outs of every process.",
             prometheus(f"sum by (kind) (rate(bpfscope_proc_context_switches_total{{{HOST_MATCH}}}[{RATE}]))",
                        "{{kind}}"), unit="ops"))
         .with_panel(prometheus_timeseries(
             "Lock wait by type", "Seconds waiting for kernel locks (lock:contention_begin/end), by the "
             "lock's type (spinlock, rwlock, mutex, rtmutex, rwsem, percpu rwsem; read or write), and, with "
             "--futex, futexes, per second.",
             prometheus(f"sum by (lock_type) (rate(bpfscope_proc_lock_wait_seconds_total{{{HOST_MATCH}}}[{RATE}]))",
                        "{{lock_type}}"), unit="short")))

    d = (d.with_row(row("Processes (stored records: the top processes of each interval)"))
         .with_panel(infinity_table(
             "Top processes", "The newest intervals of `bpfscope proc`: CPU %, run-queue wait, switches, RSS.",
             records_query(*PROCESS_RECORDS, columns=(TIME, PID, COMM, _value("cpu_pct", "cpu %"),
                                                      _value("running_ns", "on cpu ns"),
                                                      _value("runnable_ns", "run queue ns"),
                                                      _value("vcsw_per_s", "vcsw/s"), _value("ivcsw_per_s", "ivcsw/s"),
                                                      _value("rss_bytes", "rss"), _value("threads"),
                                                      Column("labels.state", "state")), limit=500),
             width=24, sort_by="cpu %")))

    d = (d.with_row(row("Portraits: ${comm} (pid ${pid})"))
         .with_panel(_timeline("Thread states of pid ${pid}", "Per thread: running, runnable, sleeping, iowait, "
                               "disk, stopped (spans sent by `bpfscope proc --pid`)."))
         .with_panel(infinity_table(
             "Followed processes, whole life", "Per process of each portrait: exit code or signal, lifetime, time "
             "per state, switches.",
             records_query(*SUMMARY_RECORDS, columns=(TIME, PID, COMM, _value("parent_pid", "parent"),
                                                      Column("labels.end", "end"),
                                                      _value("lifetime_ns", "lifetime ns"),
                                                      _value("running_ns", "running ns"),
                                                      _value("runnable_ns", "runnable ns"),
                                                      _value("sleeping_ns", "sleeping ns"),
                                                      _value("iowait_ns", "iowait ns"), _value("disk_ns", "disk ns"),
                                                      _value("futex_wait_ns", "futex wait ns"),
                                                      _value("lock_wait_ns", "kernel lock wait ns")), limit=500),
             width=24)))

    d = (d.with_row(row("Portraits: locks (per thread and lock, whole life)"))
         .with_panel(_lock_waits_table(
             "Futex waits per user address", "Time each followed thread slept in futex waits, per user address "
             "(a pthread mutex, condition variable, ...): count, total, longest and mean wait.", FUTEX_RECORDS))
         .with_panel(_lock_waits_table(
             "Kernel lock waits per lock", "lock:contention_begin/end of the followed threads, per lock: its "
             "type (spinlock, mutex, rwsem read/write, rtmutex, percpu rwsem), symbol when static, count and "
             "wait times.", KLOCK_RECORDS, Column("labels.symbol", "symbol"), Column("labels.lock_type", "type")))
         .with_panel(infinity_table(
             "pthread lock hold times (--pthread)", "From lock to unlock of pthread mutexes, rwlocks and spin "
             "locks (uprobes on libc, opt-in): holds, total, longest and mean hold.",
             records_query(*PTHREAD_RECORDS, columns=(TIME, PID, TID, COMM, ADDR, Column("labels.lock_type", "type"),
                                                      _value("count", "holds"), _value("hold_ns", "total hold ns"),
                                                      _value("max_hold_ns", "max hold ns"),
                                                      _value("avg_hold_ns", "avg hold ns")), limit=500),
             width=24, sort_by="total hold ns")))
    return d

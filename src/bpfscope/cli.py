"""The bpfscope command line: one sub-command per domain, plus up, doctor, collector, query.

User mistakes (not root, bad flag, bad URL, ...) end in one line on stderr and a
non-zero exit; a traceback means a bug in bpfscope.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional

import typer

try:  # typer >= 0.24 vendors click; its exceptions live there
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from . import __version__

DEFAULT_DB = "sqlite:////var/lib/bpfscope/bpfscope.db"
DEFAULT_LISTEN = "127.0.0.1:9380"
DEFAULT_URL = f"http://{DEFAULT_LISTEN}"

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False, help="eBPF observability for Linux hosts.")


class UserError(Exception):
    """Printed as `bpfscope: <message>`; exit_code is the process status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# ---- shared options of every exporter -------------------------------------------------
Interval = Annotated[float, typer.Option(help="Seconds between map reads (the refresh of the view).", min=0.1)]
Duration = Annotated[Optional[float], typer.Option(help="Stop after this many seconds.", min=0.1)]
Json = Annotated[bool, typer.Option("--json", help="One JSON record per line instead of the live table.")]
Collector = Annotated[Optional[str], typer.Option(help="Send records to this collector URL, e.g. http://127.0.0.1:9380.")]
MetricsPort = Annotated[Optional[int], typer.Option(help="Serve Prometheus /metrics on PORT.", min=1, max=65535)]
MetricsHost = Annotated[str, typer.Option(help="Address for /metrics (0.0.0.0 for a cluster's Prometheus).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No table (used under `bpfscope up`).")]
Host = Annotated[Optional[str], typer.Option(help="Node name the records carry (default: this host's name).")]


def _set_host(host: str | None) -> None:
    if host is not None:
        if not host.strip() or len(host) > 255:
            raise UserError(f"bad --host {host!r}", 2)
        os.environ["BPFSCOPE_HOST"] = host  # inherited by the children of `up`


def _run_exporter(exporter, interval, duration, as_json, collector, metrics_port, quiet,
                  metrics_host: str = "127.0.0.1") -> None:
    from .exporters.base import ExporterLoop
    from .hostenv import prepare_bpf

    prepare_bpf()
    loop = ExporterLoop(exporter, interval_s=interval, duration_s=duration, json_out=as_json,
                        collector_url=collector, metrics_addr=f"{metrics_host}:{metrics_port}" if metrics_port else None,
                        view=not quiet)
    code = loop.run()
    if code:
        raise typer.Exit(code)


@app.command()
def sys_(
    pid: Annotated[Optional[int], typer.Option(help="Only this process (tgid).")] = None,
    comm: Annotated[Optional[str], typer.Option(help="Only processes with this command name.")] = None,
    top: Annotated[int, typer.Option(help="Rows per interval (0: all).", min=0)] = 20,
    interval: Interval = 5.0,
    duration: Duration = None,
    as_json: Json = False,
    collector: Collector = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    quiet: Quiet = False,
    host: Host = None,
) -> None:
    """System calls per process and syscall, counted in the kernel (top N per interval)."""
    from .exporters.sys import SysExporter

    _set_host(host)
    if pid is not None and not os.path.exists(f"/proc/{pid}"):
        raise UserError(f"no process with pid {pid}", 2)
    _run_exporter(SysExporter(pid=pid, comm=comm, top=top), interval, duration, as_json, collector,
                  metrics_port, quiet, metrics_host)


@app.command()
def net(
    pid: Annotated[Optional[int], typer.Option(help="Only connections of this process (tgid).")] = None,
    comm: Annotated[Optional[str], typer.Option(help="Only connections of processes with this command name.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Only connections with this local or remote port.",
                                                min=0, max=65535)] = None,
    addr: Annotated[Optional[str], typer.Option(help="Only connections with this local or remote address or CIDR.")] = None,
    state: Annotated[Optional[str], typer.Option(help="Only this TCP state (ESTABLISHED, ESTAB, LISTEN, ...).")] = None,
    direction: Annotated[Optional[str], typer.Option(help="Only 'out' (connected from here) or 'in' (accepted).")] = None,
    sort: Annotated[str, typer.Option(help="Order of the table: rate, tx, rx, bytes, rtt, cwnd, retrans, age, pid.")] = "rate",
    top: Annotated[int, typer.Option(help="Rows in the table (0: all).", min=0)] = 30,
    events: Annotated[bool, typer.Option("--events", help="Also connects, accepts, retransmits, resets, congestion "
                                                          "state changes, leaving and re-entering slow start, "
                                                          "receive queue full.")] = False,
    drops: Annotated[bool, typer.Option("--drops", help="Also packets dropped, per kernel drop reason.")] = False,
    latency: Annotated[bool, typer.Option("--latency", help="Also time per packet between layers (log2 "
                                                            "histograms of sampled packets).")] = False,
    sample: Annotated[Optional[int], typer.Option(help="With --latency: follow 1 packet in N (default 100).",
                                                  min=1)] = None,
    all_netns: Annotated[bool, typer.Option("--all-netns", help="Connections of every network namespace (containers, "
                                                                "ip netns), not only bpfscope's own.")] = False,
    interval: Interval = 5.0,
    duration: Duration = None,
    as_json: Json = False,
    collector: Collector = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    quiet: Quiet = False,
    host: Host = None,
) -> None:
    """Every TCP connection with its owner, direction and TCP internals; closes, events, drops."""
    import ipaddress

    from .decode import tcp_state_number
    from .exporters.net import SORT_KEYS, ConnFilter, NetExporter

    _set_host(host)
    if sort not in SORT_KEYS:
        raise UserError(f"bad --sort {sort!r} (have: {', '.join(SORT_KEYS)})", 2)
    if direction is not None and direction not in ("in", "out"):
        raise UserError(f"bad --direction {direction!r} (in or out)", 2)
    state_nr = None
    if state is not None and (state_nr := tcp_state_number(state)) is None:
        raise UserError(f"bad --state {state!r}", 2)
    if addr is not None:
        try:
            ipaddress.ip_network(addr, strict=False)
        except ValueError:
            raise UserError(f"bad --addr {addr!r}", 2) from None
    if sample is not None and not latency:
        raise UserError("--sample only applies with --latency", 2)
    filt = ConnFilter(pid=pid, comm=comm, port=port, addr=addr, state=state_nr, direction=direction)
    exporter = NetExporter(filt, sort=sort, top=top, events=events, drops=drops,
                           latency_sample=(sample or 100) if latency else 0,
                           all_netns=all_netns)
    _run_exporter(exporter, interval, duration, as_json, collector, metrics_port, quiet, metrics_host)


# ---- stack: call stacks (bpfscope stack cpu|offcpu) ------------------------------------
stack_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Call stacks counted in the kernel: on-CPU, off-CPU, allocations, I/O, under load.")
app.add_typer(stack_app, name="stack")

StackPid = Annotated[Optional[int], typer.Option(help="Only this process (tgid).")]
StackComm = Annotated[Optional[str], typer.Option(help="Only tasks with this command name.")]
StackCgroup = Annotated[Optional[str], typer.Option(help="Only this cgroup v2 (path, absolute or under the v2 "
                                                         "root) and its descendants.")]
UserOnly = Annotated[bool, typer.Option("--user-only", help="User-space frames only.")]
KernelOnly = Annotated[bool, typer.Option("--kernel-only", help="Kernel frames only.")]
StackTop = Annotated[int, typer.Option(help="Rows of the live table (0: all; records carry every stack).", min=0)]
Folded = Annotated[Optional[str], typer.Option(help="At exit, write the run's stacks in folded format to FILE.")]
FlameSvg = Annotated[Optional[str], typer.Option(help="At exit, write an interactive flame graph SVG to FILE.")]
Speedscope = Annotated[Optional[str], typer.Option(help="At exit, write a speedscope JSON profile to FILE.")]
Pprof = Annotated[Optional[str], typer.Option(help="At exit, write a gzipped pprof profile (profile.proto) to FILE.")]


def _run_stack(mode: str, pid, comm, cgroup, user_only, kernel_only, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host, **kw) -> None:
    from .exporters.stack import MODES, StackExporter
    from .exporters.stack_outputs import StackOutputs

    _set_host(host)
    if pid is not None and not os.path.exists(f"/proc/{pid}"):
        raise UserError(f"no process with pid {pid}", 2)
    if user_only and kernel_only:
        raise UserError("--user-only and --kernel-only exclude each other", 2)
    for path in (folded, flamegraph, speedscope, pprof):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UserError(f"no directory for {path}", 2)
    if cgroup is not None:
        from .exporters.stack import cgroup_filter
        from .hostenv import cgroup2_root

        root = cgroup2_root()
        try:
            cgroup_filter(cgroup, root or "/nonexistent")
        except OSError:
            raise UserError(f"no cgroup v2 {cgroup!r}" + ("" if root else " (cgroup v2 is not mounted)"), 2) from None
    outputs = None
    if folded or flamegraph or speedscope or pprof:
        title = f"bpfscope stack {mode}" + (f" pid {pid}" if pid else "") + (f" comm {comm}" if comm else "")
        outputs = StackOutputs(unit=MODES[mode].unit, title=title, folded=folded, flamegraph=flamegraph,
                               speedscope=speedscope, pprof=pprof, mode=mode, freq=kw.get("freq"))
    exporter = StackExporter(mode, pid=pid, comm=comm, cgroup=cgroup, user_stacks=not kernel_only,
                             kernel_stacks=not user_only, top=top, outputs=outputs, **kw)
    _run_exporter(exporter, interval, duration, as_json, collector, metrics_port, quiet, metrics_host)


@stack_app.command("cpu")
def stack_cpu(
    freq: Annotated[int, typer.Option(help="Samples per second on each online CPU (software cpu-clock).",
                                      min=1, max=10000)] = 49,
    include_idle: Annotated[bool, typer.Option("--include-idle", help="Also count the idle task's samples.")] = False,
    pid: StackPid = None, comm: StackComm = None, cgroup: StackCgroup = None, user_only: UserOnly = False,
    kernel_only: KernelOnly = False, top: StackTop = 20, folded: Folded = None, flamegraph: FlameSvg = None,
    speedscope: Speedscope = None, pprof: Pprof = None, interval: Interval = 5.0, duration: Duration = None,
    as_json: Json = False, collector: Collector = None, metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1", quiet: Quiet = False, host: Host = None,
) -> None:
    """On-CPU stacks sampled at --freq Hz on every CPU, kernel and user, per task."""
    _run_stack("cpu", pid, comm, cgroup, user_only, kernel_only, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host,
               freq=freq, include_idle=include_idle)


@stack_app.command("offcpu")
def stack_offcpu(
    min_block: Annotated[float, typer.Option(help="Only blocks of at least this many microseconds (a shorter block costs "
                                                  "no stack walk).", min=0)] = 10.0,
    max_block: Annotated[Optional[float], typer.Option(help="Only blocks of at most this many microseconds.",
                                                       min=0)] = None,
    pid: StackPid = None, comm: StackComm = None, cgroup: StackCgroup = None, user_only: UserOnly = False,
    kernel_only: KernelOnly = False, top: StackTop = 20, folded: Folded = None, flamegraph: FlameSvg = None,
    speedscope: Speedscope = None, pprof: Pprof = None, interval: Interval = 5.0, duration: Duration = None,
    as_json: Json = False, collector: Collector = None, metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1", quiet: Quiet = False, host: Host = None,
) -> None:
    """Time blocked off-CPU per stack and task state (sleep, disk, running=preempted)."""
    _run_stack("offcpu", pid, comm, cgroup, user_only, kernel_only, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host,
               min_block_us=min_block, max_block_us=max_block)


@stack_app.command("mem")
def stack_mem(
    sample_every: Annotated[int, typer.Option(help="Track one libc allocation in N (a uprobe costs ~1.7 us per "
                                                   "call); figures are scaled by N.", min=1)] = 1,
    kernel: Annotated[bool, typer.Option("--kernel", help="Kernel allocations too (kmalloc, kmem_cache, pages; "
                                                        "kmem tracepoints), per kernel and user stack, label "
                                                        "space=kernel; with --kernel-only, those alone.")] = False,
    pid: StackPid = None, comm: StackComm = None, cgroup: StackCgroup = None, user_only: UserOnly = False,
    kernel_only: KernelOnly = False, top: StackTop = 20,
    folded: Folded = None, flamegraph: FlameSvg = None, speedscope: Speedscope = None, pprof: Pprof = None,
    interval: Interval = 5.0, duration: Duration = None, as_json: Json = False, collector: Collector = None,
    metrics_port: MetricsPort = None, metrics_host: MetricsHost = "127.0.0.1", quiet: Quiet = False,
    host: Host = None,
) -> None:
    """Outstanding libc allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc
    minus free; the program's mmap minus munmap) per user stack: leaks; with --kernel,
    kernel allocations too. Files written at exit show what is outstanding then."""
    if kernel_only and not kernel:
        raise UserError("--kernel-only needs --kernel (a libc allocation has a user stack only)", 2)
    _run_stack("mem", pid, comm, cgroup, user_only, kernel_only, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host,
               sample_every=sample_every, kernel_mem=kernel)


@stack_app.command("io")
def stack_io(
    pid: StackPid = None, comm: StackComm = None, cgroup: StackCgroup = None, top: StackTop = 20,
    folded: Folded = None, flamegraph: FlameSvg = None, speedscope: Speedscope = None, pprof: Pprof = None,
    interval: Interval = 5.0, duration: Duration = None, as_json: Json = False, collector: Collector = None,
    metrics_port: MetricsPort = None, metrics_host: MetricsHost = "127.0.0.1", quiet: Quiet = False,
    host: Host = None,
) -> None:
    """Bytes and calls of read/write-family system calls (read, write, pread64, pwrite64,
    readv, writev, preadv(2), pwritev(2)) per user stack and direction (io_stack), and
    block-device requests: device time (issue to completion) and bytes per submitting
    kernel and user stack (block_stack, as `stack block`)."""
    _run_stack("io", pid, comm, cgroup, False, False, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host)


@stack_app.command("block")
def stack_block(
    pid: StackPid = None, comm: StackComm = None, cgroup: StackCgroup = None, user_only: UserOnly = False,
    kernel_only: KernelOnly = False, top: StackTop = 20, folded: Folded = None, flamegraph: FlameSvg = None,
    speedscope: Speedscope = None, pprof: Pprof = None, interval: Interval = 5.0, duration: Duration = None,
    as_json: Json = False, collector: Collector = None, metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1", quiet: Quiet = False, host: Host = None,
) -> None:
    """Block-device requests alone (the block part of `stack io`): device time (issue to
    completion) and bytes per submitting stack and op."""
    _run_stack("block", pid, comm, cgroup, user_only, kernel_only, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host)


@stack_app.command("load")
def stack_load(
    threshold: Annotated[Optional[float], typer.Option(help="Sample only while the load is at least this: PSI cpu "
                                                            "some %% over the last 100 ms (default 50), or runnable "
                                                            "tasks (run-queue length, default 4).", min=0)] = None,
    source: Annotated[str, typer.Option(help="How load is measured: auto (PSI where the kernel has it, else the "
                                             "run-queue length), psi or runqueue.")] = "auto",
    psi: Annotated[bool, typer.Option("--psi", help="Same as --source psi.")] = False,
    freq: Annotated[int, typer.Option(help="Samples per second on each online CPU while armed.",
                                      min=1, max=10000)] = 49,
    pid: StackPid = None, comm: StackComm = None, cgroup: StackCgroup = None, user_only: UserOnly = False,
    kernel_only: KernelOnly = False, top: StackTop = 20, folded: Folded = None, flamegraph: FlameSvg = None,
    speedscope: Speedscope = None, pprof: Pprof = None, interval: Interval = 5.0, duration: Duration = None,
    as_json: Json = False, collector: Collector = None, metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1", quiet: Quiet = False, host: Host = None,
) -> None:
    """On-CPU stacks recorded only while load is above --threshold, tagged with the load
    and its source (label load_source: psi or runqueue)."""
    from .exporters.stack import psi_available

    if source not in ("auto", "psi", "runqueue"):
        raise UserError(f"--source {source!r}: one of auto, psi, runqueue", 2)
    if psi and source == "runqueue":
        raise UserError("--psi and --source runqueue exclude each other", 2)
    source = "psi" if psi else source
    if source == "psi" and not psi_available():
        raise UserError("--source psi: this kernel has no readable /proc/pressure/cpu (PSI)", 2)
    _run_stack("load", pid, comm, cgroup, user_only, kernel_only, top, folded, flamegraph, speedscope, pprof,
               interval, duration, as_json, collector, metrics_port, metrics_host, quiet, host,
               freq=freq, threshold=threshold, load_source=source)


@app.command()
def proc(
    command: Annotated[Optional[list[str]], typer.Argument(help="After --: start COMMAND ARGS and follow it from its "
                                                                "first instruction.", show_default=False)] = None,
    pid: Annotated[Optional[list[int]], typer.Option(help="Follow this process, its threads and descendants "
                                                          "(repeatable).")] = None,
    comm: Annotated[Optional[str], typer.Option(help="Table: only processes with this command name; with "
                                                     "--follow: follow them.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="With --comm: the portrait of those processes.")] = False,
    cgroup: Annotated[Optional[str], typer.Option(help="Table: only processes in this cgroup v2 (path under the "
                                                       "v2 root) or below.")] = None,
    sort: Annotated[Optional[str], typer.Option(help="Table order: cpu (default), runq, vcsw, ivcsw, rss, lock, "
                                                     "threads, pid.")] = None,
    top: Annotated[int, typer.Option(help="Rows of the table (0: all).", min=0)] = 30,
    no_timeline: Annotated[bool, typer.Option("--no-timeline", help="Portrait: no per-state span records.")] = False,
    no_stacks: Annotated[bool, typer.Option("--no-stacks", help="Portrait: no stacks at switch-out.")] = False,
    max_spans: Annotated[Optional[int], typer.Option(help="Portrait: timeline records kept per interval (0: all; "
                                                          "default 100000).", min=0)] = None,
    pthread: Annotated[bool, typer.Option("--pthread", help="Portrait: hold times of pthread mutexes, rwlocks and "
                                                           "spin locks (uprobes on libc: every call on the host "
                                                           "traps, expensive).")] = False,
    futex: Annotated[bool, typer.Option("--futex", help="Table: also count futex waits (syscall tracepoints: "
                                                       "every syscall on the host takes the slower traced path). "
                                                       "A portrait always counts them, at no such cost.")] = False,
    interval: Interval = 5.0,
    duration: Duration = None,
    as_json: Json = False,
    collector: Collector = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    quiet: Quiet = False,
    host: Host = None,
) -> None:
    """Processes from the scheduler's side: a top-like table of all, or (--pid, --comm --follow,
    -- COMMAND) the portrait of one tree: lifecycle, time per state, switch reasons, locks."""
    from .exporters.proc import SORT_KEYS, ProcTop

    _set_host(host)
    if sort is not None and sort not in SORT_KEYS:
        raise UserError(f"bad --sort {sort!r} (have: {', '.join(SORT_KEYS)})", 2)
    for p in pid or []:
        if not os.path.exists(f"/proc/{p}"):
            raise UserError(f"no process with pid {p}", 2)
    if follow and not comm:
        raise UserError("--follow needs --comm NAME", 2)
    # an option the chosen mode would ignore is a mistake: say so rather than drop it
    portrait = bool(pid or command or follow)
    if comm and (pid or command) and not follow:
        raise UserError("--comm with --pid or -- COMMAND needs --follow (the table's --comm filter is not a "
                        "portrait option)", 2)
    if portrait:
        for name, given in (("--cgroup", cgroup is not None), ("--sort", sort is not None),
                            ("--futex", futex)):
            if given:
                raise UserError(f"{name} is a table option; a portrait (--pid, --comm --follow, -- COMMAND) "
                                "does not take it" + (" (it always counts futex waits)" if name == "--futex" else ""),
                                2)
        if no_timeline and max_spans is not None:
            raise UserError("--max-spans limits the timeline, which --no-timeline turns off", 2)
    else:
        for name, given in (("--no-timeline", no_timeline), ("--no-stacks", no_stacks),
                            ("--max-spans", max_spans is not None)):
            if given:
                raise UserError(f"{name} is a portrait option: it needs --pid, --comm --follow or -- COMMAND", 2)
    if cgroup is not None:
        from .hostenv import cgroup2_root

        root = cgroup2_root()
        if not root or not os.path.isdir(os.path.join(root, cgroup.strip("/"))):
            raise UserError(f"no cgroup v2 {cgroup!r}" + ("" if root else " (cgroup v2 is not mounted)"), 2)
    pids = list(pid or [])
    if follow:
        from .exporters.proc_portrait import pids_of_comm

        pids += pids_of_comm(comm)
        if not pids:
            raise UserError(f"no process named {comm!r}", 2)
    if command:
        import shutil

        if not shutil.which(command[0]):
            raise UserError(f"command not found: {command[0]}", 2)
    if pthread and not (pids or command):
        raise UserError("--pthread needs a portrait (--pid, --comm --follow or -- COMMAND)", 2)
    if pids or command:
        from .exporters.proc_portrait import ProcPortrait

        exporter = ProcPortrait(pids=pids, command=command, timeline=not no_timeline, stacks=not no_stacks,
                                max_spans=100000 if max_spans is None else max_spans, top=top, pthread=pthread)
    else:
        exporter = ProcTop(comm=comm, cgroup=cgroup, sort=sort or "cpu", top=top, futex=futex)
    _run_exporter(exporter, interval, duration, as_json, collector, metrics_port, quiet, metrics_host)


@app.command()
def doctor(as_json: Json = False) -> None:
    """Measure what this kernel can do: load and attach a tiny program of each hook type."""
    from rich.console import Console
    from rich.table import Table

    from . import doctor as doc
    from .hostenv import ensure_mounts, require_root

    require_root()
    ensure_mounts()
    checks = doc.run_checks()
    if as_json:
        print(json.dumps(doc.as_json(checks), indent=2))
    else:
        colours = {"ok": "green", "absent": "yellow", "refused": "yellow", "missing": "red", "failed": "red"}
        t = Table(title=f"bpfscope doctor: kernel {os.uname().release}", title_justify="left")
        for col in ("CHECK", "STATUS", "CORE", "DETAIL"):
            t.add_column(col)
        for c in checks:
            t.add_row(c.name, f"[{colours[c.status]}]{c.status}[/]", "yes" if c.core else "", c.detail)
        Console().print(t)
        print("core (BTF, tracepoint, ring buffer, perf_event):", "works" if doc.core_ok(checks) else "BROKEN")
    raise typer.Exit(0 if doc.core_ok(checks) else 1)


@app.command()
def collector(
    db: Annotated[str, typer.Option(help="SQLAlchemy URL of the store.")] = DEFAULT_DB,
    listen: Annotated[str, typer.Option(help="host:port to serve the API, metrics and web page on.")] = DEFAULT_LISTEN,
    retention: Annotated[str, typer.Option(help="Delete records older than this (e.g. 7d, 12h; 0: keep).")] = "7d",
    max_rows: Annotated[Optional[int], typer.Option(help="Keep at most this many records.", min=1)] = None,
) -> None:
    """Run the collector alone: ingest, REST query API, /metrics and the web page."""
    from .collector.server import ServeError, serve

    try:
        serve(db, listen, retention, max_rows)
    except ServeError as e:
        raise UserError(str(e), 2) from None


@app.command()
def up(
    domains: Annotated[Optional[str], typer.Option(help="Comma-separated exporters to run (default: all).")] = None,
    db: Annotated[str, typer.Option(help="SQLAlchemy URL of the store.")] = DEFAULT_DB,
    listen: Annotated[str, typer.Option(help="host:port of the collector.")] = DEFAULT_LISTEN,
    interval: Interval = 5.0,
    metrics_port: Annotated[int, typer.Option(help="Exporter i serves /metrics on PORT+i (0: none).",
                                              min=0, max=65000)] = 9390,
    metrics_host: MetricsHost = "127.0.0.1",
    host: Host = None,
) -> None:
    """Start the collector and the exporters as supervised processes, until Ctrl-C."""
    _set_host(host)
    from .hostenv import prepare_bpf
    from .storage.store import Store
    from .supervisor import EXPORTER_DOMAINS, Supervisor, child_commands

    chosen = [d.strip() for d in domains.split(",") if d.strip()] if domains else list(EXPORTER_DOMAINS)
    unknown = [d for d in chosen if d not in EXPORTER_DOMAINS]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r} (have: {', '.join(EXPORTER_DOMAINS)})", 2)
    prepare_bpf()
    Store(db).close()  # a bad --db fails here, in one line, before anything starts
    print(f"bpfscope up: collector and web page on http://{listen}  db {db}  exporters {', '.join(chosen)}",
          flush=True)
    raise typer.Exit(Supervisor(child_commands(db, listen, chosen, interval, metrics_port, metrics_host)).run())


@app.command()
def query(
    url: Annotated[str, typer.Option(help="Collector URL.")] = DEFAULT_URL,
    domain: Annotated[Optional[str], typer.Option()] = None,
    kind: Annotated[Optional[str], typer.Option()] = None,
    since: Annotated[str, typer.Option(help="Start of the range: -15m, -2h, ISO time or epoch ms.")] = "-15m",
    pid: Annotated[Optional[int], typer.Option()] = None,
    comm: Annotated[Optional[str], typer.Option()] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="key:value, repeatable.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    as_json: Json = False,
) -> None:
    """Query the collector's stored records from the terminal."""
    from .querycli import run_query

    raise typer.Exit(run_query(url, domain, kind, since, pid, comm, label or [], limit, as_json))


@app.command()
def version() -> None:
    """Print the version."""
    print(f"bpfscope {__version__}")


def _rename_commands() -> None:
    # `sys` is a Python module name; the function is sys_ and the command is `sys`.
    for cmd in app.registered_commands:
        if cmd.callback is sys_:
            cmd.name = "sys"


_rename_commands()


def _add_groups() -> None:
    from .lb.cli import lb_app

    app.add_typer(lb_app, name="lb")

    from .fuse.cli import fuse_app

    app.add_typer(fuse_app, name="fuse")


_add_groups()


def main(argv: list[str] | None = None) -> int:
    from .bpf import BpfError
    from .hostenv import HostError
    from .lb.config import ConfigError

    try:
        from .storage.store import StoreError
    except ImportError:  # pragma: no cover
        StoreError = UserError  # type: ignore[misc,assignment]
    prog = "bpfscope"
    try:
        # without standalone mode, click returns a typer.Exit's code instead of raising it
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return 130
    except click_exc.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        print(f"{prog}: {e.format_message()}{hint}", file=sys.stderr)
        return 2
    except click_exc.ClickException as e:
        print(f"{prog}: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except (UserError, HostError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_code
    except StoreError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except BpfError as e:
        print(f"{prog}: {str(e).splitlines()[0]}", file=sys.stderr)
        if e.log and os.environ.get("BPFSCOPE_DEBUG"):
            print(e.log, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`bpfscope fuse ...`: mount, umount, trace, bench."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from .modes import MODES

# A background server's stdout and stderr: its errors, a traceback if it crashes. Empty when all went well.
SERVER_LOG_DIR = "/run/bpfscope/fuse"


def server_log(mountpoint: str) -> str:
    """The log of the background server of mountpoint (its absolute path, %-quoted, as the name)."""
    import urllib.parse
    return os.path.join(SERVER_LOG_DIR, urllib.parse.quote(os.path.abspath(mountpoint), safe="") + ".log")


fuse_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                       help="A FUSE file system mirroring a directory (plain, cached, passthrough, fast), "
                            "its benchmark, and tracing of every FUSE request.")


@fuse_app.command()
def mount(
    source: Annotated[str, typer.Argument(help="Directory to mirror.")],
    mountpoint: Annotated[str, typer.Argument(help="Where to mount it.")],
    mode: Annotated[str, typer.Option(help="plain | cached | passthrough | fast")] = "fast",
    threads: Annotated[int, typer.Option(help="Threads serving requests.", min=1, max=64)] = 4,
    foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Serve in this process.")] = False,
    timeout: Annotated[Optional[float], typer.Option(help="Entry/attribute timeout (s) of cached and fast.")]
    = None,
) -> None:
    """Mount SOURCE on MOUNTPOINT; the server runs in the background unless --foreground, its errors
    written to /run/bpfscope/fuse/<mount point, %-quoted>.log."""
    import dataclasses

    from .server import FuseError, Server
    from .server import mount as do_mount

    if mode not in MODES:
        raise FuseError(f"unknown mode {mode!r} (plain, cached, passthrough, fast)")
    m = MODES[mode]
    if timeout is not None and m.timeout:
        m = dataclasses.replace(m, timeout=timeout)
    fd = do_mount(source, mountpoint)
    server = Server(fd, source, m, threads=threads)
    try:
        server.handshake()
    except FuseError:
        from .umount import umount as do_umount
        do_umount(mountpoint)
        raise
    if foreground:
        server.serve()
        return
    log_path = server_log(mountpoint)
    os.makedirs(SERVER_LOG_DIR, exist_ok=True)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    pid = os.fork()
    if pid:
        print(f"mounted {os.path.abspath(source)} on {os.path.abspath(mountpoint)} (mode {mode}, server pid {pid}; "
              f"its errors: {log_path})")
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, to in ((null, 0), (log, 1), (log, 2)):
        os.dup2(fd, to)
    for fd in {null, log} - {0, 1, 2}:
        os.close(fd)
    try:
        server.serve()
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


@fuse_app.command()
def umount(
    mountpoint: Annotated[str, typer.Argument(help="A bpfscope (or any FUSE) mount point.")],
    force: Annotated[bool, typer.Option("--force", help="Abort the connection's requests and detach, even "
                                        "while the server answers and the mount is busy.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds the server has to answer a statfs before it is "
                                           "taken for hung.", min=0.1)] = 3.0,
) -> None:
    """Unmount. While the server answers, a normal unmount (a busy mount is an error, see --force);
    after the server crashed or while it hangs, abort the connection through fusectl and detach."""
    from .server import FuseError
    from .umount import unmount

    try:
        how = unmount(mountpoint, force=force, probe_s=timeout)
    except OSError as e:
        raise FuseError(str(e)) from None
    log_path = server_log(mountpoint)
    try:
        if os.path.getsize(log_path):
            how += f"; its errors: {log_path}"  # kept until the next mount there
        else:
            os.unlink(log_path)  # a background server that had nothing to say
    except FileNotFoundError:
        pass  # a --foreground server, or one mounted by another program
    print(f"unmounted {os.path.abspath(mountpoint)} ({how})")


@fuse_app.command()
def trace(
    mount: Annotated[Optional[str], typer.Option(help="Only this FUSE mount point.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between map reads.", min=0.1)] = 5.0,
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.", min=0.1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
    collector: Annotated[Optional[str], typer.Option(help="Send records to this collector URL.")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus /metrics on PORT.", min=1,
                                                        max=65535)] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for /metrics.")] = "127.0.0.1",
    quiet: Annotated[bool, typer.Option("--quiet", help="No table (used under `bpfscope up`).")] = False,
    max_pairs: Annotated[int, typer.Option(help="(mount, opcode) pairs the kernel map holds; pairs of "
                                           "unmounted connections are removed at each read.", min=1,
                                           max=1 << 20)] = 4096,
) -> None:
    """Every FUSE request per mount and opcode: count, errors, bytes, latency histogram (send to end)."""
    from ..exporters.base import ExporterLoop
    from ..hostenv import prepare_bpf
    from .server import FuseError
    from .trace import FuseTraceExporter

    prepare_bpf()
    try:
        exporter = FuseTraceExporter(mount, max_pairs)
    except ValueError as e:
        raise FuseError(str(e)) from None
    ExporterLoop(exporter, interval_s=interval, duration_s=duration, json_out=as_json, collector_url=collector,
                 metrics_addr=f"{metrics_host}:{metrics_port}" if metrics_port else None, view=not quiet).run()


@fuse_app.command()
def bench(
    dir_: Annotated[str, typer.Argument(metavar="DIR", help="Directory for the data (fsr-data/ is made in it).")],
    modes: Annotated[str, typer.Option(help="Comma-separated modes to compare with native.")]
    = "plain,cached,passthrough,fast",
    files: Annotated[int, typer.Option(help="Small files (4 KiB each).", min=1)] = 10_000,
    big_mib: Annotated[int, typer.Option(help="Size of the big file in MiB.", min=1)] = 512,
    rand_reads: Annotated[int, typer.Option(help="Random 4 KiB reads.", min=1)] = 5000,
    creates: Annotated[int, typer.Option(help="Small files created and written.", min=1)] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="The figures as JSON.")] = False,
) -> None:
    """The FSR benchmark: native DIR against each mode (cold/warm small reads, sequential and random
    reads of a big file, stat, create), with FUSE requests per operation from the tracepoints."""
    import json

    from .bench import render, run_bench
    from .server import FuseError

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for m in mode_list:
        if m not in MODES:
            raise FuseError(f"unknown mode {m!r} (plain, cached, passthrough, fast)")
    result = run_bench(dir_, mode_list, files=files, big_mib=big_mib, rand_reads=rand_reads, creates=creates)
    print(json.dumps(result) if as_json else render(result))

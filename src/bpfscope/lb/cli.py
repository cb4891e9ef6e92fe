"""`bpfscope lb ...`: apply, status, delete, reset."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from .config import ConfigError, load
from .kernel import LbKernel, pin_dir_default

lb_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                     help="Socket-level load balancing: a service VIP picks a backend at connect().")

PinDir = Annotated[Optional[str], typer.Option(help="bpffs directory of the pinned maps and links.")]


def _kernel(pin_dir: str | None) -> LbKernel:
    from ..hostenv import prepare_bpf

    prepare_bpf()
    return LbKernel(pin_dir or pin_dir_default())


def _install_once(k: LbKernel, cgroup: str | None) -> None:
    """Attach the programs to `cgroup` (default: the cgroup v2 root) unless already pinned."""
    from ..hostenv import cgroup2_root

    if not k.installed:
        target = cgroup or cgroup2_root()
        if not target:
            raise ConfigError("no cgroup v2 mount to attach to")
        k.install(target)


def _installed(k: LbKernel) -> None:
    if not k.installed:
        raise ConfigError(f"no load balancer installed at {k.pin_dir} (run `bpfscope lb apply FILE` first)")


@lb_app.command()
def apply(
    file: Annotated[str, typer.Argument(help="services.yaml")],
    cgroup: Annotated[Optional[str], typer.Option(help="cgroup v2 directory to attach to (default: the root).")] = None,
    pin_dir: PinDir = None,
) -> None:
    """Validate FILE and make the kernel's services exactly what it says (atomically per service)."""
    config = load(file)  # nothing is touched when the file is wrong
    with _kernel(pin_dir) as k:
        _install_once(k, cgroup)
        r = k.apply(config.services)
    print(f"applied {file}: {len(r.added)} added, {len(r.changed)} changed, {len(r.unchanged)} unchanged, "
          f"{len(r.removed)} removed")


@lb_app.command()
def run(
    config: Annotated[Optional[str], typer.Option(help="services.yaml, reloaded when it changes.")] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Follow Services and EndpointSlices instead "
                                             "of a file (in-cluster config, or --kubeconfig).")] = False,
    kubeconfig: Annotated[Optional[str], typer.Option(help="kubeconfig file for --kubernetes.")] = None,
    cgroup: Annotated[Optional[str], typer.Option(help="cgroup v2 directory to attach to (default: the root).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between health checks and reloads.", min=0.1)] = 2.0,
    timeout: Annotated[float, typer.Option(help="TCP connect timeout of a health check.", min=0.01)] = 1.0,
    fall: Annotated[int, typer.Option(help="Failed checks in a row that take a backend out.", min=1)] = 1,
    rise: Annotated[int, typer.Option(help="Good checks in a row that put it back.", min=1)] = 1,
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus /metrics on this port.")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for /metrics.")] = "127.0.0.1",
    drain_timeout: Annotated[Optional[float], typer.Option(
        help="Seconds after a backend leaves the file until its remaining connections are closed.",
        min=0)] = None,
    pin_dir: PinDir = None,
) -> None:
    """The controller: apply the file, health-check backends, reload on change, until Ctrl-C."""
    from .controller import run_controller
    from .kernel import kernel_has

    if (config is None) == (not kubernetes):
        raise ConfigError("give --config FILE or --kubernetes (one of them)")
    if drain_timeout is not None and (kubernetes or not kernel_has("bpf_sock_destroy")):
        raise ConfigError("--drain-timeout needs --config and a kernel with bpf_sock_destroy (Linux 6.5+)")
    if config:
        load(config)  # a bad file fails here, before anything is touched
    with _kernel(pin_dir) as k:
        _install_once(k, cgroup)
        if kubernetes:
            from .kubernetes import KubernetesSource

            raise typer.Exit(KubernetesSource(k, kubeconfig).run())
        raise typer.Exit(run_controller(k, config, interval, timeout, fall, rise,
                                        (metrics_host, metrics_port) if metrics_port else None, drain_timeout))


@lb_app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False, pin_dir: PinDir = None) -> None:
    """Services, their backends, each backend's share and how often it was chosen."""
    from rich.console import Console
    from rich.table import Table

    with _kernel(pin_dir) as k:
        _installed(k)
        rows = k.status()
        refused = k.no_backend_refusals()
        limited = k.limited()
    if as_json:
        print(json.dumps({"services": rows, "no_backend_refusals": refused, "rate_limited": limited}, indent=2))
        return
    t = Table(title="bpfscope lb", title_justify="left")
    tracked = any("active" in b for s in rows for b in s["backends"])  # a least-conn service
    for col, just in (("SERVICE", "left"), ("VIP", "left"), ("ALGO", "left"), ("BACKEND", "left"),
                      ("SHARE", "right"), ("CHOSEN", "right")) + ((("OPEN", "right"),) if tracked else ()):
        t.add_column(col, justify=just)
    for s in rows:
        vip = f"{s['vip']}:{s['port']}/{s['protocol']}"
        if not s["backends"]:
            none = f"(none: uses {s['fallback']})" if s.get("fallback") else "(none: connect fails)"
            t.add_row(s["name"], vip, s["algorithm"], none, "", "", *([""] if tracked else []))
        for i, b in enumerate(s["backends"]):
            share = "" if s["algorithm"] == "least-conn" else f"{b['share'] * 100:.1f}%"
            t.add_row(s["name"] if i == 0 else "", vip if i == 0 else "", s["algorithm"] if i == 0 else "",
                      f"{b['address']}:{b['port']}", share, f"{b['choices']:,}",
                      *([f"{b['active']:,}" if "active" in b else ""] if tracked else []))
    Console().print(t)
    if refused:
        print(f"connects refused for lack of a backend: {refused}")
    if limited["refused"] or limited["degraded"]:
        print(f"connects over a rate limit: {limited['refused']} refused, {limited['degraded']} degraded")


@lb_app.command()
def delete(name: Annotated[str, typer.Argument(help="service name")], pin_dir: PinDir = None) -> None:
    """Remove one service; its VIP stops being redirected."""
    with _kernel(pin_dir) as k:
        _installed(k)
        if not k.delete(name):
            raise ConfigError(f"no service named {name!r}")
    print(f"deleted {name}")


@lb_app.command()
def reset(pin_dir: PinDir = None) -> None:
    """Detach every program and remove every map and pin of the load balancer."""
    with _kernel(pin_dir) as k:
        removed = k.reset()
    print(f"removed {len(removed)} pins from {k.pin_dir}" if removed else f"nothing installed at {k.pin_dir}")

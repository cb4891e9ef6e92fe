"""services.yaml: the declarative form of the load balancer's services.

Validated whole before anything is applied; every error names its place in the file,
e.g. `services[0].backends[1].weight: Input should be less than or equal to 65535`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

Port = Annotated[int, Field(ge=1, le=65535)]
LEAST_CONN_MAX = 64  # LB_LEAST_CONN_MAX: the kernel scans a least-conn table per connect
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(v):
    """A duration: a number of seconds, or a string such as 500ms, 30s, 2m, 1h."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", v)
        if not m:
            raise ValueError(f"{v!r} is not a duration (e.g. 500ms, 30s, 2m)")
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return v


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=86400)]


class ConfigError(Exception):
    """A services file that cannot be applied; the message names the file and the place."""


class Backend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str
    port: Port
    weight: Annotated[int, Field(ge=0, le=65535)] = 1
    version: str | None = None

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        return str(ipaddress.ip_address(v))  # ValueError names the bad address


class RateLimit(BaseModel):
    """New connections per second with a burst, as a token bucket in the kernel."""
    model_config = ConfigDict(extra="forbid")

    per_second: Annotated[int, Field(ge=1, le=1_000_000)]
    burst: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    action: Literal["refuse", "degrade"] = "refuse"
    fallback: str | None = None  # a service name, with action: degrade

    @model_validator(mode="after")
    def _fallback(self) -> "RateLimit":
        if self.action == "degrade" and not self.fallback:
            raise ValueError("action degrade needs a fallback service")
        return self


class Canary(BaseModel):
    """A share of new connections, and every connection of chosen cgroups, go to the
    backends whose `version` is this one; the others never see them."""
    model_config = ConfigDict(extra="forbid")

    version: Annotated[str, Field(min_length=1)]
    percent: Annotated[float, Field(ge=0, le=100)] = 0
    cgroups: list[str] = Field(default_factory=list)  # cgroup v2 directories


class Affinity(BaseModel):
    """Each client (cgroup or network namespace) keeps its backend while it connects again
    within `timeout`; then, or when the service's backends change, it gets a new choice."""
    model_config = ConfigDict(extra="forbid")

    by: Literal["cgroup", "netns"] = "cgroup"
    timeout: Seconds


class Health(BaseModel):
    """Active checks from the controller (tcp connect, or an HTTP GET that must answer
    2xx/3xx) and passive ones from the kernel: `passive_failures` failed connects of
    clients in a row take a backend out (0: off). Unset values come from `lb run`'s options."""
    model_config = ConfigDict(extra="forbid")

    type: Literal["tcp", "http"] = "tcp"
    path: Annotated[str, Field(pattern=r"^/[!-~]*$")] = "/"
    interval: Seconds | None = None
    timeout: Seconds | None = None
    fall: Annotated[int, Field(ge=1, le=1000)] | None = None
    rise: Annotated[int, Field(ge=1, le=1000)] | None = None
    passive_failures: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=31, pattern=r"^[A-Za-z0-9_.-]+$")]
    vip: str
    port: Port
    protocol: Literal["tcp", "udp"] = "tcp"
    algorithm: Literal["random", "weighted", "least-conn"] = "random"
    backends: list[Backend] = Field(default_factory=list)
    rate_limit: RateLimit | None = None
    canary: Canary | None = None
    fallback: str | None = None  # a service whose backends to use when this one has none healthy
    affinity: Affinity | None = None
    health: Health | None = None
    # What getpeername() of a client's socket answers: the VIP it asked for (the kernel
    # records each socket's VIP, which costs ~6% of a loopback connect) or the backend
    # it reached (nothing recorded: the cheapest connect). UDP always records.
    getpeername: Literal["vip", "backend"] = "vip"

    @field_validator("vip")
    @classmethod
    def _vip(cls, v: str) -> str:
        return str(ipaddress.ip_address(v))

    @model_validator(mode="after")
    def _same_family(self) -> "Service":
        family = ipaddress.ip_address(self.vip).version
        for i, b in enumerate(self.backends):
            if ipaddress.ip_address(b.address).version != family:
                raise ValueError(f"backends[{i}].address {b.address} is not IPv{family} like the vip")
        if self.canary and not any(b.version == self.canary.version for b in self.backends):
            raise ValueError(f"canary.version: no backend has version {self.canary.version!r}")
        if self.protocol != "tcp":  # these watch TCP connections
            if self.algorithm == "least-conn":
                raise ValueError("algorithm: least-conn is for tcp services")
            if self.health is not None:
                raise ValueError("health: checks are for tcp services")
            if self.getpeername != "vip":
                raise ValueError("getpeername: udp services always answer with the vip (replies come from it)")
        if self.algorithm == "least-conn" and len(self.backends) > LEAST_CONN_MAX:
            raise ValueError(f"backends: least-conn takes at most {LEAST_CONN_MAX} backends")
        return self

    @property
    def passive_failures(self) -> int:
        return self.health.passive_failures if self.health else 0

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.vip, self.port, self.protocol)


class ServicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    services: list[Service] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "ServicesFile":
        names, vips = {}, {}
        for i, s in enumerate(self.services):
            if s.name in names:
                raise ValueError(f"services[{i}].name: {s.name!r} is already services[{names[s.name]}]")
            if s.key in vips:
                raise ValueError(f"services[{i}].vip: {s.vip}:{s.port}/{s.protocol} is already "
                                 f"services[{vips[s.key]}]")
            names[s.name], vips[s.key] = i, i
        for i, s in enumerate(self.services):
            for place, fb in (("rate_limit.fallback", s.rate_limit.fallback if s.rate_limit else None),
                              ("fallback", s.fallback)):
                if fb is None:
                    continue
                if fb not in names or fb == s.name:
                    raise ValueError(f"services[{i}].{place}: no other service named {fb!r}")
                other = self.services[names[fb]]
                if (other.protocol, ipaddress.ip_address(other.vip).version) != \
                        (s.protocol, ipaddress.ip_address(s.vip).version):
                    raise ValueError(f"services[{i}].{place}: {fb!r} has another protocol or family")
        return self


def _place(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(text: str, source: str = "services.yaml") -> ServicesFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a `services` list")
    try:
        return ServicesFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        place = _place(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {place + ': ' if place else ''}{msg}") from None


def load(path: str | Path) -> ServicesFile:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse(text, str(path))

"""services.yaml: the declarative form of the load balancer's services.

Validated whole before anything is applied; every error names its place in the file,
e.g. `services[0].backends[1].weight: Input should be less than or equal to 65535`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Port = Annotated[int, Field(ge=1, le=65535)]


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


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=31, pattern=r"^[A-Za-z0-9_.-]+$")]
    vip: str
    port: Port
    protocol: Literal["tcp", "udp"] = "tcp"
    algorithm: Literal["random", "weighted"] = "random"
    backends: list[Backend] = Field(default_factory=list)
    rate_limit: RateLimit | None = None
    canary: Canary | None = None

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
        return self

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
            fb = s.rate_limit.fallback if s.rate_limit else None
            if fb is None:
                continue
            if fb not in names or fb == s.name:
                raise ValueError(f"services[{i}].rate_limit.fallback: no other service named {fb!r}")
            other = self.services[names[fb]]
            if (other.protocol, ipaddress.ip_address(other.vip).version) != \
                    (s.protocol, ipaddress.ip_address(s.vip).version):
                raise ValueError(f"services[{i}].rate_limit.fallback: {fb!r} has another protocol or family")
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

"""``hangar.toml``: an app's configuration, modelled on fly.toml.

Parsed with ``tomllib`` into Pydantic models that reject unknown keys. Errors
name the key's dotted path and the line it is on, e.g.::

    hangar.toml:12: http_service.checks[0].interval: invalid duration '5 parsecs'

Durations are written as in fly.toml (``"500ms"``, ``"10s"``, ``"2m"``,
``"1h"``) and held as seconds (float).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from hangar.domain.names import validate_dns_label
from hangar.errors import ConfigError
from hangar.errors import ValidationError as HangarValidationError

__all__ = ["AppConfig", "load_app_config", "parse_app_config", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(mb|gb|mib|gib)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> float:
    """``"10s"`` → 10.0; bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("invalid duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}; write e.g. '500ms', '10s', '2m'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_memory_mb(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("invalid memory size")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        number, unit = int(m.group(1)), (m.group(2) or "mb").lower()
        return number * 1024 if unit in ("gb", "gib") else number
    raise ValueError(f"invalid memory size {value!r}; write e.g. 256, '512mb', '1gb'")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hsts(_Model):
    enabled: bool = True
    max_age: int = Field(default=63072000, ge=0)
    include_subdomains: bool = True
    preload: bool = False


class Concurrency(_Model):
    type: Literal["connections", "requests"] = "connections"
    soft_limit: int = Field(default=20, ge=1)
    hard_limit: int = Field(default=25, ge=1)

    @model_validator(mode="after")
    def _soft_below_hard(self) -> Concurrency:
        if self.soft_limit > self.hard_limit:
            raise ValueError("soft_limit must not exceed hard_limit")
        return self


class HttpCheck(_Model):
    grace_period: Duration = 1.0
    interval: Duration = 15.0
    timeout: Duration = 2.0
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    path: str = Field(default="/", pattern=r"^/")
    protocol: Literal["http", "https"] = "http"
    headers: dict[str, str] = {}


class TcpCheck(_Model):
    grace_period: Duration = 1.0
    interval: Duration = 15.0
    timeout: Duration = 2.0


class HttpService(_Model):
    internal_port: Port = 8080
    force_https: bool = True
    hsts: Hsts = Hsts()
    concurrency: Concurrency = Concurrency()
    checks: list[HttpCheck] = []
    rate_limit: int | None = Field(default=None, ge=1)

    @field_validator("hsts", mode="before")
    @classmethod
    def _hsts_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class ServicePort(_Model):
    port: Port
    handlers: list[Literal["http", "tls", "proxy_proto"]] = []
    force_https: bool = False


class Service(_Model):
    protocol: Literal["tcp", "udp"] = "tcp"
    internal_port: Port
    ports: list[ServicePort] = Field(min_length=1)
    concurrency: Concurrency = Concurrency()
    tcp_checks: list[TcpCheck] = []
    http_checks: list[HttpCheck] = []


class NamedCheck(_Model):
    type: Literal["tcp", "http"]
    port: Port
    grace_period: Duration = 1.0
    interval: Duration = 15.0
    timeout: Duration = 2.0
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    path: str = Field(default="/", pattern=r"^/")
    headers: dict[str, str] = {}


class Mount(_Model):
    source: str = Field(pattern=r"^[a-z][a-z0-9_]{0,29}$")
    destination: str = Field(pattern=r"^/.+")
    initial_size: str | None = None
    processes: list[str] = []


class SecretFile(_Model):
    """A secret given to machines as a file, on tmpfs, under /run or /tmp."""

    guest_path: str
    secret_name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("guest_path")
    @classmethod
    def _on_tmpfs(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts or str(path) != value:
            raise ValueError(f"{value!r} is not a normalised absolute path")
        if path.parent == path or path.parts[1] not in ("run", "tmp") or len(path.parts) < 3:
            # The image's root filesystem is shared and read-only: files go on tmpfs.
            raise ValueError(f"{value!r} must be a file under /run/ or /tmp/ (tmpfs)")
        return value


class Deploy(_Model):
    strategy: Literal["immediate", "rolling", "canary", "bluegreen"] = "rolling"
    max_unavailable: float = Field(default=1, gt=0)
    release_command: str | None = None
    wait_timeout: Duration = 300.0


class Vm(_Model):
    cpus: int = Field(default=1, ge=1, le=64)
    memory: Annotated[int, BeforeValidator(_parse_memory_mb), Field(ge=64, le=262144)] = 256
    cpu_kind: Literal["shared", "performance"] = "shared"
    processes: list[str] = []


class Restart(_Model):
    policy: Literal["no", "always", "on-failure"] = "on-failure"
    retries: int = Field(default=10, ge=0, le=1000)
    processes: list[str] = []


class Metrics(_Model):
    port: Port
    path: str = Field(default="/metrics", pattern=r"^/")


class NetworkConfig(_Model):
    """``[network]``: how the app's machines reach beyond their private network."""

    egress: bool = True  # outbound connections to the internet, through NAT


class Build(_Model):
    image: str | None = None


class AppConfig(_Model):
    app: str
    primary_region: str = Field(default="local", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    kill_signal: Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"] = "SIGINT"
    kill_timeout: Duration = 5.0
    build: Build = Build()
    env: dict[str, str] = {}
    http_service: HttpService | None = None
    services: list[Service] = []
    checks: dict[str, NamedCheck] = {}
    mounts: list[Mount] = []
    files: list[SecretFile] = []
    network: NetworkConfig = NetworkConfig()
    deploy: Deploy = Deploy()
    vm: list[Vm] = []
    restart: list[Restart] = []
    metrics: list[Metrics] | Metrics | None = None
    processes: dict[str, str] = {}

    @field_validator("app")
    @classmethod
    def _app_name(cls, value: str) -> str:
        try:
            return validate_dns_label(value, what="app name")
        except HangarValidationError as exc:
            raise ValueError(exc.message) from exc

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.upper().startswith("HANGAR_"):
                raise ValueError(f"{name!r}: names starting HANGAR_ are reserved")
        return value

    @field_validator("processes")
    @classmethod
    def _process_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, command in value.items():
            try:
                validate_dns_label(name, what="process group name")
            except HangarValidationError as exc:
                raise ValueError(exc.message) from exc
            if not command.strip():
                raise ValueError(f"process group {name!r} has an empty command")
        return value


def _locate(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The line (1-based) where the key at ``loc`` is written, or its nearest parent."""
    table: list[str | int] = []
    counters: dict[tuple[str | int, ...], int] = {}
    best: tuple[int, int] | None = None  # (matched depth, line)
    target = list(loc)

    def consider(path: list[str | int], line: int) -> None:
        nonlocal best
        depth = 0
        for a, b in zip(path, target, strict=False):
            if a != b:
                break
            depth += 1
        if depth == len(path) and (best is None or depth > best[0]):
            best = (depth, line)

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith(("'", '"')) else raw
        if line.startswith("[["):
            name = line.strip("[] ")
            base: tuple[str | int, ...] = tuple(name.split("."))
            index = counters.get(base, -1) + 1
            counters[base] = index
            table = [*base, index]
            consider(table, number)
        elif line.startswith("["):
            table = list(line.strip("[] ").split("."))
            consider(table, number)
        elif "=" in line:
            key = line.split("=", 1)[0].strip().strip("\"'")
            path = [*table, *key.split(".")]
            consider(path, number)
    return best[1] if best else None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_app_config(text: str, *, filename: str = "hangar.toml") -> AppConfig:
    """Parse and validate; ConfigError naming file, line and key on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: {exc}") from exc
    try:
        return AppConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(
                p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))
            )
            line = _locate(text, loc)
            where = f"{filename}:{line}" if line else filename
            if err["type"] == "extra_forbidden":
                lines.append(f"{where}: unknown key {_format_loc(loc)!r}")
            elif err["type"] == "missing":
                lines.append(f"{where}: {_format_loc(loc)}: required key is missing")
            else:
                msg = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"{where}: {_format_loc(loc)}: {msg}")
        raise ConfigError("\n".join(lines)) from exc


def load_app_config(path: Path) -> AppConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", hint="pass the file: --config PATH"
        ) from exc
    return parse_app_config(text, filename=str(path))

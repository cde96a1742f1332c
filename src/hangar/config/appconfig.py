"""``hangar.toml``: an app's configuration, modelled on fly.toml.

Parsed with ``tomllib`` into Pydantic models that reject unknown keys. Errors
name the key's dotted path and the line it is on, e.g.::

    hangar.toml:12: http_service.checks[0].interval: invalid duration '5 parsecs'

Durations are written as in fly.toml (``"500ms"``, ``"10s"``, ``"2m"``,
``"1h"``) and held as seconds (float).

Every number, duration, list and string has a range (the table in
docs/hosts.md lists them), and what ends up in an HTTP request or a path
(check paths, header names and values, mount destinations) refuses control,
zero-width and bidirectional-override characters.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hangar.config._fields import (
    FROM_USER,
    CheckInterval,
    CheckName,
    CheckTimeout,
    Duration,
    GracePeriod,
    GroupName,
    Headers,
    KillTimeout,
    Port,
    RequestPath,
    from_user,
    not_yet,
    parse_duration,
    parse_memory_mb,
    refuse_all_but,
    refuse_hidden,
)
from hangar.domain.names import validate_dns_label
from hangar.domain.volumes import check_destination
from hangar.errors import ConfigError
from hangar.errors import ValidationError as HangarValidationError

__all__ = [
    "AppConfig",
    "load_app_config",
    "parse_app_config",
    "parse_duration",
    "parse_memory_mb",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hsts(_Model):
    enabled: bool = True
    max_age: int = Field(default=63072000, ge=0, le=2 * 63072000)
    include_subdomains: bool = True
    preload: bool = False


class Concurrency(_Model):
    """HTTP: the edge sends a machine one request per connection, so limits count requests."""

    type: Annotated[
        Literal["connections", "requests"],
        refuse_all_but("requests", "the edge limits the requests in flight to each machine"),
    ] = "requests"
    soft_limit: int = Field(default=20, ge=1, le=100_000)
    hard_limit: int = Field(default=25, ge=1, le=100_000)

    @model_validator(mode="after")
    def _soft_below_hard(self) -> Concurrency:
        if self.soft_limit > self.hard_limit:
            raise ValueError("soft_limit must not exceed hard_limit")
        return self


class HttpCheck(_Model):
    grace_period: GracePeriod = 1.0
    interval: CheckInterval = 15.0
    timeout: CheckTimeout = 2.0
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    path: RequestPath = "/"
    protocol: Annotated[
        Literal["http", "https"], refuse_all_but("http", "checks speak plain HTTP")
    ] = "http"
    headers: Headers = {}


class TcpCheck(_Model):
    grace_period: GracePeriod = 1.0
    interval: CheckInterval = 15.0
    timeout: CheckTimeout = 2.0


class HttpService(_Model):
    internal_port: Port = 8080
    force_https: bool = True
    hsts: Hsts = Hsts()
    concurrency: Concurrency = Concurrency()
    checks: list[HttpCheck] = Field(default=[], max_length=16)
    # Requests a second per client address; HAProxy counts in 32 bits.
    rate_limit: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("hsts", mode="before")
    @classmethod
    def _hsts_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


def _handlers(value: Any, info: pydantic.ValidationInfo) -> Any:
    if from_user(info) and isinstance(value, list) and "http" in value:
        raise ValueError(
            "the `http` handler is not supported on [[services]]; use [http_service] for HTTP"
        )
    return value


class ServicePort(_Model):
    port: Port
    handlers: Annotated[
        list[Literal["http", "tls", "proxy_proto"]],
        BeforeValidator(_handlers),
        Field(max_length=3),
    ] = []
    force_https: Annotated[bool, not_yet("force_https on [[services]] ports")] = False


class TcpConcurrency(_Model):
    """TCP: the edge counts connections to each machine."""

    type: Annotated[
        Literal["connections", "requests"],
        refuse_all_but("connections", "a TCP service's limits count connections"),
    ] = "connections"
    soft_limit: Annotated[
        int | None, not_yet("soft_limit for TCP services", "set hard_limit only")
    ] = None
    hard_limit: int = Field(default=25, ge=1, le=100_000)


class Service(_Model):
    protocol: Annotated[
        Literal["tcp", "udp"], refuse_all_but("tcp", "UDP services are not routed")
    ] = "tcp"
    internal_port: Port
    ports: list[ServicePort] = Field(min_length=1, max_length=16)
    concurrency: TcpConcurrency = TcpConcurrency()
    tcp_checks: list[TcpCheck] = Field(default=[], max_length=16)
    http_checks: Annotated[
        list[HttpCheck],
        not_yet("[[services.http_checks]]", 'use [checks.NAME] with type = "http"'),
        Field(max_length=16),
    ] = []


class NamedCheck(_Model):
    type: Literal["tcp", "http"]
    port: Port
    grace_period: GracePeriod = 1.0
    interval: CheckInterval = 15.0
    timeout: CheckTimeout = 2.0
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    path: RequestPath = "/"
    headers: Headers = {}


class Mount(_Model):
    """A volume of the app, mounted in each of its machines (each holds its own)."""

    source: str = Field(pattern=r"^[a-z][a-z0-9_]{0,29}$")
    destination: Annotated[
        str, Field(pattern=r"^/.+", max_length=512), AfterValidator(refuse_hidden)
    ]
    initial_size: Annotated[
        Annotated[str, Field(pattern=r"^\s*\d{1,7}\s*(mb|gb|mib|gib)?\s*$")] | None,
        not_yet(
            "making volumes on deploy (initial_size)",
            "create them first: `hangar volumes create NAME --app APP --size 1gb`",
        ),
    ] = None
    processes: Annotated[
        list[GroupName], not_yet("process groups (mounts' processes)"), Field(max_length=32)
    ] = []

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str, info: pydantic.ValidationInfo) -> str:
        if not from_user(info):
            return value
        try:
            return check_destination(value)
        except HangarValidationError as exc:
            raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from exc


class SecretFile(_Model):
    """A secret given to machines as a file, on tmpfs, under /run or /tmp."""

    guest_path: Annotated[str, Field(max_length=1024), AfterValidator(refuse_hidden)]
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


def _max_unavailable(value: Any) -> Any:
    """A count of machines (1 to 1000), a fraction (0 < f < 1) or a percentage ("25%")."""
    if isinstance(value, bool):
        raise ValueError("write a count (2) or a percentage ('25%')")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,3}(?:\.\d+)?)\s*%\s*", value)
        if m is None or not 0 < float(m.group(1)) <= 100:
            raise ValueError(f"{value!r}: write a percentage from '1%' to '100%', or a count")
        return f"{float(m.group(1)):g}%"
    if (
        isinstance(value, int | float)
        and math.isfinite(value)
        and (0 < value < 1 or (float(value).is_integer() and 1 <= value <= 1000))
    ):
        return float(value)
    raise ValueError(f"{value!r}: write a count from 1 to 1000, or a percentage ('25%')")


class Deploy(_Model):
    strategy: Literal["immediate", "rolling", "canary", "bluegreen"] = "rolling"
    # How many machines a rolling or canary deploy moves at once.
    max_unavailable: Annotated[float | str, BeforeValidator(_max_unavailable)] = 1.0
    release_command: str | None = None
    wait_timeout: Duration = 300.0
    # How long a machine out of the edge's rotation finishes its requests
    # before it is stopped.
    drain_timeout: KillTimeout = 1.0
    # How long a blue-green deploy keeps the old set after the switch.
    bluegreen_grace: GracePeriod = 30.0
    # A blue-green switches back if, within error_window of its switch, the
    # edge answers more than this share of the app's requests with a 5xx.
    max_error_rate: float | None = Field(default=None, gt=0, le=1)
    error_window: Annotated[float, BeforeValidator(parse_duration), Field(ge=1, le=600)] = 30.0

    @model_validator(mode="after")
    def _error_rate_needs_blue_green(self) -> Deploy:
        if self.max_error_rate is not None and self.strategy != "bluegreen":
            raise ValueError(
                "max_error_rate: only a blue-green deploy watches the edge after its switch"
                ' (it keeps the old set to switch back to); set strategy = "bluegreen"'
            )
        return self


class Vm(_Model):
    cpus: int = Field(default=1, ge=1, le=64)
    memory: Annotated[int, BeforeValidator(parse_memory_mb), Field(ge=64, le=262144)] = 256
    cpu_kind: Annotated[
        Literal["shared", "performance"],
        refuse_all_but("shared", "machines share the host's CPUs (cpus sets a quota)"),
    ] = "shared"
    processes: Annotated[list[GroupName], not_yet("process groups")] = []


class Restart(_Model):
    policy: Literal["no", "always", "on-failure"] = "on-failure"
    retries: int = Field(default=10, ge=0, le=1000)
    processes: Annotated[list[GroupName], not_yet("process groups")] = []


class Metrics(_Model):
    port: Port
    path: RequestPath = "/metrics"


class NetworkConfig(_Model):
    """``[network]``: how the app's machines reach beyond their private network."""

    egress: bool = True  # outbound connections to the internet, through NAT


class Build(_Model):
    image: Annotated[str, Field(max_length=1000), AfterValidator(refuse_hidden)] | None = None


class AppConfig(_Model):
    app: str
    primary_region: str = Field(default="local", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    kill_signal: Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL"] = "SIGINT"
    kill_timeout: KillTimeout = 5.0
    build: Build = Build()
    env: dict[str, Annotated[str, Field(max_length=32 * 1024)]] = Field(default={}, max_length=512)
    http_service: HttpService | None = None
    services: list[Service] = Field(default=[], max_length=32)
    checks: dict[CheckName, NamedCheck] = Field(default={}, max_length=32)
    mounts: list[Mount] = Field(default=[], max_length=4)
    files: list[SecretFile] = Field(default=[], max_length=64)
    network: NetworkConfig = NetworkConfig()
    deploy: Deploy = Deploy()
    vm: list[Vm] = Field(default=[], max_length=32)
    restart: list[Restart] = Field(default=[], max_length=32)
    metrics: Annotated[list[Metrics], Field(max_length=16)] | Metrics | None = None
    processes: Annotated[
        dict[str, Annotated[str, Field(max_length=4096)]],
        not_yet("process groups ([processes])"),
        Field(max_length=32),
    ] = {}

    @field_validator("app")
    @classmethod
    def _app_name(cls, value: str, info: pydantic.ValidationInfo) -> str:
        # An app stored before IDNA-shaped labels were refused keeps loading.
        try:
            return validate_dns_label(value, what="app name", reserved_ok=not from_user(info))
        except HangarValidationError as exc:
            raise ValueError(exc.message) from exc

    @model_validator(mode="after")
    def _mounts_apart(self) -> AppConfig:
        """Each volume mounted once, at its own place, not over or under another mount."""
        seen: list[str] = []
        names: set[str] = set()
        for mount in self.mounts:
            if mount.source in names:
                raise ValueError(f"mounts: volume {mount.source!r} is mounted twice")
            names.add(mount.source)
            for other in [*seen, *(f.guest_path for f in self.files)]:
                if _nested(mount.destination, other):
                    raise ValueError(
                        f"mounts: {mount.destination!r} overlaps {other!r}: "
                        "each mount needs a place of its own"
                    )
            seen.append(mount.destination)
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.upper().startswith("HANGAR_"):
                raise ValueError(f"{name!r}: names starting HANGAR_ are reserved")
        return value


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


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
        return AppConfig.model_validate(data, context=FROM_USER)
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

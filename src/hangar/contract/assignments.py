"""A host's desired machines, and what it observed of them.

Validated on construction (pydantic dataclasses): an assignment the control
plane sends and an agent receives cannot carry a field of the wrong type, a
field nobody knows, or a number out of range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticError
from pydantic.dataclasses import dataclass

from hangar.contract.volumes import VolumeMount
from hangar.domain.reconcile import RestartPolicy
from hangar.errors import ValidationError

__all__ = ["Assignment", "CheckResult", "CheckSpec", "MachineStatus", "MetricsTarget"]

_STRICT = ConfigDict(extra="forbid")
_T = TypeVar("_T")


@dataclass(frozen=True, config=_STRICT)
class MetricsTarget:
    """Where a machine serves its own Prometheus metrics (``[metrics]`` in hangar.toml)."""

    port: int = Field(ge=1, le=65535)
    path: str = Field(default="/metrics", pattern=r"^/[\x21-\x7e]{0,1023}$")


@dataclass(frozen=True, config=_STRICT)
class CheckSpec:
    """One health check of a machine, as ``hangar.toml`` declared it."""

    name: str
    kind: Literal["tcp", "http"]
    port: int = Field(ge=1, le=65535)
    interval: float = 15.0
    timeout: float = 2.0
    grace_period: float = 1.0
    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, config=_STRICT)
class Assignment:
    """One machine the control plane wants on this host, at one version."""

    machine_id: str
    app: str
    version: int
    state: Literal["started", "stopped", "destroyed"]
    image: str
    args: list[str] | None = None  # None: the image's entrypoint and command
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cpus: int = 1
    memory_mb: int = 256
    address: str | None = None
    restart: RestartPolicy = dataclasses.field(default_factory=RestartPolicy)
    kill_signal: str = "SIGINT"
    kill_timeout: float = 5.0
    checks: list[CheckSpec] = dataclasses.field(default_factory=list)
    generation: int = 0
    image_digest: str | None = None  # the manifest digest the release pinned
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # guest path -> secret
    egress: bool = True  # may reach beyond its private network
    # The organization the machine belongs to: an agent bounds each one's
    # concurrent slow work (checks, image pulls, stops) by it.
    org: str = ""
    # Where the agent scrapes the machine's own metrics, over the private network.
    metrics: list[MetricsTarget] = dataclasses.field(default_factory=list)
    # The volumes it mounts (their keys are asked for separately, sealed).
    mounts: list[VolumeMount] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assignment:
        """An assignment as the control plane sent it; ValidationError if malformed."""
        return _parse(_ASSIGNMENT, data, "assignment")


@dataclass(frozen=True, config=_STRICT)
class CheckResult:
    """The latest outcome of one check."""

    name: str
    passing: bool
    output: str
    at: float


@dataclass(frozen=True, config=_STRICT)
class MachineStatus:
    """What a host observed of one machine, reported up each round."""

    status: Literal["running", "stopped", "absent"]
    pid: int | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    started: bool = True  # False: the runtime failed before the process ran
    version: int | None = None
    generation: int = 0
    failed: bool = False
    reason: str = ""
    healthy: bool | None = None
    checks: list[CheckResult] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MachineStatus:
        return _parse(_STATUS, data, "machine status")


_ASSIGNMENT = TypeAdapter(Assignment)
_STATUS = TypeAdapter(MachineStatus)


def _parse(adapter: TypeAdapter[_T], data: Mapping[str, Any], what: str) -> _T:
    try:
        return adapter.validate_python(dict(data))
    except PydanticError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        raise ValidationError(f"malformed {what}: {where}: {first['msg']}") from exc

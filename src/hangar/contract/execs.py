"""Commands run inside a machine on behalf of a person (``hangar machines exec``)."""

from __future__ import annotations

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

__all__ = ["MAX_OUTPUT", "ExecOrder", "ExecResult"]

# Each stream, so that an answer relayed by an agent fits the API's body cap.
MAX_OUTPUT = 256 << 10


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ExecOrder:
    """A command for a machine on another host, handed to that host's agent."""

    id: str
    machine_id: str
    cmd: list[str] = Field(min_length=1)
    timeout: float = Field(gt=0, le=3600)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

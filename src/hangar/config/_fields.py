"""The value types of ``hangar.toml``: durations, sizes, bounded numbers, plain text.

Each type carries its range (docs/hosts.md, "Limits of hangar.toml"), so a
model field says what it accepts by its type alone. Values written by a user
(validated with the ``FROM_USER`` context) are held to today's rules; values
read back from a stored release keep the rules they were stored under.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field

from hangar.domain.names import refuse_invisible
from hangar.errors import ValidationError as HangarValidationError

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
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite, non-negative number")
    return seconds


def parse_memory_mb(value: Any) -> int:
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

# What a user writes is held to the full rule of domain/names.py (control,
# zero-width, bidirectional and other invisible characters). Releases stored
# before that rule was widened still load: they are held to the rule they were
# accepted under, which refused these (C0, DEL, C1, zero-width and bidi).
_STORED_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)
# What an HTTP check may request: a path and query of visible ASCII.
_REQUEST_PATH = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1023}$"
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"


# Keys of fly.toml that Hangar does not act on are refused when a user writes
# them (parse_app_config validates with FROM_USER), never silently accepted.
# Releases stored before a key was refused still load: they validate without it.
FROM_USER = {"from_user": True}


def from_user(info: pydantic.ValidationInfo) -> bool:
    return bool(info.context and info.context.get("from_user"))


def not_yet(what: str, hint: str = "remove it") -> Any:
    """A validator refusing any value but the default: Hangar does not act on ``what`` yet."""

    def refuse(value: Any, info: pydantic.ValidationInfo) -> Any:
        if from_user(info) and value not in (None, [], {}, False):
            raise ValueError(f"Hangar does not support {what} yet; {hint}")
        return value

    return BeforeValidator(refuse)


def refuse_all_but(allowed: str, why: str) -> Any:
    """A validator refusing every value but ``allowed`` (the one Hangar acts on)."""

    def check(value: Any, info: pydantic.ValidationInfo) -> Any:
        if from_user(info) and value != allowed:
            raise ValueError(f"{value!r} is not supported: {why}")
        return value

    return BeforeValidator(check)


def refuse_hidden(value: str, info: pydantic.ValidationInfo) -> str:
    if from_user(info):
        try:
            return refuse_invisible(value, what="the value")
        except HangarValidationError as exc:
            raise ValueError(exc.message) from None
    if _STORED_INVISIBLE.search(value):
        raise ValueError("control, zero-width and bidirectional characters are not allowed")
    return value


def _plain_name(value: str, info: pydantic.ValidationInfo) -> str:
    """A name a user gives (a check, a process group): nothing invisible in it."""
    if from_user(info):
        try:
            refuse_invisible(value, what=f"the name {value!r}")
        except HangarValidationError as exc:
            raise ValueError(exc.message) from None
    return value


# Ranges (docs/hosts.md, "Limits of hangar.toml"): wide enough for any real
# app, narrow enough that no value stalls a loop or overflows what reads it.
KillTimeout = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=300)]
GracePeriod = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=3600)]
CheckInterval = Annotated[float, BeforeValidator(parse_duration), Field(ge=0.05, le=3600)]
CheckTimeout = Annotated[float, BeforeValidator(parse_duration), Field(ge=0.1, le=60)]
PlainText = Annotated[str, AfterValidator(refuse_hidden)]
HeaderName = Annotated[str, Field(pattern=_HEADER_NAME)]
HeaderValue = Annotated[str, Field(max_length=1024), AfterValidator(refuse_hidden)]
RequestPath = Annotated[str, Field(pattern=_REQUEST_PATH)]
GroupName = Annotated[str, Field(max_length=63), AfterValidator(_plain_name)]
CheckName = Annotated[str, Field(min_length=1, max_length=63), AfterValidator(_plain_name)]
Headers = Annotated[dict[HeaderName, HeaderValue], Field(max_length=32)]

"""Every error a Hangar user can see.

The tree::

    HangarError                       exit 1, HTTP 500 unless a subclass says otherwise
    ├── ConfigError                   a setting or hangar.toml is wrong (exit 2)
    ├── ValidationError               a request or argument is malformed (HTTP 400/422)
    │   └── PayloadTooLarge           a body over the cap (HTTP 413)
    ├── AuthError                     no usable credentials (HTTP 401)
    ├── PermissionDenied              credentials valid, action not allowed (HTTP 403)
    ├── NotFound                      no such object, or not yours (HTTP 404)
    ├── Conflict                      the object exists or the change races another (HTTP 409)
    ├── WaitTimeout                   what was waited for did not happen in time (HTTP 408)
    ├── TooManyRequests               too many failed attempts: wait and retry (HTTP 429)
    ├── KeyMaterialError              a key file is missing, loose or does not decrypt
    ├── IntegrityError                stored data fails its cryptographic check
    ├── StoreError                    the database refused or is unreachable (HTTP 503)
    ├── CommandError                  a host command failed; names it and its stderr
    └── ApiError                      the CLI got a problem response from the API

Each error carries a message a person can act on and, where useful, a hint
naming the command that helps. The API renders them as RFC 7807 problem JSON;
the CLI prints ``error: <message>`` and ``hint: <hint>`` and exits non-zero.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "ApiError",
    "AuthError",
    "CommandError",
    "ConfigError",
    "Conflict",
    "HangarError",
    "IntegrityError",
    "KeyMaterialError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "StoreError",
    "TooManyRequests",
    "ValidationError",
    "WaitTimeout",
    "audited",
]


class HangarError(Exception):
    """Base of every error Hangar shows a person."""

    status: int = 500
    title: str = "Internal error"
    code: str = "internal"
    exit_code: int = 1
    # Set once a refusal (401/403) is in the audit trail, so the API's last-resort
    # auditing in its error handler does not record it twice.
    audited: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(HangarError):
    status = 400
    title = "Invalid configuration"
    code = "config"
    exit_code = 2


class ValidationError(HangarError):
    status = 422
    title = "Invalid request"
    code = "validation"
    exit_code = 2


class PayloadTooLarge(ValidationError):
    status = 413
    title = "Request body too large"
    code = "payload-too-large"


class AuthError(HangarError):
    status = 401
    title = "Authentication required"
    code = "unauthenticated"


class PermissionDenied(HangarError):
    status = 403
    title = "Permission denied"
    code = "forbidden"


class NotFound(HangarError):
    status = 404
    title = "Not found"
    code = "not-found"


class Conflict(HangarError):
    status = 409
    title = "Conflict"
    code = "conflict"


class WaitTimeout(HangarError):
    status = 408
    title = "Timed out waiting"
    code = "timeout"


class TooManyRequests(HangarError):
    """Too many failed attempts from one address or for one person: back off."""

    status = 429
    title = "Too many requests"
    code = "too-many-requests"

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = max(1, int(retry_after + 0.999))


class UpstreamError(HangarError):
    """Something Hangar depends on outside itself (a registry) failed."""

    status = 502
    title = "Upstream failed"
    code = "upstream"


class KeyMaterialError(HangarError):
    title = "Key material unusable"
    code = "key-material"


class IntegrityError(HangarError):
    title = "Integrity check failed"
    code = "integrity"


class StoreError(HangarError):
    status = 503
    title = "Store unavailable"
    code = "store"


class CommandError(HangarError):
    """A host command failed; the message names the command and its stderr."""

    title = "Host command failed"
    code = "command"

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        shown = " ".join(argv)
        detail = stderr.strip() or "(no output)"
        super().__init__(f"`{shown}` exited {returncode}: {detail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


_E = TypeVar("_E", bound=HangarError)


def audited(exc: _E) -> _E:
    """Mark ``exc`` as already written to the audit trail; returns it for ``raise``."""
    exc.audited = True
    return exc


class ApiError(HangarError):
    """The API answered with a problem document."""

    code = "api"

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status

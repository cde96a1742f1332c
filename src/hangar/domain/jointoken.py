"""The join token's text form (pure).

``hjt1.<id>.<secret>.<pin>``: the token's id, its one-time secret, and the
SHA-256 fingerprint of the installation's CA certificate. The pin lets a new
host trust the API it joins without having been given the CA beforehand: it
fetches the CA certificate and accepts it only if the fingerprint matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hangar.errors import ValidationError

__all__ = ["JoinToken", "format_join_token", "parse_join_token"]

PREFIX = "hjt1"
_FORM = re.compile(r"^hjt1\.(jt_[0-9a-f]{16})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{64})$")


@dataclass(frozen=True)
class JoinToken:
    id: str
    secret: str
    pin: str


def format_join_token(token: JoinToken) -> str:
    return f"{PREFIX}.{token.id}.{token.secret}.{token.pin}"


def parse_join_token(text: str) -> JoinToken:
    match = _FORM.fullmatch(text.strip())
    if match is None:
        raise ValidationError(
            "that is not a Hangar join token",
            hint="make one on the control plane with `hangar hosts join-token`",
        )
    return JoinToken(*match.groups())

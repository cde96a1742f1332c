"""Names users choose: DNS labels for apps and organizations (pure)."""

from __future__ import annotations

import re

from hangar.errors import ValidationError

__all__ = ["validate_dns_label", "validate_email"]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")


def validate_dns_label(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is a lowercase RFC 1123 DNS label, else raise ValidationError."""
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise ValidationError(
            f"{what} {name!r} is not a DNS label: use 1-63 lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit"
        )
    return name


def validate_email(email: str) -> str:
    if not _EMAIL.fullmatch(email):
        raise ValidationError(f"{email!r} is not an email address")
    return email.lower()

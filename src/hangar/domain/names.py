"""Names people choose, and the rules that keep them from deceiving (pure).

Every name, label and e-mail address Hangar accepts is checked here, once:
the API's request models use the pydantic types at the bottom, services call
the functions, and ``hangar.toml`` reuses both. What the caller may rely on:

* **No invisible characters** (``find_invisible``): C0 and C1 controls and
  DEL; every Unicode *format* character (category Cf: zero-width space and
  joiners, bidirectional embeddings, overrides and isolates, soft hyphen,
  byte-order mark, ...); line and paragraph separators; private-use,
  surrogate and unassigned code points; variation selectors, the combining
  grapheme joiner and the fillers that draw nothing (Hangul fillers, braille
  blank); and any whitespace but the ASCII space. They hide in logs, split
  header and config lines, and make one text read as another.
* **DNS labels** (``validate_dns_label``): 1-63 lowercase ASCII letters,
  digits and hyphens, not starting or ending with a hyphen, and never ``--``
  in the third and fourth places. That shape (``xn--`` and its siblings) is
  reserved for IDNA: a browser shows ``xn--80ak6aa92e`` as Cyrillic that
  reads as a Latin word, under the installation's own domain.
* **E-mail addresses** (``normalize_email``): refused if they hold invisible
  characters, then NFKC-normalized and lowercased, and then accepted only as
  plain ASCII ``local@domain`` (dot-atom local part, DNS-label domain). So
  ``ADMIN@example.com`` written in full-width letters is the same person as
  ``admin@example.com``, and the same address with a Cyrillic "a" is refused
  rather than listed beside the real one. Addresses are stored and compared
  only in this form.
* **Display names** (``validate_display_name``): free text (token names) of
  bounded length with no invisible character.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field

from hangar.errors import ValidationError

__all__ = [
    "AppName",
    "DisplayName",
    "DnsLabel",
    "EmailAddress",
    "PlainText",
    "find_invisible",
    "normalize_email",
    "refuse_invisible",
    "validate_app_name",
    "validate_display_name",
    "validate_dns_label",
    "validate_email",
]

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(\.{_ATOM})*")
_TLD = re.compile(r"[a-z]{2,63}|xn--[a-z0-9-]{1,59}")

# Code points that draw nothing yet are neither controls nor format characters.
_BLANKS = frozenset(
    {
        0x034F,  # combining grapheme joiner
        0x115F,  # Hangul choseong filler
        0x1160,  # Hangul jungseong filler
        0x17B4,  # Khmer vowel inherent aq
        0x17B5,  # Khmer vowel inherent aa
        0x2800,  # braille pattern blank
        0x3164,  # Hangul filler
        0xFFA0,  # half-width Hangul filler
    }
)
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def _is_invisible(char: str) -> bool:
    code = ord(char)
    if code < 0x80:
        return code < 0x20 or code == 0x7F
    category = unicodedata.category(char)
    return (
        category in _REFUSED_CATEGORIES
        or category == "Zs"  # every space but ASCII's
        or code in _BLANKS
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
    )


def find_invisible(text: str) -> str | None:
    """The first control, zero-width, bidi or otherwise invisible character, if any."""
    if text.isascii():
        # The common case, without a look-up per character.
        for char in text:
            if ord(char) < 0x20 or char == "\x7f":
                return char
        return None
    for char in text:
        if _is_invisible(char):
            return char
    return None


def _describe(char: str) -> str:
    name = unicodedata.name(char, "a control character")
    return f"U+{ord(char):04X} ({name})"


def refuse_invisible(text: str, *, what: str) -> str:
    """Return ``text``, or raise ValidationError naming the invisible character in it."""
    char = find_invisible(text)
    if char is not None:
        raise ValidationError(
            f"{what} contains {_describe(char)}: control, zero-width and bidirectional "
            "characters are not allowed"
        )
    return text


def validate_dns_label(name: str, *, what: str = "name", reserved_ok: bool = False) -> str:
    """Return ``name`` if it is a lowercase RFC 1123 DNS label, else raise ValidationError.

    Labels shaped like IDNA's (``--`` in places 3-4, as ``xn--``) are refused
    unless ``reserved_ok``, which is only for reading back names stored before
    the rule.
    """
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise ValidationError(
            f"{what} {name!r} is not a DNS label: use 1-63 lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit"
        )
    # Labels with "--" in places 3-4 are reserved for IDNA (RFC 5891 4.2.3.1).
    if not reserved_ok and name[2:4] == "--":
        raise ValidationError(
            f"{what} {name!r} has '--' in its third and fourth characters: that form "
            "(as in xn--) is reserved for internationalized names, which browsers show "
            "as other letters",
            hint="choose a name without '--' at that place",
        )
    return name


def validate_app_name(name: str) -> str:
    return validate_dns_label(name, what="app name")


def normalize_email(email: str) -> str:
    """The one form an e-mail address is stored and compared in; ValidationError if none.

    Invisible characters are refused before anything else, so normalization
    cannot hide them; then NFKC and lowercase; then the result must be plain
    ASCII ``local@domain``.
    """
    if not isinstance(email, str) or not 3 <= len(email) <= 254:
        raise ValidationError("an e-mail address has 3 to 254 characters")
    refuse_invisible(email, what="the e-mail address")
    text = unicodedata.normalize("NFKC", email).lower()
    local, at, domain = text.rpartition("@")
    labels = domain.split(".")
    if (
        not at
        or not text.isascii()
        or len(text) > 254
        or len(local) > 64
        or not _LOCAL.fullmatch(local)
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or not _TLD.fullmatch(labels[-1])
    ):
        raise ValidationError(
            f"{email!r} is not an e-mail address Hangar accepts: ASCII letters, digits and "
            "!#$%&'*+/=?^_`{|}~.- before the @, a DNS name after it",
        )
    return text


def validate_email(email: str) -> str:
    """Alias of ``normalize_email``: the normalized address, or ValidationError."""
    return normalize_email(email)


def validate_display_name(text: str, *, what: str = "name", max_length: int = 64) -> str:
    """Free text shown to people (a token's name): bounded, nothing invisible."""
    if len(text) > max_length:
        raise ValidationError(f"{what} has more than {max_length} characters")
    return refuse_invisible(text, what=what)


def _as_value_error(check: Callable[[str], str]) -> Callable[[str], str]:
    """Pydantic wants ValueError; Hangar's checks raise its own ValidationError."""

    def run(value: str) -> str:
        try:
            return check(value)
        except ValidationError as exc:
            raise ValueError(exc.message) from None

    return run


DnsLabel = Annotated[
    str,
    Field(min_length=1, max_length=63),
    AfterValidator(_as_value_error(validate_dns_label)),
]
AppName = Annotated[
    str, Field(min_length=1, max_length=63), AfterValidator(_as_value_error(validate_app_name))
]
EmailAddress = Annotated[
    str, Field(min_length=3, max_length=254), AfterValidator(_as_value_error(normalize_email))
]
DisplayName = Annotated[
    str,
    Field(max_length=64),
    AfterValidator(_as_value_error(lambda v: refuse_invisible(v, what="the name"))),
]
PlainText = Annotated[
    str, AfterValidator(_as_value_error(lambda v: refuse_invisible(v, what="the text")))
]

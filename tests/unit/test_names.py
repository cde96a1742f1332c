"""Names that deceive: invisible characters, IDNA-shaped labels, look-alike e-mails."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticError

from hangar.cli.main import run
from hangar.crypto.macaroons import Macaroon, mint
from hangar.domain.names import (
    AppName,
    DisplayName,
    DnsLabel,
    EmailAddress,
    find_invisible,
    normalize_email,
    refuse_invisible,
    validate_dns_label,
)
from hangar.errors import ValidationError

# A sample of each kind, by name, so a failure says which one got through.
INVISIBLE = {
    "NUL": "\x00",
    "TAB": "\t",
    "LF": "\n",
    "CR": "\r",
    "ESC": "\x1b",
    "DEL": "\x7f",
    "NEL (C1)": "\x85",
    "CSI (C1)": "\x9b",
    "soft hyphen": "\u00ad",
    "no-break space": "\u00a0",
    "Arabic letter mark": "\u061c",
    "Mongolian vowel separator": "\u180e",
    "zero-width space": "\u200b",
    "zero-width non-joiner": "\u200c",
    "zero-width joiner": "\u200d",
    "left-to-right mark": "\u200e",
    "right-to-left mark": "\u200f",
    "left-to-right embedding": "\u202a",
    "right-to-left override": "\u202e",
    "left-to-right isolate": "\u2066",
    "pop directional isolate": "\u2069",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "word joiner": "\u2060",
    "invisible separator": "\u2063",
    "ideographic space": "\u3000",
    "byte-order mark": "\ufeff",
    "Hangul filler": "\u3164",
    "braille blank": "\u2800",
    "variation selector 16": "\ufe0f",
    "combining grapheme joiner": "\u034f",
    "tag space": "\U000e0020",
    "private use": "\ue000",
    "unassigned": "\U000effff",
}


def _variants(text: str, char: str) -> list[str]:
    """The character first, in the middle and last."""
    middle = len(text) // 2
    return [char + text, text[:middle] + char + text[middle:], text + char]


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_every_kind_of_invisible_character_is_refused_everywhere(char: str) -> None:
    for text in _variants("clinic-api", char):
        assert find_invisible(text) == char
        with pytest.raises(ValidationError, match=f"U\\+{ord(char):04X}"):
            refuse_invisible(text, what="the name")
        for kind in (DnsLabel, AppName, DisplayName):
            with pytest.raises(PydanticError):
                TypeAdapter(kind).validate_python(text)
    for email in _variants("admin@example.com", char):
        with pytest.raises(ValidationError):
            normalize_email(email)
        with pytest.raises(PydanticError):
            TypeAdapter(EmailAddress).validate_python(email)


@given(st.text(alphabet=st.characters(categories=("Cc", "Cf", "Zl", "Zp", "Co")), min_size=1))
def test_any_control_format_or_separator_character_is_found(hidden: str) -> None:
    assert find_invisible("token" + hidden + "name") is not None


@given(st.text(alphabet=st.characters(categories=("L", "M", "N", "P", "S")), max_size=40))
def test_visible_text_passes(text: str) -> None:
    if any(unicodedata.category(c) == "Mn" and 0xFE00 <= ord(c) <= 0xFE0F for c in text):
        return  # variation selectors draw nothing, and are refused
    if any(
        ord(c) in (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0) for c in text
    ):
        return
    if any(0xE0100 <= ord(c) <= 0xE01EF for c in text):
        return
    assert find_invisible(text + " words") is None


@pytest.mark.parametrize(
    "label",
    ["xn--80ak6aa92e", "xn--e1afmkfd", "ab--c", "zz--top", "a1--b", "00--00"],
)
def test_idna_shaped_labels_are_refused(label: str) -> None:
    with pytest.raises(ValidationError, match="reserved"):
        validate_dns_label(label, what="app name")
    with pytest.raises(PydanticError):
        TypeAdapter(AppName).validate_python(label)
    # Names stored before the rule still read back.
    assert validate_dns_label(label, reserved_ok=True) == label


@given(st.from_regex(r"[a-z0-9]{2}--[a-z0-9]{1,20}", fullmatch=True))
def test_any_label_with_hyphens_in_places_three_and_four_is_refused(label: str) -> None:
    with pytest.raises(ValidationError):
        validate_dns_label(label)


@pytest.mark.parametrize("label", ["a-b--c", "abc--d", "a--", "x-n", "xn-a", "web"])
def test_other_hyphens_are_fine(label: str) -> None:
    if label.endswith("-"):
        with pytest.raises(ValidationError, match="not a DNS label"):
            validate_dns_label(label)
    else:
        assert validate_dns_label(label) == label


LOOK_ALIKES = [
    "\u0430dmin@example.com",  # Cyrillic a
    "admin@\u0435xample.com",  # Cyrillic e
    "adm\u0456n@example.com",  # Cyrillic i
    "\u03b1dmin@example.com",  # Greek alpha
    "admin@example.c\u043em",  # Cyrillic o in the TLD
    "admin@ex\u0430mple.com",
    "\u0251dmin@example.com",  # Latin alpha
    "admin\u2024example.com",  # one dot leader, no @
]


@pytest.mark.parametrize("email", LOOK_ALIKES)
def test_look_alike_emails_are_refused(email: str) -> None:
    with pytest.raises(ValidationError):
        normalize_email(email)


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("admin@example.com", "admin@example.com"),
        ("Admin@Example.COM", "admin@example.com"),
        ("\uff21\uff24\uff2d\uff29\uff2e@example.com", "admin@example.com"),  # full-width
        ("admin\uff20example.com", "admin@example.com"),  # full-width @
        ("o'brien+ops@mail.example.co.uk", "o'brien+ops@mail.example.co.uk"),
        ("ops@xn--80ak6aa92e.xn--p1ai", "ops@xn--80ak6aa92e.xn--p1ai"),
    ],
)
def test_emails_are_stored_in_one_form(written: str, stored: str) -> None:
    assert normalize_email(written) == stored
    assert normalize_email(stored) == stored


@pytest.mark.parametrize(
    "email",
    [
        "admin",
        "@example.com",
        "admin@",
        "admin@localhost",
        "admin@example.c",
        "a@b@example.com",
        ".admin@example.com",
        "ad..min@example.com",
        "admin.@example.com",
        '"admin"@example.com',
        "admin@-example.com",
        "admin@exa_mple.com",
        "admin @example.com",
        "a" * 65 + "@example.com",
        "admin@" + "a" * 250 + ".com",
    ],
)
def test_malformed_emails_are_refused(email: str) -> None:
    with pytest.raises(ValidationError):
        normalize_email(email)


@given(st.text(max_size=80))
def test_normalized_emails_are_ascii_and_stable(text: str) -> None:
    try:
        email = normalize_email(text)
    except ValidationError:
        return
    assert email.isascii() and email == email.lower()
    assert find_invisible(email) is None
    assert normalize_email(email) == email
    assert email == unicodedata.normalize("NFKC", text).lower()


def test_pydantic_types_report_a_field_error() -> None:
    class Body(BaseModel):
        name: DisplayName
        email: EmailAddress

    with pytest.raises(PydanticError) as caught:
        Body(name="deploy\u202ekey", email="admin@example.com")
    assert caught.value.errors()[0]["loc"] == ("name",)
    assert Body(name="CI token (main)", email="ADMIN@example.com").email == "admin@example.com"


@pytest.mark.parametrize("app", ["web\u202e", "web,db", "Web", "web db", "web\x00"])
def test_the_cli_will_not_attenuate_to_a_malformed_app_caveat(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Such a caveat would make the whole token invalid on first use: refused at once."""
    token = mint(b"k" * 32, '{"tid":"t","kid":"k"}').serialize()
    assert run(["tokens", "attenuate", "--token", token, "--app", app]) != 0
    assert "app name" in capsys.readouterr().err
    assert run(["tokens", "attenuate", "--token", token, "--app", "web"]) == 0
    printed = capsys.readouterr().out.strip()
    assert Macaroon.parse(printed).caveats == ("apps = web",)

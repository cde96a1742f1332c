from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.crypto.macaroons import MAX_CAVEATS, Macaroon, mint
from hangar.errors import AuthError

KEY = secrets.token_bytes(32)
caveat_text = st.text(
    alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
)


def test_roundtrip_and_verify() -> None:
    m = mint(KEY, '{"tid":"tok_1"}', ("org = o1",))
    parsed = Macaroon.parse(m.serialize())
    assert parsed == m
    assert parsed.verify(KEY) == ("org = o1",)


def test_wrong_root_key_is_rejected() -> None:
    m = mint(KEY, "id")
    with pytest.raises(AuthError, match="signature"):
        m.verify(secrets.token_bytes(32))


def test_attenuation_needs_no_key_and_still_verifies() -> None:
    m = mint(KEY, "id", ("org = o1",)).attenuate("actions = read", "apps = a")
    assert Macaroon.parse(m.serialize()).verify(KEY) == ("org = o1", "actions = read", "apps = a")


@given(st.lists(caveat_text, min_size=1, max_size=8), st.data())
def test_dropping_or_editing_any_caveat_breaks_the_signature(
    caveats: list[str], data: st.DataObject
) -> None:
    m = mint(KEY, "id", tuple(caveats))
    index = data.draw(st.integers(0, len(caveats) - 1))
    dropped = Macaroon(m.identifier, m.caveats[:index] + m.caveats[index + 1 :], m.signature)
    with pytest.raises(AuthError):
        dropped.verify(KEY)
    edited_list = list(m.caveats)
    edited_list[index] = edited_list[index] + "x"
    with pytest.raises(AuthError):
        Macaroon(m.identifier, tuple(edited_list), m.signature).verify(KEY)


def test_changing_the_identifier_breaks_the_signature() -> None:
    m = mint(KEY, '{"tid":"tok_1"}')
    with pytest.raises(AuthError):
        Macaroon('{"tid":"tok_2"}', m.caveats, m.signature).verify(KEY)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "Bearer x",
        "hm1_",
        "hm1_!!!!",
        "hm1_e30",
        "hm1_" + "A" * 9000,
        "hm1_eyJpIjoxLCJjIjpbXSwicyI6IjAwIn0",
    ],
)
def test_malformed_tokens_are_rejected_clearly(token: str) -> None:
    with pytest.raises(AuthError):
        Macaroon.parse(token)


def test_caveat_count_is_bounded() -> None:
    m = mint(KEY, "id")
    with pytest.raises(AuthError, match="at most"):
        m.attenuate(*[f"apps = a{i}" for i in range(MAX_CAVEATS + 1)])

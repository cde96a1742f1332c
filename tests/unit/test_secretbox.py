"""Secret values under per-app data keys, and sealed delivery to hosts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.crypto.keyring import FileKekProvider, Keyring, generate_kek_file
from hangar.crypto.secretbox import AppKey, Opener, SecretRef, new_app_key, seal
from hangar.domain.dotenv import parse_dotenv
from hangar.errors import IntegrityError, ValidationError


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    generate_kek_file(tmp_path / "kek")
    return Keyring(FileKekProvider(tmp_path / "kek"))


def test_values_round_trip_and_never_repeat(keyring: Keyring) -> None:
    key = AppKey(keyring, "app_a", 1, new_app_key(keyring, "app_a", 1))
    ref = SecretRef("org_1", "app_a", "DATABASE_URL", 3)
    one, two = key.encrypt(ref, b"postgres://x"), key.encrypt(ref, b"postgres://x")
    assert one != two  # a fresh nonce each time
    assert b"postgres" not in one
    assert key.decrypt(ref, one) == b"postgres://x"
    assert one[0] == 1  # the format's version byte


def test_a_flipped_byte_or_a_moved_ciphertext_is_refused_by_name(keyring: Keyring) -> None:
    key = AppKey(keyring, "app_a", 1, new_app_key(keyring, "app_a", 1))
    ref = SecretRef("org_1", "app_a", "API_KEY", 1)
    blob = bytearray(key.encrypt(ref, b"k"))
    blob[-1] ^= 1
    with pytest.raises(IntegrityError, match="secret API_KEY fails authentication"):
        key.decrypt(ref, bytes(blob))
    good = key.encrypt(ref, b"k")
    for moved in (
        SecretRef("org_1", "app_b", "API_KEY", 1),  # another app's row
        SecretRef("org_1", "app_a", "OTHER", 1),  # another name
        SecretRef("org_1", "app_a", "API_KEY", 2),  # another version
    ):
        with pytest.raises(IntegrityError, match="fails authentication"):
            key.decrypt(moved, good)
    other_app = AppKey(keyring, "app_b", 1, new_app_key(keyring, "app_b", 1))
    with pytest.raises(IntegrityError):
        other_app.decrypt(SecretRef("org_1", "app_b", "API_KEY", 1), good)


def test_digests_are_per_app(keyring: Keyring) -> None:
    a = AppKey(keyring, "app_a", 1, new_app_key(keyring, "app_a", 1))
    b = AppKey(keyring, "app_b", 1, new_app_key(keyring, "app_b", 1))
    assert a.digest(b"same") == a.digest(b"same") != b.digest(b"same")


def test_a_wrapped_data_key_belongs_to_its_app(keyring: Keyring) -> None:
    wrapped = new_app_key(keyring, "app_a", 1)
    with pytest.raises(IntegrityError):
        AppKey(keyring, "app_b", 1, wrapped)


def test_sealed_values_open_only_with_the_request_key_for_that_machine() -> None:
    opener = Opener()
    sealed = seal({"A": "1", "B": "two\nlines"}, opener.public_b64(), "m_1")
    assert "two" not in str(sealed)
    assert opener.open(sealed, "m_1") == {"A": "1", "B": "two\nlines"}
    with pytest.raises(IntegrityError):
        opener.open(sealed, "m_2")
    with pytest.raises(IntegrityError):
        Opener().open(sealed, "m_1")
    with pytest.raises(ValidationError, match="X25519"):
        seal({}, "not base64!", "m_1")


def test_dotenv_as_files_write_it() -> None:
    text = (
        "# comment\n"
        "\n"
        "export PLAIN=value  # trailing comment\n"
        "SINGLE='no $escapes \\n here'\n"
        'DOUBLE="tab\\there \\"quoted\\""\n'
        'MULTI="line one\n'
        'line two"\n'
        "EMPTY=\n"
    )
    assert parse_dotenv(text) == [
        ("PLAIN", "value"),
        ("SINGLE", "no $escapes \\n here"),
        ("DOUBLE", 'tab\there "quoted"'),
        ("MULTI", "line one\nline two"),
        ("EMPTY", ""),
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("A=1\nnot a line\n", "line 2: expected NAME=value"),
        ("A=1\n1BAD=x\n", "line 2"),
        ('A="never closed\nB=2\n', 'line 1: the " quote is never closed'),
        ("A='x' junk\n", "line 1: unexpected text"),
    ],
)
def test_malformed_dotenv_names_the_line(text: str, words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace('"', '"')):
        parse_dotenv(text)


# Line breaks other than \n would be read as line ends by splitlines: not in values.
_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
    )
)


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), _TEXT))
def test_any_value_survives_double_quoting(values: dict[str, str]) -> None:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'

    text = "\n".join(f"{k}={quote(v)}" for k, v in values.items())
    assert parse_dotenv(text) == list(values.items())

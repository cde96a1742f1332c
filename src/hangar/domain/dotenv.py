"""Parsing .env files (pure): the lines `hangar secrets import` reads."""

from __future__ import annotations

import re

from hangar.errors import ValidationError

__all__ = ["parse_dotenv"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def parse_dotenv(text: str) -> list[tuple[str, str]]:
    """``NAME=value`` lines as a .env file writes them; errors name the line.

    Supports comments, blank lines, ``export``, single quotes (literal),
    double quotes (with \\n, \\t, \\", \\\\ escapes, and values spanning lines)
    and unquoted values (trailing `` # comment`` removed).
    """
    pairs: list[tuple[str, str]] = []
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        # Only leading space goes: a quoted value keeps its trailing space.
        number, line = n + 1, lines[n].lstrip()
        n += 1
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValidationError(f"line {number}: expected NAME=value, got {lines[number - 1]!r}")
        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            quote, body = rest[0], rest[1:]
            while True:
                end = _closing(body, quote)
                if end >= 0:
                    break
                if n >= len(lines):
                    raise ValidationError(f"line {number}: the {quote} quote is never closed")
                body += "\n" + lines[n]
                n += 1
            value, after = body[:end], body[end + 1 :].strip()
            if after and not after.startswith("#"):
                raise ValidationError(f"line {number}: unexpected text after the closing quote")
            if quote == '"':
                value = _unescape(value)
        else:
            value = re.split(r"\s+#", rest, maxsplit=1)[0].strip()
        pairs.append((name, value))
    return pairs


def _closing(body: str, quote: str) -> int:
    i = 0
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1


def _unescape(value: str) -> str:
    escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), value)

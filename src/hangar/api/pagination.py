"""Cursor pagination: opaque cursors, bounded page sizes."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from hangar.errors import ValidationError

__all__ = ["Limit", "Page", "decode_cursor", "encode_cursor", "page_of"]

T = TypeVar("T")
R = TypeVar("R")

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": value}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type[T]) -> T | None:
    """The position a cursor points after, which must be of type ``kind``."""
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValidationError("the cursor is not valid; start again without it") from exc
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValidationError("the cursor is not valid; start again without it")
    return value


def page_of(
    rows: Sequence[R], limit: int, item: Callable[[R], T], position: Callable[[R], Any]
) -> Page[T]:
    """A page from ``rows`` fetched with ``limit + 1``: the extra row says there is more."""
    shown = rows[:limit]
    more = len(rows) > limit
    return Page(
        items=[item(r) for r in shown],
        next_cursor=encode_cursor(position(shown[-1])) if more else None,
    )

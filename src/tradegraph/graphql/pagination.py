"""Relay-style cursor connections with a hard page-size cap.

Cursors are opaque (base64 of a JSON key); services paginate by keyset (``after`` the
last key), so pages stay stable while rows are added and cost the same at any depth.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import strawberry

from tradegraph.errors import DomainError

NodeT = TypeVar("NodeT")
RowT = TypeVar("RowT")


@strawberry.type(description="Where a page ends and whether more follow.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="True when another page follows.")
    end_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")


@strawberry.type(description="One item of a page with its cursor.")
class Edge(Generic[NodeT]):
    cursor: str = strawberry.field(description="Opaque position of this item.")
    node: NodeT = strawberry.field(description="The item.")


@strawberry.type(description="A page of items.")
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]] = strawberry.field(description="Items with their cursors.")
    page_info: PageInfo = strawberry.field(description="Paging information.")

    @strawberry.field(description="The items without cursors.")
    def nodes(self) -> list[NodeT]:
        return [edge.node for edge in self.edges]


def encode_cursor(key: Sequence[Any]) -> str:
    raw = json.dumps(list(key), default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, size: int) -> list[Any] | None:
    """The key inside a cursor, or a clear ``INVALID_CURSOR`` error."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, list) or len(value) != size:
        raise DomainError("this cursor is not valid here", code="INVALID_CURSOR", field="after")
    return value


def check_page_size(first: int, maximum: int) -> int:
    if first < 1 or first > maximum:
        raise DomainError(
            f"first must be between 1 and {maximum}", code="PAGE_SIZE_TOO_LARGE", field="first"
        )
    return first


def build_connection(
    rows: Sequence[RowT],
    first: int,
    key: Callable[[RowT], Sequence[Any]],
    to_node: Callable[[RowT], NodeT],
) -> Connection[NodeT]:
    """``rows`` was fetched with ``limit first + 1``: the extra row says a page follows."""
    page = rows[:first]
    edges = [Edge(cursor=encode_cursor(key(row)), node=to_node(row)) for row in page]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(rows) > first,
            end_cursor=edges[-1].cursor if edges else None,
        ),
    )

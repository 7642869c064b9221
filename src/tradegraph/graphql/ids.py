"""Relay global ids at the API edge: opaque outside, raw row ids inside."""

from __future__ import annotations

from strawberry import relay

from tradegraph.errors import DomainError


def decode_id(value: str, type_name: str, *, field: str = "id") -> str:
    """Accept a Relay global id of ``type_name`` (or a raw id) and return the raw id."""
    try:
        gid = relay.GlobalID.from_id(value)
    except Exception:
        return str(value)
    if gid.type_name != type_name:
        raise DomainError(f"expected a {type_name} id", code="INVALID_ID", field=field)
    return gid.node_id


def encode_id(type_name: str, raw_id: str) -> str:
    return str(relay.GlobalID(type_name, raw_id))

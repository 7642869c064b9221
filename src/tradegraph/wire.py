"""The JSON that the command bus and pub/sub put on the wire.

Both transports carry JSON objects: compact, ``NaN``/``Infinity`` refused (other
languages' parsers reject them), and the few non-JSON values our payloads hold turned
into their usual text: ``Decimal`` -> ``"1.50"``, ``datetime``/``date`` -> ISO-8601,
``UUID`` -> its string, ``Enum`` -> its value.

The encoder is built once: ``json.dumps`` with options constructs a new ``JSONEncoder``
on every call, which costs about as much again as encoding a small event, and the engine
encodes several events per order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID


def json_default(value: object) -> object:
    """The JSON form of the non-JSON values payloads may hold; TypeError otherwise."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=json_default, allow_nan=False)


def encode_object(value: Mapping[str, Any]) -> str:
    """A mapping as compact JSON text (TypeError for a non-mapping or a foreign value,
    ValueError for NaN or infinities)."""
    if type(value) is dict:  # the usual case, without the ABC check (~1 us each)
        return _ENCODER.encode(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, not {type(value).__name__}")
    return _ENCODER.encode(value if isinstance(value, dict) else dict(value))

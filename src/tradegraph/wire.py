"""The JSON that the command bus and pub/sub put on the wire.

Both transports carry JSON objects, compact, and the few non-JSON values our payloads
hold turned into their usual text: ``Decimal`` -> ``"1.50"``, ``datetime``/``date`` ->
ISO-8601, ``UUID`` -> its string, ``Enum`` -> its value.

Encoding and decoding use orjson: the engine encodes two to three events and a result
per order, and the stdlib encoder was a fifth of its CPU under bulk order entry (orjson
is ~10x faster on an order event). Two of orjson's rules differ from the stdlib's:

* ``NaN`` and infinities are written as ``null`` (JSON has no spelling for them; the
  stdlib would write ``NaN``, which other languages' parsers reject). Our payloads carry
  money as integers, so a float is rare and a non-finite one a bug upstream; the
  in-process bus's wire check refuses them (:mod:`tradegraph.bus`).
* Text is UTF-8, not ``\\uXXXX`` escapes.

Non-string keys become strings, as with the stdlib; integers beyond 64 bits, which
orjson refuses, go through the stdlib encoder, so nothing that used to encode stops
encoding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import orjson


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


# Built once: ``json.dumps`` with options constructs a new encoder on every call.
_BIG_INTS = json.JSONEncoder(
    separators=(",", ":"), default=json_default, allow_nan=False, ensure_ascii=False
)
_dumps = orjson.dumps
_NON_STR_KEYS = orjson.OPT_NON_STR_KEYS


def encode_object(value: Mapping[str, Any]) -> str:
    """A mapping as compact JSON text (TypeError for a non-mapping or a foreign value)."""
    if type(value) is not dict:  # the usual case skips the ABC check (~1 us each)
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping, not {type(value).__name__}")
        value = dict(value)
    try:
        return _dumps(value, default=json_default).decode()
    except TypeError as exc:
        if exc.__cause__ is not None:  # raised by json_default: a foreign value
            raise TypeError(str(exc.__cause__)) from None
    try:
        return _dumps(value, default=json_default, option=_NON_STR_KEYS).decode()
    except TypeError:
        return _BIG_INTS.encode(value)  # beyond 64 bits (NaN here is a ValueError)


def decode(text: str | bytes) -> Any:
    """Parse JSON text (``ValueError`` if it is not JSON).

    Integers up to 64 bits come back exact, as everything our payloads carry does
    (amounts are bounded by :data:`tradegraph.money.MAX_UNITS`).
    """
    return orjson.loads(text)

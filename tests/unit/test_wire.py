"""The JSON both message transports put on the wire."""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID

import pytest

from tradegraph.wire import decode, encode_object, json_default


class Colour(Enum):
    RED = "red"


def test_compact_text_with_the_usual_forms_of_non_json_values() -> None:
    value = {
        "d": Decimal("1.50"),
        "t": datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC),
        "day": date(2026, 11, 21),
        "u": UUID("12345678-1234-5678-1234-567812345678"),
        "e": Colour.RED,
        "nested": [{"x": 1, "y": None, "z": "é"}],
    }
    text = encode_object(value)
    assert text == json.dumps(
        value, separators=(",", ":"), default=json_default, ensure_ascii=False
    )
    assert json.loads(text) == {
        "d": "1.50",
        "t": "2026-11-21T10:00:00.123456+00:00",
        "day": "2026-11-21",
        "u": "12345678-1234-5678-1234-567812345678",
        "e": "red",
        "nested": [{"x": 1, "y": None, "z": "é"}],
    }
    assert encode_object(OrderedDict(a=1)) == '{"a":1}'  # any mapping


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinities_become_null(bad: float) -> None:
    """JSON has no spelling for them; ``NaN`` would break other languages' parsers."""
    assert encode_object({"x": [bad, 1.5]}) == '{"x":[null,1.5]}'


def test_what_orjson_refuses_but_json_carries_still_encodes() -> None:
    assert encode_object({1: "a", None: "b"}) == '{"1":"a","null":"b"}'
    big = {"n": 2**70, "m": [-(2**64)]}
    assert encode_object(big) == json.dumps(big, separators=(",", ":"))
    assert type(decode(encode_object(big))["n"]) is float  # beyond 64 bits: not exact


def test_decode_parses_json_and_refuses_the_rest() -> None:
    assert decode('{"a":[1,2.5,null,true,"\u00e9"]}') == {"a": [1, 2.5, None, True, "é"]}
    assert decode(b'{"n":9223372036854775807}') == {"n": 2**63 - 1}
    for bad in ("{", "NaN", '{"a":NaN}', b"\xff", ""):
        with pytest.raises(ValueError):
            decode(bad)


def test_foreign_values_and_non_mappings_are_refused() -> None:
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        encode_object({"x": object()})
    with pytest.raises(TypeError, match="expected a mapping"):
        encode_object([1, 2])  # type: ignore[arg-type]

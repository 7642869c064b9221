"""The JSON both message transports put on the wire."""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from uuid import UUID

import pytest

from tradegraph.wire import encode_object, json_default


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
    assert text == json.dumps(value, separators=(",", ":"), default=json_default)
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
def test_nan_and_infinities_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        encode_object({"x": [bad]})


def test_foreign_values_and_non_mappings_are_refused() -> None:
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        encode_object({"x": object()})
    with pytest.raises(TypeError, match="expected a mapping"):
        encode_object([1, 2])  # type: ignore[arg-type]

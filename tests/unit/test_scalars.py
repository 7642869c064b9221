from decimal import Decimal

import pytest
from graphql import GraphQLError

from tradegraph.graphql.scalars import parse_decimal, serialize_decimal


def test_decimal_is_fixed_point_text():
    assert serialize_decimal(Decimal("5E-8")) == "0.00000005"
    assert serialize_decimal(Decimal("1.2300")) == "1.2300"
    assert serialize_decimal(Decimal("1E+3")) == "1000"


@pytest.mark.parametrize("bad", [1.5, True, None, "abc", "NaN", "Infinity", [1]])
def test_decimal_input_rejects_floats_and_garbage(bad):
    with pytest.raises(GraphQLError):  # a client error, not an unexpected exception
        parse_decimal(bad)


def test_decimal_input_accepts_strings_and_ints():
    assert parse_decimal(" 0.10 ") == Decimal("0.10")
    assert parse_decimal(7) == Decimal(7)

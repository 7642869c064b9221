"""Scalars with TradeGraph's wire formats.

``Decimal`` is always fixed-point text ("0.00000005", never "5E-8"): clients parse money
as strings, and scientific notation breaks naive parsers and UI formatting alike.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import strawberry
from graphql import GraphQLError
from strawberry.types.scalar import ScalarDefinition


def serialize_decimal(value: Decimal) -> str:
    return format(value, "f")


def parse_decimal(value: object) -> Decimal:
    """Strings and integers only: a float has already lost the exact value typed.

    Raises ``GraphQLError`` (not ``ValueError``) so graphql-core reports the client's
    mistake as such, with the variable's path, instead of an unexpected server error.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise GraphQLError('Decimal values are sent as strings, e.g. "0.01".')
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise GraphQLError(f"Not a decimal number: {str(value)[:40]!r}.") from None
    if not result.is_finite():
        raise GraphQLError("Decimal values must be finite.")
    return result


DecimalScalar = strawberry.scalar(
    name="Decimal",
    description='An exact decimal number, as a fixed-point string (e.g. "0.00010000").',
    serialize=serialize_decimal,
    parse_value=parse_decimal,
)

SCALAR_MAP: dict[object, ScalarDefinition] = {Decimal: DecimalScalar}

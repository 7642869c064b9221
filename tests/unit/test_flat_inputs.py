"""Flat input builders give exactly what Strawberry's own conversion gives."""

from __future__ import annotations

from dataclasses import MISSING

import pytest
from strawberry.types.arguments import convert_argument, convert_arguments
from strawberry.types.base import StrawberryOptional

from tradegraph.config import Settings
from tradegraph.graphql.exchange import PlaceOrderInput
from tradegraph.graphql.inputs import compile_argument_conversion
from tradegraph.graphql.schema import build_schema

SCHEMA = build_schema(Settings())
CONVERTER = SCHEMA.schema_converter
INPUTS = [
    concrete.definition.origin
    for concrete in CONVERTER.type_map.values()
    if getattr(concrete.definition, "is_input", False)
]
FLAT = [cls for cls in INPUTS if cls.__strawberry_definition__.from_input is not None]


def strawberry_conversion(cls: type, value: dict[str, object]) -> object:
    definition = cls.__strawberry_definition__
    builder, definition.from_input = definition.from_input, None
    try:
        return convert_argument(value, cls, CONVERTER.scalar_registry, SCHEMA.config)
    finally:
        definition.from_input = builder


def fast_conversion(cls: type, value: dict[str, object]) -> object:
    return convert_argument(value, cls, CONVERTER.scalar_registry, SCHEMA.config)


def test_the_hot_inputs_are_flat_and_lists_are_not() -> None:
    assert PlaceOrderInput in FLAT
    names = {cls.__name__ for cls in INPUTS if cls not in FLAT}
    assert names == {"CreateApiTokenInput"}  # its scopes are a list: Strawberry converts it


@pytest.mark.parametrize("cls", FLAT, ids=lambda cls: cls.__name__)
def test_builder_matches_strawberry_with_all_and_with_only_required_fields(cls: type) -> None:
    definition = cls.__strawberry_definition__
    name_of = SCHEMA.config.name_converter.from_field
    every = {name_of(field): object() for field in definition.fields}
    required = {
        name_of(field): object()
        for field in definition.fields
        if not isinstance(field.resolve_type(type_definition=definition), StrawberryOptional)
        and field.default_value is MISSING
        and field.default_factory is MISSING
    }
    explicit_nulls = {
        **required,
        **{
            name_of(field): None
            for field in definition.fields
            if isinstance(field.resolve_type(type_definition=definition), StrawberryOptional)
        },
    }
    for value in (every, required, explicit_nulls):
        expected = strawberry_conversion(cls, value)
        got = fast_conversion(cls, value)
        assert type(got) is cls
        assert vars(got) == vars(expected)


def field_arguments(root: str, name: str) -> list:
    gql_type = getattr(SCHEMA._schema, f"{root}_type")
    return gql_type.fields[name].extensions["strawberry-definition"].arguments


def strawberry_arguments(arguments: list, raw: dict[str, object]) -> dict[str, object]:
    return convert_arguments(raw, arguments, CONVERTER.scalar_registry, SCHEMA.config)


ORDER = {"accountId": "QWNjb3VudDox", "symbol": "BTC-USD", "side": "BUY", "type": "LIMIT"}


@pytest.mark.parametrize(
    ("root", "name", "raw"),
    [
        ("mutation", "placeOrders", {"inputs": [ORDER, {**ORDER, "clientOrderId": "a-1"}]}),
        ("mutation", "placeOrder", {"input": {**ORDER, "price": None}}),
        ("mutation", "cancelOrder", {"input": {"id": "T3JkZXI6MQ=="}}),
        ("query", "orders", {"first": 5, "status": ["NEW", "FILLED"], "symbol": None}),
        ("query", "orders", {}),
        ("query", "node", {"id": "T3JkZXI6MQ=="}),
    ],
)
def test_compiled_argument_conversion_matches_strawberry(
    root: str, name: str, raw: dict[str, object]
) -> None:
    arguments = field_arguments(root, name)
    convert = compile_argument_conversion(arguments, CONVERTER.scalar_registry, SCHEMA.config)
    got, expected = convert(raw), strawberry_arguments(arguments, raw)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        items = value if isinstance(value, list) else [value]
        got_items = got[key] if isinstance(got[key], list) else [got[key]]
        assert [type(v) for v in got_items] == [type(v) for v in items]
        assert [vars(v) if hasattr(v, "__dict__") else v for v in got_items] == [
            vars(v) if hasattr(v, "__dict__") else v for v in items
        ]
        if isinstance(value, list):
            assert got[key] is not raw.get(key)  # lists are copies, as Strawberry's


def test_compiled_argument_conversion_fails_like_strawberry_on_a_bad_global_id() -> None:
    arguments = field_arguments("query", "node")
    convert = compile_argument_conversion(arguments, CONVERTER.scalar_registry, SCHEMA.config)
    with pytest.raises(Exception) as strawberry_error:
        strawberry_arguments(arguments, {"id": "not-base64"})
    with pytest.raises(type(strawberry_error.value)):
        convert({"id": "not-base64"})

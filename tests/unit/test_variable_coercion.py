"""Compiled variable coercion agrees with graphql-core, or steps aside.

The property: for any variables a client may send, the compiled coercion either returns
exactly graphql-core's coerced values, or returns None (and graphql-core decides). For
valid input it must not step aside, or it would be useless.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from graphql import build_schema, parse
from graphql.execution.values import get_variable_values
from hypothesis import given, settings
from hypothesis import strategies as st

from tradegraph.config import Settings
from tradegraph.graphql.coercion import compile_variable_coercion
from tradegraph.graphql.schema import build_schema as build_tradegraph_schema

SDL = """
enum Side { BUY SELL }
input Leg { side: Side!, qty: Int!, note: String = "none", tags: [String!] }
input Ticket {
  name: String!
  legs: [Leg!]!
  limit: Float
  nested: Ticket
  flags: [[Boolean]]
}
input Either @oneOf { a: Int, b: String }
type Query {
  ticket(t: Ticket, many: [Ticket!], count: Int, either: Either): String
}
"""
SCHEMA = build_schema(SDL)
OPERATION = parse(
    "query($t: Ticket, $many: [Ticket!], $count: Int!)"
    " { ticket(t: $t, many: $many, count: $count) }"
).definitions[0]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["BUY", "SELL", "buy", "x", ""]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "legs", "limit", "nested", "flags", "side", "qty", "x"]),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=12,
)

leg = st.fixed_dictionaries(
    {"side": st.sampled_from(["BUY", "SELL"]), "qty": st.integers(-1000, 1000)},
    optional={
        "note": st.one_of(st.none(), st.text(max_size=5)),
        "tags": st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=3))),
    },
)
ticket = st.recursive(
    st.fixed_dictionaries(
        {"name": st.text(max_size=5), "legs": st.one_of(leg, st.lists(leg, max_size=3))},
        optional={
            "limit": st.one_of(st.none(), st.integers(-5, 5), st.floats(-1e6, 1e6)),
            "flags": st.one_of(
                st.none(), st.booleans(), st.lists(st.one_of(st.none(), st.booleans()))
            ),
        },
    ),
    lambda inner: st.fixed_dictionaries(
        {"name": st.text(max_size=5), "legs": st.lists(leg, max_size=2), "nested": inner}
    ),
    max_leaves=3,
)


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid value with one change: an unknown key, a key dropped, or a value replaced."""
    value = dict(draw(valid))
    how = draw(st.sampled_from(["add", "drop", "replace"]))
    if how == "add":
        value[draw(st.sampled_from(["x", "Name", "side"]))] = draw(json_value)
    elif how == "drop" and value:
        del value[draw(st.sampled_from(sorted(value)))]
    elif value:
        value[draw(st.sampled_from(sorted(value)))] = draw(json_value)
    return value


def with_unknown_leg_field(t: dict[str, Any]) -> dict[str, Any]:
    legs = t["legs"]
    return {**t, "legs": [{**x, "x": 1} for x in (legs if isinstance(legs, list) else [legs])]}


near_ticket = st.one_of(corrupted(ticket), ticket.map(with_unknown_leg_field))


def slow(variables: dict[str, Any]) -> Any:
    return get_variable_values(SCHEMA, OPERATION.variable_definitions, variables)


FAST = compile_variable_coercion(SCHEMA, OPERATION.variable_definitions)


def test_the_operation_compiles() -> None:
    assert FAST is not None


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "count": st.one_of(st.integers(-5, 5), st.integers(-5, 5), json_value),
            "t": st.one_of(json_value, ticket, near_ticket),
            "many": st.one_of(json_value, near_ticket, st.lists(near_ticket, max_size=2)),
            "other": json_value,
        },
    )
)
def test_any_input_is_coerced_like_graphql_core_or_left_to_it(variables: dict[str, Any]) -> None:
    assert FAST is not None
    fast, reference = FAST(variables), slow(variables)
    if fast is not None:
        assert not isinstance(reference, list), (variables, reference)
        assert fast.coerced == reference.coerced
        assert {k: s.value for k, s in fast.sources.items()} == {
            k: s.value for k, s in reference.sources.items()
        }


@settings(max_examples=300, deadline=None)
@given(
    t=st.one_of(st.none(), ticket),
    many=st.one_of(st.none(), ticket, st.lists(ticket, max_size=3)),
    count=st.integers(-100, 100),
)
def test_valid_input_takes_the_fast_path(t: Any, many: Any, count: int) -> None:
    assert FAST is not None
    variables = {"t": t, "many": many, "count": count}
    reference = slow(variables)
    assert not isinstance(reference, list), reference
    fast = FAST(variables)
    assert fast is not None
    assert fast.coerced == reference.coerced  # defaults ("note") filled in the same way


def test_missing_required_and_defaulted_variables_are_left_to_graphql_core() -> None:
    assert FAST is not None
    assert FAST({}) is None  # $count is required: graphql-core writes the error
    defaulted = parse("query($count: Int = 3) { ticket(count: $count) }").definitions[0]
    assert compile_variable_coercion(SCHEMA, defaulted.variable_definitions) is None
    one_of = parse("query($e: Either) { ticket(either: $e) }").definitions[0]
    assert compile_variable_coercion(SCHEMA, one_of.variable_definitions) is None


def test_place_orders_variables_of_the_real_schema() -> None:
    schema = build_tradegraph_schema(Settings())._schema
    op = parse(
        "mutation($i: [PlaceOrderInput!]!)"
        " { placeOrders(inputs: $i) { results { errors { code } } } }"
    ).definitions[0]
    fast = compile_variable_coercion(schema, op.variable_definitions)
    assert fast is not None
    order = {"accountId": "QWNjb3VudDox", "symbol": "BTC-USD", "side": "BUY", "type": "LIMIT"}
    good = {"i": [{**order, "quantity": "0.01", "price": "50000.5"}]}
    coerced = fast(good)
    assert coerced is not None
    assert coerced.coerced == get_variable_values(schema, op.variable_definitions, good).coerced
    assert coerced.coerced["i"][0]["price"] == Decimal("50000.5")
    # Enum names come from a table made once: the same Python members graphql-core gives.
    side = coerced.coerced["i"][0]["side"]
    slow_values = get_variable_values(schema, op.variable_definitions, good)
    assert side is slow_values.coerced["i"][0]["side"]
    assert type(side).__name__ == "Side"
    for bad in (
        {"i": [{**order, "side": 1}]},  # names only, as strings
        {"i": [{**order, "side": ["BUY"]}]},
        {"i": [{**order, "side": "buy"}]},
    ):
        assert fast(bad) is None
    for bad in (
        {"i": [{**order, "quantity": "lots"}]},  # the Decimal scalar refuses it
        {"i": [{**order, "side": "SIDEWAYS"}]},
        {"i": [{**order, "unknown": 1}]},
        {"i": [{"symbol": "BTC-USD"}]},
        {"i": None},
    ):
        assert fast(bad) is None
        assert isinstance(get_variable_values(schema, op.variable_definitions, bad), list)

"""Per-order cost of turning ``placeOrders`` variables into resolver arguments.

For the document ``mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) ... }``
with ``--orders`` limit orders, this times the two steps a compiled document runs before
its resolver, each against the generic function it replaces:

* variable coercion: graphql-core's ``get_variable_values`` vs
  ``graphql.coercion.compile_variable_coercion``;
* argument conversion: Strawberry's ``convert_arguments`` vs
  ``graphql.inputs.compile_argument_conversion``.

Both pairs are checked to give equal results first. Best of ``--repeat`` timings of
``--number`` calls. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from collections.abc import Callable
from typing import Any

from graphql import OperationDefinitionNode, parse
from graphql.execution.values import get_argument_values, get_variable_values
from strawberry.types.arguments import convert_arguments

from tradegraph.config import Settings
from tradegraph.graphql.coercion import compile_variable_coercion
from tradegraph.graphql.inputs import compile_argument_conversion
from tradegraph.graphql.schema import build_schema

DOCUMENT = (
    "mutation($i: [PlaceOrderInput!]!) { placeOrders(inputs: $i) { results { errors { code } } } }"
)


def per_order_us(call: Callable[[], Any], orders: int, number: int, repeat: int) -> float:
    best = min(timeit.repeat(call, number=number, repeat=repeat))
    return round(best / number / orders * 1e6, 2)


def main(args: argparse.Namespace) -> dict[str, Any]:
    schema = build_schema(Settings())
    gql = schema._schema
    operation = parse(DOCUMENT).definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    node = operation.selection_set.selections[0]
    definitions = operation.variable_definitions
    orders = [
        {
            "accountId": "QWNjb3VudDox",
            "symbol": "BTC-USD",
            "side": "BUY" if n % 2 else "SELL",
            "type": "LIMIT",
            "quantity": "0.01",
            "price": f"{50000 - n}.00",
        }
        for n in range(args.orders)
    ]
    variables = {"i": orders}

    coerce = compile_variable_coercion(gql, definitions)
    assert coerce is not None
    reference = get_variable_values(gql, definitions, variables)
    coerced = coerce(variables)
    assert not isinstance(reference, list) and coerced is not None
    assert coerced.coerced == reference.coerced

    gql_field = gql.mutation_type.fields["placeOrders"]  # type: ignore[union-attr]
    field = gql_field.extensions["strawberry-definition"]
    registry = schema.schema_converter.scalar_registry
    raw = get_argument_values(gql_field, node, coerced)  # type: ignore[arg-type]
    convert = compile_argument_conversion(field.arguments, registry, schema.config)
    expected = convert_arguments(raw, field.arguments, registry, schema.config)
    assert [vars(o) for o in convert(raw)["inputs"]] == [vars(o) for o in expected["inputs"]]

    n, number, repeat = args.orders, args.number, args.repeat
    return {
        "bench": "order_inputs",
        "orders_per_call": n,
        "coerce_graphql_core_us_per_order": per_order_us(
            lambda: get_variable_values(gql, definitions, variables), n, number, repeat
        ),
        "coerce_compiled_us_per_order": per_order_us(lambda: coerce(variables), n, number, repeat),
        "convert_strawberry_us_per_order": per_order_us(
            lambda: convert_arguments(raw, field.arguments, registry, schema.config),
            n,
            number,
            repeat,
        ),
        "convert_compiled_us_per_order": per_order_us(lambda: convert(raw), n, number, repeat),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    print(json.dumps(main(parser.parse_args())))

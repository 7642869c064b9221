"""Compiled variable coercion for documents that are run many times.

graphql-core coerces variables by walking the *type* for every value of every request:
``is_non_null_type``/``is_list_type`` checks, the signature rebuilt from the AST, and a
first walk over the whole input only to guard against deep nesting. For a
``placeOrders`` call that is about 8 µs per order (``bench/bench_order_inputs.py``).

For a compiled document (see :mod:`tradegraph.graphql.compiled`) the types are fixed,
so that walk is decided once: :func:`compile_variable_coercion` turns the operation's
variable definitions into nested closures that only look at the *values*. They do what
``graphql.utilities.coerce_input_value`` does, step for step, and report failure the
same way (``Undefined``). The fast path never explains a failure: on any invalid input,
a missing variable with a default, or a type it does not handle (``@oneOf`` inputs), it
returns ``None`` and the caller runs graphql-core's own ``get_variable_values``, whose
result and errors are then the regular ones.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLSchema,
    Undefined,
    VariableDefinitionNode,
    is_leaf_type,
)
from graphql.execution.values import (
    VariableValues,
    VariableValueSource,
    get_variable_signature,
)
from graphql.pyutils import is_iterable
from graphql.utilities.coerce_input_value import coerce_default_value

# value -> coerced value, or ``Undefined`` when it is not valid for the type.
Coerce = Callable[[Any], Any]
CompiledCoercion = Callable[[Mapping[str, Any]], VariableValues | None]


def compile_variable_coercion(
    schema: GraphQLSchema, var_def_nodes: Collection[VariableDefinitionNode]
) -> CompiledCoercion | None:
    """A fast coercion for these variable definitions, or None if one is unsupported."""
    plan: list[tuple[str, Any, Coerce, bool]] = []
    for node in var_def_nodes:
        signature = get_variable_signature(schema, node)
        if isinstance(signature, GraphQLError) or signature.default is not None:
            return None  # invalid or defaulted variables: graphql-core's path
        coerce = _compile(signature.type, {})
        if coerce is None:
            return None
        plan.append((signature.name, signature, coerce, isinstance(signature.type, GraphQLNonNull)))
    steps = tuple(plan)

    def coerce_variables(inputs: Mapping[str, Any]) -> VariableValues | None:
        sources: dict[str, VariableValueSource] = {}
        coerced: dict[str, Any] = {}
        try:
            for name, signature, coerce, required in steps:
                value = inputs.get(name, Undefined)
                if value is Undefined:
                    if required:
                        return None
                    sources[name] = VariableValueSource(signature)
                    continue  # a nullable variable not provided is omitted
                sources[name] = VariableValueSource(signature, value)
                result = coerce(value)
                if result is Undefined:
                    return None
                coerced[name] = result
        except RecursionError:
            return None
        return VariableValues(sources, coerced)

    return coerce_variables


def _compile(type_: Any, objects: dict[str, Coerce]) -> Coerce | None:
    """``objects``: input object coercions already made (input types may refer to
    themselves; a failure anywhere makes the whole compile return None)."""
    if isinstance(type_, GraphQLNonNull):
        inner = _compile(type_.of_type, objects)
        if inner is None:
            return None

        def non_null(value: Any) -> Any:
            if value is None or value is Undefined:
                return Undefined
            return inner(value)

        return non_null
    if isinstance(type_, GraphQLList):
        item = _compile(type_.of_type, objects)
        if item is None:
            return None
        return _list_coercion(item)
    if isinstance(type_, GraphQLInputObjectType):
        if type_.is_one_of:
            return None
        return objects.get(type_.name) or _object_coercion(type_, objects)
    if isinstance(type_, GraphQLEnumType):
        return _enum_coercion(type_)
    if is_leaf_type(type_):
        return _leaf_coercion(type_.coerce_input_value)
    return None


def _list_coercion(item: Coerce) -> Coerce:
    def coerce_list(value: Any) -> Any:
        if value is None or value is Undefined:
            return None
        if not is_iterable(value):
            one = item(value)  # a non-list value is a list of one
            return Undefined if one is Undefined else [one]
        out = []
        for v in value:
            c = item(v)
            if c is Undefined:
                return Undefined
            out.append(c)
        return out

    return coerce_list


def _object_coercion(type_: GraphQLInputObjectType, objects: dict[str, Coerce]) -> Coerce | None:
    # (name, out_name, coerce, required, default, field); default is the coerced default
    # when it is an immutable leaf (decided once), _PER_CALL when it must be made anew.
    fields: list[tuple[str, str, Coerce, bool, Any, Any]] = []
    names = frozenset(type_.fields)
    out_type = type_.out_type

    def coerce_object(value: Any) -> Any:
        if value is None or value is Undefined:
            return None
        if not isinstance(value, dict):
            return Undefined
        if not names.issuperset(value):
            for key, v in value.items():
                if key not in names and v is not Undefined:
                    return Undefined  # an unknown field
        out: dict[str, Any] = {}
        get = value.get
        for name, out_name, coerce, required, default, field in fields:
            v = get(name, Undefined)
            if v is Undefined:
                if required:
                    return Undefined
                if default is _PER_CALL:
                    default = coerce_default_value(field)
                if default is not Undefined:
                    out[out_name] = default
                continue
            c = coerce(v)
            if c is Undefined:
                return Undefined
            out[out_name] = c
        return out_type(out)

    objects[type_.name] = coerce_object  # before its fields: they may refer back to it
    for name, field in type_.fields.items():
        coerce = _compile(field.type, objects)
        if coerce is None:
            return None
        required = isinstance(field.type, GraphQLNonNull) and field.default_value is Undefined
        default = coerce_default_value(field)
        if not (default is Undefined or default is None or isinstance(default, _IMMUTABLE)):
            default = _PER_CALL  # a list or an object: each request gets its own
        fields.append((name, field.out_name or name, coerce, required, default, field))
    return coerce_object


_PER_CALL = object()
_IMMUTABLE = (str, int, float, Decimal, Enum)  # bool is an int


def _enum_coercion(type_: GraphQLEnumType) -> Coerce:
    """An enum's names looked up in a table made once: ``coerce_input_value`` per name
    (for a Strawberry enum, a name lookup and then the Python enum's constructor) was a
    sixth of a ``placeOrders`` input's coercion. Used only when every value is immutable,
    so one object can go to every request; anything else keeps the per-call parse."""
    table: dict[str, Any] = {}
    for name in type_.values:
        try:
            value = type_.coerce_input_value(name)
        except Exception:
            return _leaf_coercion(type_.coerce_input_value)
        if value is not None and not isinstance(value, _IMMUTABLE):
            return _leaf_coercion(type_.coerce_input_value)
        table[name] = value

    def coerce_enum(value: Any) -> Any:
        if value is None or value is Undefined:
            return None
        if type(value) is not str:  # graphql-core accepts names only, as strings
            return Undefined
        return table.get(value, Undefined)

    return coerce_enum


def _leaf_coercion(parse: Callable[[Any], Any]) -> Coerce:
    def coerce_leaf(value: Any) -> Any:
        if value is None or value is Undefined:
            return None
        try:
            return parse(value)
        except Exception:
            return Undefined  # as graphql-core: the slow path explains it

    return coerce_leaf

"""Cheaper construction of flat input objects.

Strawberry converts an input object field by field through its generic
``convert_argument``, which re-inspects every field's type on every call (generic,
optional, list, enum, scalar registry...): about 8% of the CPU of a ``placeOrder``. For an
input whose fields are all scalars or enums (what graphql-core has already coerced and
validated) that work has one possible outcome, so it is decided once per type here and
each value is built with a single constructor call.

This uses Strawberry's ``from_input`` hook (``StrawberryObjectDefinition.from_input``,
the same one its pydantic integration uses). Types with nested inputs, lists, global ids
or ``Maybe`` keep Strawberry's conversion.

:func:`compile_argument_conversion` goes one step further for compiled documents: the
arguments of a field are converted by closures decided once, so a list of 100 flat
inputs is 100 builder calls instead of 100 trips through ``convert_argument``'s type
checks. Any argument type it does not know is converted by Strawberry itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING
from typing import Any

from strawberry.relay import GlobalID
from strawberry.scalars import is_scalar
from strawberry.types.arguments import InputContext, StrawberryArgument, convert_argument
from strawberry.types.base import (
    StrawberryList,
    StrawberryMaybe,
    StrawberryObjectDefinition,
    StrawberryOptional,
)
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

FromInput = Callable[[type, Mapping[str, Any], InputContext], Any]

# The builders made here (and only these) may be called without an ``InputContext``.
_FLAT_BUILDERS: set[Callable[..., Any]] = set()


def install_flat_input_builders(
    types: Iterable[type], scalar_registry: Mapping[object, Any], name_of: Callable[[Any], str]
) -> list[type]:
    """Give every flat input type in ``types`` a one-call builder; returns those changed.

    ``scalar_registry`` is the schema's (Python type -> scalar); ``name_of`` gives a
    field's GraphQL name (the schema's name converter).
    """
    changed = []
    for cls in types:
        definition = getattr(cls, "__strawberry_definition__", None)
        if not isinstance(definition, StrawberryObjectDefinition) or not definition.is_input:
            continue
        if definition.from_input is not None or definition.is_graphql_generic:
            continue
        names: list[tuple[str, str]] = []
        for field in definition.fields:
            field_type = field.resolve_type(type_definition=definition)
            if not _is_plain_leaf(field_type, scalar_registry):
                break
            names.append((name_of(field), field.python_name))
        else:
            implicit_none = {
                field.python_name: None
                for field in definition.fields
                if field.default_value is MISSING and field.default_factory is MISSING
            }
            definition.from_input = _builder(tuple(names), implicit_none)
            changed.append(cls)
    return changed


def _is_plain_leaf(type_: object, scalar_registry: Mapping[object, Any]) -> bool:
    """A scalar or enum (optionally nullable) that Strawberry passes through unchanged."""
    if isinstance(type_, StrawberryMaybe):
        return False
    if isinstance(type_, StrawberryOptional):
        type_ = type_.of_type
    if type_ is GlobalID:
        return False  # Strawberry decodes these
    return (
        is_scalar(type_, scalar_registry)
        or isinstance(type_, StrawberryEnumDefinition)
        or has_enum_definition(type_)
    )


def _builder(names: tuple[tuple[str, str], ...], implicit_none: dict[str, None]) -> FromInput:
    def from_input(cls: type, value: Mapping[str, Any], _: InputContext | None) -> Any:
        # Like Strawberry: a field without a default that the client omitted is None
        # (graphql-core has already refused omitted required fields).
        kwargs: dict[str, Any] = dict(implicit_none)
        for graphql_name, python_name in names:
            if graphql_name in value:
                kwargs[python_name] = value[graphql_name]
        return cls(**kwargs)

    _FLAT_BUILDERS.add(from_input)  # it ignores its context: called without one below
    return from_input


Convert = Callable[[Any], Any]


def compile_argument_conversion(
    arguments: Iterable[StrawberryArgument],
    scalar_registry: Mapping[object, Any],
    config: Any,
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """``convert_arguments`` for one field, decided once (``info`` is not passed on)."""
    plan: list[tuple[str, str, Convert]] = []
    for argument in arguments:
        assert argument.python_name
        name = config.name_converter.from_argument(argument)
        convert = _converter(argument.type, scalar_registry)
        if convert is None:
            convert = _strawberry_converter(argument.type, scalar_registry, config, name)
        plan.append((name, argument.python_name, convert))
    steps = tuple(plan)

    def convert_arguments(raw: Mapping[str, Any]) -> dict[str, Any]:
        return {python: convert(raw[name]) for name, python, convert in steps if name in raw}

    return convert_arguments


def _converter(type_: object, scalar_registry: Mapping[object, Any]) -> Convert | None:
    """What Strawberry's ``convert_argument`` does for this type, or None if not known."""
    if isinstance(type_, StrawberryMaybe):
        return None
    if isinstance(type_, StrawberryOptional):
        inner = _converter(type_.of_type, scalar_registry)
        if inner is None:
            return None
        return lambda value: None if value is None else inner(value)
    if isinstance(type_, StrawberryList):
        item = _converter(type_.of_type, scalar_registry)
        if item is None:
            return None
        if item is _same:  # leaf items: Strawberry copies the list
            return lambda value: None if value is None else list(value)
        return lambda value: None if value is None else [item(v) for v in value]
    if _is_plain_leaf(type_, scalar_registry):
        return _same
    definition = getattr(type_, "__strawberry_definition__", None)
    if (
        isinstance(definition, StrawberryObjectDefinition)
        and definition.from_input in _FLAT_BUILDERS
    ):
        build: Callable[..., Any] = definition.from_input
        cls = type_
        return lambda value: None if value is None else build(cls, value, None)
    return None


def _same(value: Any) -> Any:
    return value


def _strawberry_converter(
    type_: Any, scalar_registry: Mapping[object, Any], config: Any, name: str
) -> Convert:
    def convert(value: Any) -> Any:
        return convert_argument(value, type_, scalar_registry, config, None, path=(name,))

    return convert

"""Compiled trading mutations: the order-entry hot path without the generic pipeline.

A trading client sends the same ``placeOrder`` document thousands of times with new
variables. Through Strawberry each one pays for the whole generic pipeline: nine
extension hooks entered and left per phase, an execution context, graphql-core's executor
and per-field completion. Measured with ``bench/bench_http_orders.py`` that machinery was
most of the CPU of a request, more than the order itself.

So, like graphql-jit and persisted-query servers, a document is compiled once and then
executed directly:

* **Learning.** :class:`LearnCompiledOperations` runs at the execute step of the regular
  pipeline, i.e. only after the document was parsed, validated and passed the token,
  depth, alias and cost limits. If its operation is exactly one root mutation field of
  :data:`COMPILABLE_FIELDS`, with a selection of plain data fields, it is compiled and
  cached under its query text and operation name. Those checks depend on the document
  only, so they hold for every later request with the same text.
* **Executing.** ``TradeGraphSchema.execute`` looks the text up first. A compiled
  operation does per request what the extensions would (token check and websocket
  re-authentication, rate limits, a DataLoader scope, metrics), coerces the variables
  (compiled, see :mod:`tradegraph.graphql.coercion`; graphql-core's own function on any
  doubt) and the arguments with graphql-core's own functions, builds the inputs with the
  flat builders of :mod:`tradegraph.graphql.inputs` (Strawberry's conversion for
  others), calls the field's own resolver, and renders the payload by reading the
  selected attributes (or calling a field's plain ``def f(self)`` resolver) and
  serializing leaves with the schema's own scalar and enum types.
* **Falling back.** Anything unusual *before* the resolver runs (a bad token, invalid
  variables, a refused rate limit) returns ``None`` and the regular pipeline handles the
  request from scratch, so its errors are the regular ones. After the resolver has run
  there is no fallback (it would run twice): an unexpected exception becomes the same
  masked error at the field's path the regular path would give.

``tests/integration/test_compiled_operations.py`` checks that responses are identical to
the regular pipeline's for many selections, errors included.
"""

from __future__ import annotations

import contextvars
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
)
from graphql.execution.values import (
    VariableValues,
    get_argument_values,
    get_variable_values,
)
from strawberry import relay
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.field import StrawberryField

from tradegraph.errors import DomainError
from tradegraph.graphql.coercion import CompiledCoercion, compile_variable_coercion
from tradegraph.graphql.documents import sole_root_field
from tradegraph.graphql.extensions import (
    authenticate_operation,
    check_rate_limits,
    end_loader_scope,
    new_loader_scope,
    record_operation,
)
from tradegraph.graphql.inputs import compile_argument_conversion

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import strawberry

# Root mutation fields whose resolvers use nothing of ``info`` but ``info.context``
# (checked by the tests); the compiled path hands them exactly that.
COMPILABLE_FIELDS = frozenset({"placeOrder", "placeOrders", "cancelOrder"})
_BACKREF = "strawberry-definition"


class _ContextOnlyInfo:
    """What a compiled resolver receives as ``info``: only the context."""

    __slots__ = ("context",)

    def __init__(self, context: Any) -> None:
        self.context = context


class _RenderError(Exception):
    """The resolver's value does not fit the schema (a null in a non-null field...)."""


# A compiled output type: value -> JSON-ready value.
_Render = Callable[[Any], Any]


def _compile_type(gql_type: Any, selection: SelectionSetNode | None) -> _Render | None:
    if isinstance(gql_type, GraphQLNonNull):
        inner = _compile_type(gql_type.of_type, selection)
        if inner is None:
            return None

        def non_null(value: Any) -> Any:
            if value is None:
                raise _RenderError("null in a non-null field")
            return inner(value)

        return non_null
    if isinstance(gql_type, GraphQLList):
        item = _compile_type(gql_type.of_type, selection)
        if item is None:
            return None
        return lambda value: None if value is None else [item(v) for v in value]
    if isinstance(gql_type, GraphQLScalarType | GraphQLEnumType):
        if selection is not None:
            return None
        serialize = gql_type.serialize

        def leaf(value: Any) -> Any:
            if value is None:
                return None
            out = serialize(value)
            if out is None:
                raise _RenderError(f"{gql_type.name} cannot represent {value!r}")
            return out

        return leaf
    if isinstance(gql_type, GraphQLObjectType) and selection is not None:
        return _compile_object(gql_type, selection)
    return None  # interfaces, unions, objects without a selection


def _compile_object(gql_type: GraphQLObjectType, selection: SelectionSetNode) -> _Render | None:
    fields: list[tuple[str, Callable[[Any], Any], _Render]] = []
    keys: set[str] = set()
    for node in selection.selections:
        if not isinstance(node, FieldNode) or node.directives or node.arguments:
            return None  # fragments, @skip/@include, arguments: the regular path
        key = (node.alias or node.name).value
        if key in keys:
            return None  # merged fields: the regular path
        keys.add(key)
        name = node.name.value
        if name == "__typename":
            fields.append((key, _constant(gql_type.name), _identity))
            continue
        gql_field = gql_type.fields.get(name)
        if gql_field is None:
            return None
        getter = _attribute_getter(gql_type, name, gql_field)
        render = _compile_type(gql_field.type, node.selection_set)
        if getter is None or render is None:
            return None
        fields.append((key, getter, render))

    def render_object(value: Any) -> Any:
        if value is None:
            return None
        return {key: render(get(value)) for key, get, render in fields}

    return render_object


def _constant(value: str) -> Callable[[Any], str]:
    return lambda _obj: value


def _identity(value: Any) -> Any:
    return value


def _attribute_getter(
    parent: GraphQLObjectType, name: str, gql_field: GraphQLField
) -> Callable[[Any], Any] | None:
    field = (gql_field.extensions or {}).get(_BACKREF)
    if not isinstance(field, StrawberryField) or field.extensions or field.permission_classes:
        return None
    resolver = field.base_resolver
    if resolver is None:
        attr = field.python_name
        return lambda obj: getattr(obj, attr)
    if name == "id" and field.origin is relay.Node:  # relay's own id, not an override
        return _relay_id_getter(parent)
    if (
        resolver.self_parameter is not None
        and not resolver.arguments
        and resolver.info_parameter is None
        and resolver.root_parameter is None
        and resolver.parent_parameter is None
        and not resolver.is_async
        and len(resolver.signature.parameters) == 1
        and not isinstance(resolver.wrapped_func, staticmethod | classmethod)
    ):
        method: Callable[[Any], Any] = resolver.wrapped_func
        return method  # a plain method of the object (computed on read)
    return None  # a resolver that needs more: the regular path


def _relay_id_getter(parent: GraphQLObjectType) -> Callable[[Any], Any] | None:
    """``Node.id`` for types that keep relay's default ``resolve_id``/``resolve_typename``."""
    cls = _origin_class(parent)
    if (
        cls is None
        or not issubclass(cls, relay.Node)
        or cls.resolve_id.__func__ is not relay.Node.resolve_id.__func__  # type: ignore[attr-defined]
        or cls.resolve_typename.__func__ is not relay.Node.resolve_typename.__func__  # type: ignore[attr-defined]
    ):
        return None
    attr = cls.resolve_id_attr()
    type_name = parent.name
    return lambda obj: relay.GlobalID(type_name=type_name, node_id=str(getattr(obj, attr)))


def _origin_class(gql_type: GraphQLObjectType) -> type | None:
    definition = (gql_type.extensions or {}).get(_BACKREF)
    if isinstance(definition, StrawberryObjectDefinition):
        return definition.origin
    return None


class CompiledOperation:
    """One compiled document: a single root mutation field and its payload renderer."""

    def __init__(
        self,
        operation: OperationDefinitionNode,
        node: FieldNode,
        gql_field: GraphQLField,
        field: StrawberryField,
        render: _Render,
        operation_name: str | None,
        coerce_variables: CompiledCoercion | None,
    ) -> None:
        self.operation = operation
        self.coerce_variables = coerce_variables
        self.convert_arguments: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
        self.node = node
        self.response_key = (node.alias or node.name).value
        self.gql_field = gql_field
        self.field = field
        self.render = render
        self.operation_name = operation_name
        resolver = field.base_resolver
        assert resolver is not None and resolver.info_parameter is not None
        self.resolver: Callable[..., Any] = resolver
        self.info_name = resolver.info_parameter.name
        self.runs = 0  # requests answered by this compiled operation

    async def run(
        self, schema: strawberry.Schema, context: Any, variables: dict[str, Any] | None
    ) -> ExecutionResult | None:
        """The result, or None to let the regular pipeline handle this request."""
        started = time.perf_counter()
        if context is None or context.auth_error is not None:
            return None
        token = new_loader_scope()
        try:
            try:
                await authenticate_operation(context)
            except DomainError:
                return None
            inputs = variables or {}
            coerced: VariableValues | list[GraphQLError] | None = (
                self.coerce_variables(inputs)
                if self.coerce_variables is not None and isinstance(inputs, dict)
                else None
            )
            if coerced is None:  # not compiled, or invalid: graphql-core decides
                coerced = get_variable_values(
                    schema._schema, self.operation.variable_definitions or (), inputs
                )
            if isinstance(coerced, list):
                return None  # invalid variables: reported by the regular path
            try:
                raw = get_argument_values(self.gql_field, self.node, coerced)
                if self.convert_arguments is None:  # needs the Strawberry schema: on first use
                    self.convert_arguments = compile_argument_conversion(
                        self.field.arguments, schema.schema_converter.scalar_registry, schema.config
                    )
                kwargs = self.convert_arguments(raw)
                await check_rate_limits(context)
            except (GraphQLError, DomainError):
                return None
            # From here on the operation has effects: no more fallback.
            kwargs[self.info_name] = _ContextOnlyInfo(context)
            result = await self._resolve(schema, kwargs)
            self.runs += 1
            record_operation(
                context.services.metrics,
                self.operation_name,
                "mutation",
                time.perf_counter() - started,
                result.errors,
            )
            return result
        finally:
            end_loader_scope(token)

    async def _resolve(self, schema: strawberry.Schema, kwargs: dict[str, Any]) -> ExecutionResult:
        try:
            value = await self.resolver(None, **kwargs)
            return ExecutionResult(data={self.response_key: self.render(value)}, errors=None)
        except Exception as exc:
            # As graphql-core does: the error at the field's path; the root field is
            # non-null, so data is null. process_errors masks it and logs the cause.
            error = GraphQLError(
                str(exc), nodes=[self.node], path=[self.response_key], original_error=exc
            )
            schema.process_errors([error])
            return ExecutionResult(data=None, errors=[error])


def compile_operation(
    schema: Any, document: Any, operation_name: str | None
) -> CompiledOperation | None:
    """A :class:`CompiledOperation` for a validated ``document``, if it qualifies."""
    found = sole_root_field(document, operation_name, OperationType.MUTATION)
    mutation_type = schema.mutation_type
    if found is None or mutation_type is None:
        return None
    op, node = found
    if node.name.value not in COMPILABLE_FIELDS:
        return None
    gql_field = mutation_type.fields.get(node.name.value)
    field = (gql_field.extensions or {}).get(_BACKREF) if gql_field is not None else None
    if (
        gql_field is None
        or not isinstance(field, StrawberryField)
        or field.base_resolver is None
        or field.base_resolver.info_parameter is None
        or field.extensions
        or field.permission_classes
    ):
        return None
    render = _compile_type(gql_field.type, node.selection_set)
    if render is None:
        return None
    name = operation_name or (op.name.value if op.name else None)
    coerce = compile_variable_coercion(schema, op.variable_definitions or ())
    return CompiledOperation(op, node, gql_field, field, render, name, coerce)


class CompiledOperations:
    """Compiled documents by (query text, operation name); a bounded LRU.

    Documents longer than ``max_query_chars`` are never remembered (a trading document
    is a few hundred characters), so the cache stays small whatever clients send.
    """

    def __init__(self, max_size: int = 256, max_query_chars: int = 8192) -> None:
        self.max_size = max_size
        self.max_query_chars = max_query_chars
        self._plans: OrderedDict[tuple[str, str | None], CompiledOperation | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, query: str, operation_name: str | None) -> CompiledOperation | None:
        plan = self._plans.get((query, operation_name))
        if plan is not None:
            self._plans.move_to_end((query, operation_name))
        return plan

    def knows(self, query: str, operation_name: str | None) -> bool:
        return (query, operation_name) in self._plans

    def learn(self, schema: Any, query: str, document: Any, operation_name: str | None) -> None:
        """Compile (or remember that it does not compile) a document that passed the
        regular pipeline's checks."""
        key = (query, operation_name)
        if key in self._plans or len(query) > self.max_query_chars:
            return
        self._plans[key] = compile_operation(schema, document, operation_name)
        while len(self._plans) > self.max_size:
            self._plans.popitem(last=False)


# The (query text, operation name) the client sent, while the regular pipeline runs it;
# set by ``TradeGraphSchema.execute`` so the learning hook sees exactly the lookup key.
pending_key: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "tradegraph_compile_key", default=None
)


class LearnCompiledOperations(SchemaExtension):
    """At the execute step (every check passed), compile the document for next time."""

    async def on_execute(self) -> AsyncIterator[None]:
        ec = self.execution_context
        compiled: CompiledOperations | None = getattr(ec.schema, "compiled", None)
        key = pending_key.get()
        if (
            compiled is not None
            and key is not None
            and key[0] == ec.query
            and ec.graphql_document is not None
            and not compiled.knows(*key)
        ):
            compiled.learn(ec.schema._schema, key[0], ec.graphql_document, key[1])
        yield

"""Schema extensions: per-operation scope, rate limits, cost limit, metrics.

Depth, alias and token limits and the parser/validation caches are Strawberry's own; the
cost limit is ours because Strawberry has none (Saleor's approach: a per-field cost,
multiplied by the list arguments of the fields above it).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension

from tradegraph.errors import RateLimited

_loaders: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tradegraph_loaders", default=None
)

# Arguments whose value says how many items a field returns; they multiply the cost of
# everything selected under that field.
LIST_ARGUMENTS = ("first", "last", "limit", "depth", "countBack")
# Arguments capped by the page-size limit (countBack and depth have their own caps).
PAGE_ARGUMENTS = ("first", "last", "limit")
# Fields that cost more than an ordinary object (extra I/O or computation).
FIELD_COSTS: dict[tuple[str, str], int] = {}


def operation_loaders() -> dict[str, Any]:
    """DataLoaders of the operation being executed (one dict per operation)."""
    loaders = _loaders.get()
    if loaders is None:
        loaders = {}
        _loaders.set(loaders)
    return loaders


class OperationScope(SchemaExtension):
    """Gives each operation fresh DataLoaders and a freshly checked principal.

    On websockets one context serves many operations; re-authenticating per operation
    means a suspended user or revoked token stops working at once, not at reconnect.
    """

    async def on_operation(self) -> AsyncIterator[None]:
        token = new_loader_scope()
        ctx = self.execution_context.context
        try:
            if ctx is not None:
                await authenticate_operation(ctx)
            yield
        finally:
            end_loader_scope(token)


def new_loader_scope() -> contextvars.Token[dict[str, Any] | None]:
    """Start an operation's DataLoader scope; ``_loaders.reset(token)`` ends it."""
    return _loaders.set({})


def end_loader_scope(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """End the scope ``new_loader_scope`` started."""
    _loaders.reset(token)


async def authenticate_operation(ctx: Any) -> None:
    """Raise the request's token error, or re-check a websocket connection's token."""
    if ctx.auth_error is not None:
        # A bad token fails loudly (even on public fields) so clients refresh it.
        raise ctx.auth_error
    if ctx.connection_params is not None:
        ctx.principal = await ctx.services.identity.principal_from_header(
            ctx.connection_params.get("authorization")
        )


async def check_rate_limits(ctx: Any) -> None:
    """Count one operation against the per-IP and per-user limits; ``RateLimited`` if over.

    Both are checked and counted together (one Redis round trip); a refused operation is
    counted against neither.
    """
    services = ctx.services
    settings = services.settings
    checks = [("ip", ctx.ip, settings.rate_limit_ip_per_minute)]
    if ctx.principal is not None:
        checks.append(("user", ctx.principal.user_id, settings.rate_limit_user_per_minute))
    denied = await services.rate_limiter.hit_all(
        [(f"op:{scope}:{key}", limit, 60.0) for scope, key, limit in checks]
    )
    if denied is not None:
        index, decision = denied
        scope = checks[index][0]
        services.metrics.rate_limited.labels(scope).inc()
        raise RateLimited(
            f"too many requests for this {scope}; retry in {max(1, int(decision.retry_after))} s"
        )


class RateLimit(SchemaExtension):
    """Per-IP and per-user operation rate limits (Redis when configured, else memory)."""

    async def on_operation(self) -> AsyncIterator[None]:
        ctx = self.execution_context.context
        if ctx is not None:
            await check_rate_limits(ctx)
        yield


class CostLimit(SchemaExtension):
    """Rejects operations whose estimated cost or page size is above the limits."""

    def __init__(self, *, max_cost: int, max_page_size: int) -> None:
        self.max_cost = max_cost
        self.max_page_size = max_page_size

    def on_validate(self) -> Iterator[None]:
        yield
        ec = self.execution_context
        if ec.pre_execution_errors or ec.graphql_document is None:
            return
        operation = get_operation_ast(ec.graphql_document, ec.operation_name)
        if operation is None:
            return
        fragments = {
            d.name.value: d
            for d in ec.graphql_document.definitions
            if isinstance(d, FragmentDefinitionNode)
        }
        estimator = _CostEstimator(
            ec.schema._schema,
            fragments,
            ec.variables or {},
            self.max_page_size,
        )
        cost = estimator.operation_cost(operation)
        if cost > self.max_cost:
            raise GraphQLError(
                f"Query cost {cost} exceeds the maximum cost of {self.max_cost}; "
                "ask for fewer items (first/limit/depth) or fewer nested fields.",
                extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "maxCost": self.max_cost},
            )


class _CostEstimator:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        variables: dict[str, Any],
        max_page_size: int,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.max_page_size = max_page_size

    def operation_cost(self, operation: OperationDefinitionNode) -> int:
        root = self.schema.get_root_type(operation.operation)
        if root is None:
            return 0
        return self._selection_cost(operation.selection_set, root, set())

    def _selection_cost(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType, seen: set[str]
    ) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self._field_cost(selection, parent, seen)
            elif isinstance(selection, InlineFragmentNode):
                target = parent
                if selection.type_condition is not None:
                    target = self.schema.get_type(selection.type_condition.name.value) or parent
                total += self._selection_cost(selection.selection_set, target, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:
                    continue
                target = self.schema.get_type(fragment.type_condition.name.value) or parent
                total += self._selection_cost(fragment.selection_set, target, seen | {name})
        return total

    def _field_cost(self, node: FieldNode, parent: GraphQLNamedType, seen: set[str]) -> int:
        if not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return 0
        name = node.name.value
        field = parent.fields.get(name)
        if field is None:
            return 0
        named = get_named_type(field.type)
        composite = isinstance(named, GraphQLObjectType | GraphQLInterfaceType | GraphQLUnionType)
        own = FIELD_COSTS.get((parent.name, name), 1 if composite else 0)
        multiplier = self._multiplier(node, field)
        children = 0
        if node.selection_set is not None:
            children = self._selection_cost(node.selection_set, named, seen)
        return multiplier * (own + children)

    def _multiplier(self, node: FieldNode, field: GraphQLField) -> int:
        values: dict[str, Any] = {
            arg_name: arg.default_value
            for arg_name, arg in field.args.items()
            if arg_name in LIST_ARGUMENTS
        }
        for arg in node.arguments or ():
            if arg.name.value not in LIST_ARGUMENTS:
                continue
            if isinstance(arg.value, IntValueNode):
                values[arg.name.value] = int(arg.value.value)
            elif isinstance(arg.value, VariableNode):
                values[arg.name.value] = self.variables.get(arg.value.name.value)
        multiplier = 1
        for arg_name, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if arg_name in PAGE_ARGUMENTS and value > self.max_page_size:
                raise GraphQLError(
                    f"'{arg_name}' on '{node.name.value}' is {value}; the maximum page size "
                    f"is {self.max_page_size}.",
                    extensions={"code": "PAGE_SIZE_TOO_LARGE", "max": self.max_page_size},
                )
            multiplier *= max(1, value)
        return multiplier


class Metrics(SchemaExtension):
    """Counts operations, errors and latency by operation name.

    Live subscriptions are counted by the subscription resolvers (``streams.track``),
    since a subscription's lifetime is the stream's, not the operation hook's.
    """

    async def on_operation(self) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            ec = self.execution_context
            if ec.context is not None:
                try:
                    kind = ec.operation_type.value
                except Exception:
                    kind = "invalid"
                record_operation(
                    ec.context.services.metrics,
                    ec.operation_name,
                    kind,
                    time.perf_counter() - started,
                    getattr(ec.result, "errors", None),
                )


def record_operation(
    metrics: Any, name: str | None, kind: str, seconds: float, errors: Any
) -> None:
    """Count one finished operation: requests, latency (not subscriptions), error codes."""
    name = name or "anonymous"
    metrics.graphql_requests.labels(name, kind).inc()
    if kind != "subscription":
        metrics.graphql_latency.labels(name).observe(seconds)
    for error in errors or ():
        code = (getattr(error, "extensions", None) or {}).get("code", "INTERNAL")
        metrics.graphql_errors.labels(name, str(code)).inc()

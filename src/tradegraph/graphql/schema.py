"""The schema: domain modules merged, limits and error handling applied.

Errors are shaped in one place (``TradeGraphSchema.process_errors``): a ``DomainError``
keeps its message and gets ``extensions.code``; anything unexpected is logged with its
stack under a fresh error id and the client sees only that id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry import relay
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.graphql import OperationType

from tradegraph.config import Settings
from tradegraph.errors import DomainError
from tradegraph.graphql.admin import AdminMutation, AdminRootQuery
from tradegraph.graphql.brokers import BrokerMutation, BrokerQuery
from tradegraph.graphql.compiled import (
    CompiledOperations,
    LearnCompiledOperations,
    pending_key,
)
from tradegraph.graphql.errors import error_extensions
from tradegraph.graphql.exchange import (
    ExchangeAdminMutation,
    ExchangeMutation,
    ExchangeQuery,
    ExchangeSubscription,
)
from tradegraph.graphql.extensions import CostLimit, Metrics, OperationScope, RateLimit
from tradegraph.graphql.identity import IdentityMutation, IdentityQuery
from tradegraph.graphql.inputs import install_flat_input_builders
from tradegraph.graphql.marketdata import (
    CandlesFastPath,
    MarketDataQuery,
    MarketDataSubscription,
)
from tradegraph.graphql.notifications import (
    NotificationMutation,
    NotificationQuery,
    NotificationSubscription,
)
from tradegraph.graphql.scalars import SCALAR_MAP
from tradegraph.graphql.system import SystemQuery, SystemSubscription

log = logging.getLogger("tradegraph.graphql")


QUERIES: tuple[type, ...] = (
    IdentityQuery,
    ExchangeQuery,
    NotificationQuery,
    SystemQuery,
    AdminRootQuery,
    BrokerQuery,
    MarketDataQuery,
)
MUTATIONS: tuple[type, ...] = (
    IdentityMutation,
    ExchangeMutation,
    ExchangeAdminMutation,
    NotificationMutation,
    AdminMutation,
    BrokerMutation,
)
SUBSCRIPTIONS: tuple[type, ...] = (
    SystemSubscription,
    ExchangeSubscription,
    NotificationSubscription,
    MarketDataSubscription,
)


def _node_query() -> type:
    # relay.node() fields are bound to one schema, so each build gets a fresh one.
    @strawberry.type
    class NodeQuery:
        node: relay.Node | None = relay.node(
            description="Fetch any object by its global id; objects you may not see are null."
        )

    return NodeQuery


MUTATION = OperationType.MUTATION


class TradeGraphSchema(strawberry.Schema):
    """Strawberry schema whose errors carry codes and never leak internals, and which runs
    compiled trading mutations directly (see ``graphql/compiled.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.compiled = CompiledOperations()

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        if (
            query is not None
            and root_value is None
            and (
                allowed_operation_types is None or OperationType.MUTATION in allowed_operation_types
            )
        ):
            plan = self.compiled.get(query, operation_name)
            if plan is not None:
                result = await plan.run(self, context_value, variable_values)
                if result is not None:
                    return result
        token = pending_key.set((query, operation_name) if query is not None else None)
        try:
            return await super().execute(
                query,
                variable_values,
                context_value,
                root_value,
                operation_name,
                allowed_operation_types,
                operation_extensions,
            )
        finally:
            pending_key.reset(token)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            shape_error(error)


def shape_error(error: GraphQLError) -> None:
    """Give ``error`` a code; mask it (with a logged error id) when it is unexpected."""
    ext = error.extensions if isinstance(error.extensions, dict) else {}
    if ext.get("code"):
        return
    original = error.original_error
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error
    if isinstance(original, DomainError):
        error.message = original.message
        error.extensions = {**ext, **error_extensions(original)}
    elif original is None or isinstance(original, GraphQLError):
        # Syntax and validation errors: the message is about the client's document.
        error.extensions = {**ext, "code": "GRAPHQL_VALIDATION_FAILED"}
    else:
        error_id = uuid.uuid4().hex[:16]
        log.error(
            "unexpected error %s in %s",
            error_id,
            ".".join(str(p) for p in error.path or ()),
            exc_info=(type(original), original, original.__traceback__),
            extra={"error_id": error_id},
        )
        error.message = f"Internal error (id {error_id}); it has been logged."
        error.original_error = None
        error.extensions = {"code": "INTERNAL", "errorId": error_id}


def _root(name: str, parts: tuple[type, ...], description: str) -> type:
    merged = merge_types(name, parts)
    merged.__strawberry_definition__.description = description  # type: ignore[attr-defined]
    return merged


def build_schema(settings: Settings) -> TradeGraphSchema:
    # Factories: a fresh extension per operation (their LRU caches live at module level).
    # The limiters' validation rules are built once: the validation cache is keyed by the
    # rule classes, and a limiter built per operation would make every lookup a miss.
    limit_rules = [
        *QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules,
    ]
    extensions: list[Any] = [
        OperationScope,
        Metrics,
        RateLimit,
        lambda: ParserCache(maxsize=512),
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: AddValidationRules(limit_rules),
        lambda: ValidationCache(maxsize=512),
        lambda: CostLimit(max_cost=settings.max_query_cost, max_page_size=settings.max_page_size),
        CandlesFastPath,  # after every limit: it only replaces execution
    ]
    if settings.compile_operations:
        extensions.append(LearnCompiledOperations)  # after every limit: compiles what passed
    schema = TradeGraphSchema(
        query=_root("Query", (_node_query(), *QUERIES), "Read the platform's state."),
        mutation=_root(
            "Mutation", MUTATIONS, "Change state; failures come back as payload errors."
        ),
        subscription=_root(
            "Subscription", SUBSCRIPTIONS, "Live streams over websocket (graphql-transport-ws)."
        ),
        extensions=extensions,
        config=StrawberryConfig(
            disable_field_suggestions=settings.is_production, scalar_map=SCALAR_MAP
        ),
    )
    converter = schema.schema_converter
    install_flat_input_builders(
        (
            concrete.definition.origin
            for concrete in converter.type_map.values()
            if isinstance(concrete.definition, StrawberryObjectDefinition)
        ),
        converter.scalar_registry,
        schema.config.name_converter.from_field,
    )
    return schema


def export_schema(settings: Settings | None = None) -> str:
    """The SDL checked in as ``schema.graphql``."""
    return build_schema(settings or Settings()).as_str() + "\n"

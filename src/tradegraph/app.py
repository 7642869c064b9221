"""``create_app(settings)``: the Starlette application and everything it serves.

Routes: ``/graphql`` (POST JSON, GET opens GraphiQL in a browser, websocket with
``graphql-transport-ws`` and legacy ``graphql-ws``), ``/healthz``, ``/readyz``, ``/metrics``,
``/datafeed/*`` (TradingView UDF).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError

from tradegraph.config import Settings
from tradegraph.errors import DomainError
from tradegraph.exchange.webhooks import deposit_webhook
from tradegraph.gctuning import tune_for_server
from tradegraph.graphql.context import Context, client_ip
from tradegraph.graphql.marketdata import encode_response
from tradegraph.graphql.schema import build_schema
from tradegraph.logs import configure_logging
from tradegraph.marketdata.udf_routes import datafeed_routes
from tradegraph.middleware import (
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from tradegraph.services import Services
from tradegraph.wire import decode

log = logging.getLogger("tradegraph")


class _StrictWebSocketAdapter(ASGIWebSocketAdapter):
    """Closes the socket (4400) on a frame whose shape the protocols do not allow.

    Strawberry's protocol handlers index frames without checking their shape, so a frame
    like ``[1, 2]`` or a ``subscribe`` with a string payload would otherwise end in an
    unhandled TypeError (a 1011 close and a stack trace in the log).
    """

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        async for message in super().iter_json(ignore_parsing_errors=ignore_parsing_errors):
            problem = _frame_problem(message)
            if problem is not None:
                await self.close(4400, f"Invalid message: {problem}")
                return
            yield message


def _frame_problem(message: object) -> str | None:
    if not isinstance(message, dict):
        return "expected a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "'type' must be a string"
    if kind in ("subscribe", "start", "complete", "stop") and not isinstance(
        message.get("id"), str
    ):
        return "'id' must be a string"
    if kind in ("subscribe", "start"):
        payload = message.get("payload")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return "'payload' must be an object with a 'query' string"
        for key in ("variables", "extensions"):
            if payload.get(key) is not None and not isinstance(payload[key], dict):
                return f"'payload.{key}' must be an object"
        if payload.get("operationName") is not None and not isinstance(
            payload["operationName"], str
        ):
            return "'payload.operationName' must be a string"
    return None


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app with TradeGraph's context and websocket authentication."""

    websocket_adapter_class = _StrictWebSocketAdapter

    def __init__(self, services: Services) -> None:
        settings = services.settings
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql",
            allow_queries_via_get=True,
            max_subscriptions_per_connection=settings.ws_max_subscriptions,
            connection_init_wait_timeout=timedelta(
                seconds=settings.ws_connection_init_timeout_seconds
            ),
            allowed_origins=settings.cors_origins,
        )
        self.services = services

    def encode_json(self, data: object) -> str:
        """Plain JSON, except that the candles fast path's pre-rendered text is spliced in."""
        return encode_response(data)

    def decode_json(self, data: str | bytes) -> object:
        """orjson, as on the bus (a 100-order ``placeOrders`` body parses ~3x faster)."""
        return decode(data)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        gauge = self.services.metrics.ws_connections
        gauge.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            gauge.dec()

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        context = Context(
            services=self.services, request=request, response=response, ip=client_ip(request)
        )
        if isinstance(request, WebSocket):
            return context  # authenticated in on_ws_connect, re-checked per operation
        try:
            context.principal = await self.services.identity.principal_from_header(
                request.headers.get("authorization")
            )
        except DomainError as error:
            context.auth_error = error
        return context

    async def on_ws_connect(self, context: Context) -> dict[str, object] | None:
        params = context.connection_params or {}
        try:
            context.principal = await self.services.identity.principal_from_header(
                params.get("authorization") or params.get("Authorization")
            )
        except DomainError as error:
            raise ConnectionRejectionError({"code": error.code}) from None
        context.connection_params = {
            "authorization": params.get("authorization") or params.get("Authorization")
        }
        return None


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Starlette:
    """Build the whole app from ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()
    services = services or Services(settings)
    graphql_app = GraphQLApp(services)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = await services.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await services.start()
        if settings.gc_tuning:
            tune_for_server()
        try:
            yield
        finally:
            await services.stop()

    middleware = [
        Middleware(RequestContextMiddleware, metrics=services.metrics),
        Middleware(SecurityHeadersMiddleware, hsts=settings.is_production),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            max_age=600,
        ),
        Middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes),
    ]
    app = Starlette(
        routes=[
            Route("/graphql", graphql_app, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql_app),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            datafeed_routes(services),  # TradingView UDF
            Route("/webhooks/deposits", deposit_webhook(services), methods=["POST"]),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.schema = graphql_app.schema
    return app


def app_from_env() -> Starlette:
    """Uvicorn factory: ``uvicorn --factory tradegraph.app:app_from_env``."""
    settings = Settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    return create_app(settings)

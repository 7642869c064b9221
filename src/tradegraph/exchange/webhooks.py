"""The payment-provider deposit webhook: ``POST /webhooks/deposits``.

Signed like Stripe's webhooks: header ``X-TradeGraph-Signature: t=<unix>,v1=<hex>`` where
``v1 = HMAC-SHA256(secret, "<t>.<raw body>")``. A timestamp older than five minutes is
refused (replay protection); the provider's ``reference`` is the idempotency key, so a
redelivered webhook credits once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tradegraph.errors import DomainError
from tradegraph.graphql.ids import decode_id
from tradegraph.services import Services

TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs((now or time.time()) - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def deposit_webhook(services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        secret = services.settings.deposit_webhook_secret
        if not secret:
            return _error(404, "NOT_FOUND", "deposit webhooks are not configured")
        body = await request.body()
        if not verify(secret, request.headers.get("x-tradegraph-signature", ""), body):
            return _error(401, "BAD_SIGNATURE", "signature missing, wrong or too old")
        try:
            data = json.loads(body)
            account_id = int(decode_id(str(data["accountId"]), "Account", field="accountId"))
            asset = str(data["asset"])
            amount = Decimal(str(data["amount"]))
            reference = str(data["reference"])
        except (ValueError, KeyError, TypeError, InvalidOperation, DomainError):
            return _error(400, "INVALID_INPUT", "body needs accountId, asset, amount and reference")
        if not 1 <= len(reference) <= 48:
            return _error(400, "INVALID_INPUT", "reference must be 1 to 48 characters")
        try:
            result = await services.exchange.provider_deposit(account_id, asset, amount, reference)
        except DomainError as error:
            status = 503 if error.code == "ENGINE_UNAVAILABLE" else 422
            return _error(status, error.code, error.message)
        await services.audit.record(
            "account.deposit_webhook",
            target_type="account",
            target_id=str(account_id),
            data={"asset": asset, "amount": str(amount), "reference": reference},
        )
        tx = result["transaction"]
        return JSONResponse(
            {
                "status": "credited",
                "transactionId": tx["id"],
                "replayed": bool(result.get("replayed")),
            }
        )

    return endpoint

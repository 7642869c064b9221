"""BingX (perpetual swap) adapter with its API-key + HMAC request signing.

Every call is signed over all its parameters plus a millisecond ``timestamp``; BingX
rejects stale timestamps, so a retried request is re-signed with a fresh one. Replies are
``{code, msg, data}`` with HTTP 200 even for most errors, so mapping happens on ``code``.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from tradegraph.brokers.adapters.http import BrokerHttpClient, Verdict, decode_json, status_verdict
from tradegraph.brokers.adapters.retry import RetryPolicy
from tradegraph.brokers.protocol import (
    Balance,
    BrokerAuthError,
    BrokerOrder,
    BrokerProvider,
    BrokerRejected,
    BrokerUnavailable,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    PositionKind,
    PositionSide,
    decimal_str,
    optional_decimal,
    to_decimal,
)
from tradegraph.errors import DomainError

BINGX_API_URL = "https://open-api.bingx.com"
_PROVIDER = BrokerProvider.BINGX

# Error codes as BingX documents them.
SIGNATURE_MISMATCH = 100001
INCORRECT_API_KEY = 100413
IP_NOT_WHITELISTED = 100419
TIMESTAMP_MISMATCH = 100421
PERMISSION_DENIED = 100403
RATE_LIMITED = 100410
INTERNAL_ERROR = 100500
SERVER_BUSY = 100503
SERVICE_UNAVAILABLE = 80012

_AUTH_CODES = frozenset(
    {SIGNATURE_MISMATCH, INCORRECT_API_KEY, IP_NOT_WHITELISTED, PERMISSION_DENIED}
)
_UNAVAILABLE_CODES = frozenset(
    {INTERNAL_ERROR, SERVER_BUSY, SERVICE_UNAVAILABLE, TIMESTAMP_MISMATCH}
)

_ORDER_TYPES = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.STOP_LIMIT: "STOP",
    OrderType.STOP_MARKET: "STOP_MARKET",
}
_ORDER_TYPES_BACK = {v: k for k, v in _ORDER_TYPES.items()}
_STATUS = {
    "NEW": OrderStatus.NEW,
    "PENDING": OrderStatus.NEW,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELED,
    "CANCELLED": OrderStatus.CANCELED,
    "FAILED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
}


def bingx_signature(params: Mapping[str, str], secret: str) -> str:
    """HMAC-SHA256 (lowercase hex) over ``k=v&...`` of ``params`` sorted by key."""
    payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def bingx_signed_params(
    params: Mapping[str, str], secret: str, timestamp_ms: int
) -> tuple[tuple[str, str], ...]:
    """The query to send: sorted params with ``timestamp``, then ``signature`` last."""
    full = {**params, "timestamp": str(timestamp_ms)}
    items = tuple((k, full[k]) for k in sorted(full))
    return (*items, ("signature", bingx_signature(full, secret)))


@dataclass(frozen=True, slots=True)
class BingXAccount:
    """What a successful signed call tells about the key's owner."""

    uid: str
    balance: Balance


@dataclass(frozen=True, slots=True)
class BingXDeposit:
    amount: Decimal
    coin: str
    network: str | None
    status: int
    tx_id: str | None
    inserted_at: datetime | None

    @property
    def credited(self) -> bool:
        """BingX status 1 is success; 6 is credited but not yet withdrawable."""
        return self.status in (1, 6)


@dataclass(frozen=True, slots=True)
class BingXInviteRelation:
    """Answer of the agent referral check for one uid."""

    uid: str
    invited_by_us: bool
    has_inviter: bool
    direct_invitation: bool
    deposited: bool
    kyc_passed: bool
    traded: bool
    registered_at: datetime | None


def _ms(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (ValueError, OverflowError):
        return None


def _verdict(response: httpx.Response) -> Verdict:
    """BingX also signals throttling and overload in the body of an HTTP 200."""
    base = status_verdict(response)
    if base is not Verdict.OK or response.status_code != 200:
        return base
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return Verdict.OK
    if code == RATE_LIMITED:
        return Verdict.THROTTLED
    if code in (INTERNAL_ERROR, SERVER_BUSY, SERVICE_UNAVAILABLE):
        return Verdict.SERVER_ERROR
    return Verdict.OK


class BingXBroker:
    """A BingX account reached with an API key and secret."""

    provider = BrokerProvider.BINGX

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        base_url: str = BINGX_API_URL,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        recv_window_ms: int | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._secret = api_secret
        self._recv_window_ms = recv_window_ms
        self._clock = clock
        self._http = BrokerHttpClient(
            base_url,
            provider=_PROVIDER,
            policy=policy,
            transport=transport,
            headers={"X-BX-APIKEY": api_key},
            rng=rng,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> BingXBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        what: str,
        idempotent: bool | None = None,
    ) -> Any:
        """One signed request; returns ``data`` or raises the mapped domain error."""
        method = method.upper()
        base = dict(params or {})
        if self._recv_window_ms is not None:
            base["recvWindow"] = str(self._recv_window_ms)

        def build() -> httpx.Request:
            signed = bingx_signed_params(base, self._secret, int(self._clock() * 1000))
            return self._http.client.build_request(method, path, params=signed)

        response = await self._http.send(
            build,
            what=what,
            idempotent=method in ("GET", "DELETE") if idempotent is None else idempotent,
            verdict=_verdict,
        )
        body = decode_json(response, _PROVIDER)
        if isinstance(body, list):  # a few v3 endpoints answer with the bare list
            return body
        if not isinstance(body, dict) or "code" not in body:
            raise BrokerUnavailable(
                f"BingX {what}: unexpected reply (HTTP {response.status_code})",
                provider=_PROVIDER,
            )
        code = body.get("code")
        if code == 0 and response.status_code < 400:
            return body.get("data")
        raise _map_error(what, code, body.get("msg"))

    # -- account -----------------------------------------------------------------------

    async def account(self) -> BingXAccount:
        data = await self.call("GET", "/openApi/swap/v2/user/balance", what="balance")
        row = data.get("balance") if isinstance(data, dict) else None
        if isinstance(data, list):  # the v3 shape: one row per asset
            row = data[0] if data else None
        if not isinstance(row, dict):
            raise BrokerUnavailable("BingX balance: unexpected reply", provider=_PROVIDER)
        total = to_decimal(row.get("balance", 0), provider=_PROVIDER, what="balance")
        available = to_decimal(
            row.get("availableMargin", row.get("balance", 0)), provider=_PROVIDER, what="balance"
        )
        balance = Balance(
            asset=str(row.get("asset") or "USDT"),
            total=total,
            available=available,
            locked=total - available,
        )
        return BingXAccount(uid=str(row.get("userId") or ""), balance=balance)

    async def validate_credentials(self) -> BingXAccount:
        """A cheap signed read: raises ``BrokerAuthError`` when key or secret are wrong."""
        return await self.account()

    async def balances(self) -> list[Balance]:
        return [(await self.account()).balance]

    async def positions(self, symbol: str | None = None) -> list[Position]:
        params = {"symbol": symbol} if symbol else None
        data = await self.call("GET", "/openApi/swap/v2/user/positions", params, what="positions")
        out = []
        for row in data or []:
            qty = to_decimal(row.get("positionAmt", 0), provider=_PROVIDER, what="quantity")
            if qty == 0:
                continue
            side = str(row.get("positionSide") or "")
            if side not in ("LONG", "SHORT"):  # one-way mode reports BOTH with a signed amount
                side = "LONG" if qty > 0 else "SHORT"
            out.append(
                Position(
                    symbol=str(row.get("symbol")),
                    side=PositionSide(side),
                    quantity=abs(qty),
                    kind=PositionKind.POSITION,
                    average_price=optional_decimal(
                        row.get("avgPrice"), provider=_PROVIDER, what="price"
                    ),
                    mark_price=optional_decimal(
                        row.get("markPrice"), provider=_PROVIDER, what="price"
                    ),
                    unrealized_pnl=optional_decimal(
                        row.get("unrealizedProfit"), provider=_PROVIDER, what="pnl"
                    ),
                    currency=str(row.get("currency") or "USDT"),
                    position_id=str(row["positionId"]) if row.get("positionId") else None,
                )
            )
        return out

    # -- orders ------------------------------------------------------------------------

    async def place_order(self, order: OrderRequest) -> BrokerOrder:
        """Place a swap order. ``options["positionSide"]`` defaults to LONG for a buy and
        SHORT for a sell (hedge mode, opening); pass it to close the opposite side.
        """
        params = {
            "symbol": order.symbol,
            "side": str(order.side),
            "positionSide": order.options.get(
                "positionSide", "LONG" if order.side is OrderSide.BUY else "SHORT"
            ),
            "type": _ORDER_TYPES[order.order_type],
            "quantity": decimal_str(order.quantity),
        }
        if order.price is not None:
            params["price"] = decimal_str(order.price)
        if order.stop_price is not None:
            params["stopPrice"] = decimal_str(order.stop_price)
        if order.client_order_id is not None:
            if not 1 <= len(order.client_order_id) <= 40:
                raise DomainError("clientOrderId must be 1-40 characters", field="clientOrderId")
            params["clientOrderID"] = order.client_order_id
        if "timeInForce" in order.options:
            params["timeInForce"] = order.options["timeInForce"]
        data = await self.call("POST", "/openApi/swap/v2/trade/order", params, what="place order")
        row = (data or {}).get("order") if isinstance(data, dict) else None
        if not isinstance(row, dict) or not row.get("orderId"):
            raise BrokerUnavailable("BingX place order: unexpected reply", provider=_PROVIDER)
        return await self.order(str(row["orderId"]), symbol=order.symbol)

    async def order(self, order_id: str, *, symbol: str) -> BrokerOrder:
        data = await self.call(
            "GET",
            "/openApi/swap/v2/trade/order",
            {"orderId": order_id, "symbol": symbol},
            what="query order",
        )
        return _order((data or {}).get("order") or {})

    async def cancel_order(self, order_id: str, *, symbol: str | None = None) -> BrokerOrder:
        """Cancel by order id; BingX needs the symbol. A cancel that already happened
        (e.g. a retried request) is reported as success.
        """
        if not symbol:
            raise DomainError("BingX needs the symbol to cancel an order", field="symbol")
        try:
            data = await self.call(
                "DELETE",
                "/openApi/swap/v2/trade/order",
                {"orderId": order_id, "symbol": symbol},
                what="cancel order",
            )
        except BrokerRejected:
            current = await self.order(order_id, symbol=symbol)
            if current.status is OrderStatus.CANCELED:
                return current
            raise
        return _order((data or {}).get("order") or {})

    # -- onboarding checks -------------------------------------------------------------

    async def deposit_history(
        self,
        *,
        coin: str | None = None,
        status: int | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 1000,
    ) -> list[BingXDeposit]:
        """Deposits (newest first as BingX returns them), e.g. for the "$200 in 5 days" gate."""
        params: dict[str, str] = {"limit": str(min(max(limit, 1), 1000))}
        if coin:
            params["coin"] = coin
        if status is not None:
            params["status"] = str(status)
        if start_time is not None:
            params["startTime"] = str(int(start_time.timestamp() * 1000))
        if end_time is not None:
            params["endTime"] = str(int(end_time.timestamp() * 1000))
        data = await self.call(
            "GET", "/openApi/api/v3/capital/deposit/hisrec", params, what="deposit history"
        )
        rows = data if isinstance(data, list) else (data or {}).get("list", [])
        return [
            BingXDeposit(
                amount=to_decimal(row.get("amount", 0), provider=_PROVIDER, what="amount"),
                coin=str(row.get("coin") or ""),
                network=row.get("network") or None,
                status=int(row.get("status", 0)),
                tx_id=row.get("txId") or None,
                inserted_at=_ms(row.get("insertTime")),
            )
            for row in rows
        ]

    async def invite_relation(self, uid: str) -> BingXInviteRelation:
        """Agent referral check: was ``uid`` invited by the account owning this key?"""
        if not uid.isdigit():
            raise DomainError("BingX uids are numeric", field="uid")
        data = await self.call(
            "GET",
            "/openApi/agent/v1/account/inviteRelationCheck",
            {"uid": uid},
            what="referral check",
        )
        data = data if isinstance(data, dict) else {}
        return BingXInviteRelation(
            uid=str(data.get("uid") or uid),
            invited_by_us=bool(data.get("inviteResult")),
            has_inviter=bool(data.get("existInviter")),
            direct_invitation=bool(data.get("directInvitation")),
            deposited=bool(data.get("deposit")),
            kyc_passed=bool(data.get("kycResult")),
            traded=bool(data.get("trade")),
            registered_at=_ms(data.get("registerDateTime")),
        )


def _order(row: Mapping[str, Any]) -> BrokerOrder:
    if not row.get("orderId"):
        raise BrokerUnavailable("BingX order: unexpected reply", provider=_PROVIDER)
    venue_status = str(row.get("status") or "")
    filled = to_decimal(row.get("executedQty") or 0, provider=_PROVIDER, what="quantity")
    return BrokerOrder(
        order_id=str(row["orderId"]),
        symbol=str(row.get("symbol") or ""),
        side=OrderSide(str(row.get("side") or "BUY")),
        order_type=_ORDER_TYPES_BACK.get(str(row.get("type") or ""), OrderType.MARKET),
        status=_STATUS.get(venue_status, OrderStatus.NEW),
        quantity=to_decimal(
            row.get("origQty", row.get("quantity", 0)), provider=_PROVIDER, what="quantity"
        ),
        filled_quantity=filled,
        price=optional_decimal(row.get("price"), provider=_PROVIDER, what="price") or None,
        average_price=optional_decimal(row.get("avgPrice"), provider=_PROVIDER, what="price")
        or None,
        client_order_id=row.get("clientOrderId") or row.get("clientOrderID") or None,
        created_at=_ms(row.get("time")),
        venue_status=venue_status or None,
    )


def _map_error(what: str, code: object, msg: object) -> Exception:
    message = f"BingX {what}: {str(msg or 'error')[:200]} (code {code})"
    if code in _AUTH_CODES:
        return BrokerAuthError(message, provider=_PROVIDER, broker_code=str(code))
    if code in _UNAVAILABLE_CODES or code == RATE_LIMITED:
        return BrokerUnavailable(message, provider=_PROVIDER, broker_code=str(code))
    return BrokerRejected(message, provider=_PROVIDER, broker_code=str(code))

"""Zerodha Kite Connect v3 adapter.

Login is a redirect to ``kite.zerodha.com/connect/login`` that comes back with a single-use
``request_token``; it is exchanged (with a SHA-256 checksum proving we hold the api
secret) for an access token that dies at 06:00 IST the next morning, so links must be
renewed daily and the expiry is computed, not guessed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx

from tradegraph.brokers.adapters.http import BrokerHttpClient, decode_json
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

KITE_LOGIN_URL = "https://kite.zerodha.com/connect/login"
KITE_API_URL = "https://api.kite.trade"
KITE_VERSION = "3"
IST = ZoneInfo("Asia/Kolkata")
_PROVIDER = BrokerProvider.ZERODHA
_TOKEN_CUTOFF = time(6, 0)

_ORDER_TYPES = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.STOP_LIMIT: "SL",
    OrderType.STOP_MARKET: "SL-M",
}
_ORDER_TYPES_BACK = {v: k for k, v in _ORDER_TYPES.items()}
_STATUS = {
    "COMPLETE": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELED,
    "REJECTED": OrderStatus.REJECTED,
}
_AUTH_ERRORS = frozenset({"TokenException", "PermissionException"})
_UNAVAILABLE_ERRORS = frozenset({"NetworkException", "DataException"})
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,20}$")


def kite_login_url(
    api_key: str,
    *,
    redirect_params: Mapping[str, str] | None = None,
    base_url: str = KITE_LOGIN_URL,
) -> str:
    """The URL to send the user to. ``redirect_params`` (e.g. our CSRF ``state``) come back
    untouched on the redirect, which is how the callback is tied to the right user.
    """
    query: dict[str, str] = {"v": KITE_VERSION, "api_key": api_key}
    if redirect_params:
        query["redirect_params"] = urlencode(dict(redirect_params))
    return f"{base_url}?{urlencode(query)}"


@dataclass(frozen=True, slots=True)
class KiteRedirect:
    """What Kite appends to our redirect URL after a login."""

    request_token: str = field(repr=False)
    params: Mapping[str, str] = field(default_factory=dict)


def parse_kite_redirect(query: str | Mapping[str, str]) -> KiteRedirect:
    """Pull the ``request_token`` (and our own redirect params) out of the callback query."""
    if isinstance(query, str):
        raw = urlsplit(query).query if "?" in query else query
        items = dict(parse_qsl(raw, keep_blank_values=True))
    else:
        items = dict(query)
    if items.get("status", "success") != "success":
        raise BrokerAuthError("Kite login was not completed", provider=_PROVIDER)
    token = items.pop("request_token", "")
    if not token or not token.isalnum():
        raise BrokerAuthError(
            "Kite redirect carries no valid request_token", provider=_PROVIDER, field="requestToken"
        )
    for key in ("action", "type", "status"):
        items.pop(key, None)
    return KiteRedirect(request_token=token, params=items)


def kite_checksum(api_key: str, request_token: str, api_secret: str) -> str:
    """``sha256(api_key + request_token + api_secret)`` as lowercase hex, as Kite checks it."""
    return hashlib.sha256((api_key + request_token + api_secret).encode()).hexdigest()


def kite_token_expiry(login_time: datetime) -> datetime:
    """When an access token issued at ``login_time`` stops working (UTC-aware).

    Kite flushes tokens at 06:00 IST: a login before 06:00 IST dies the same morning,
    any later login at 06:00 IST the next day.
    """
    if login_time.tzinfo is None:
        raise ValueError("login_time must be timezone-aware")
    local = login_time.astimezone(IST)
    day = local.date() if local.time() < _TOKEN_CUTOFF else local.date() + timedelta(days=1)
    return datetime.combine(day, _TOKEN_CUTOFF, tzinfo=IST).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class KiteSession:
    """The result of a request-token exchange. Tokens are kept out of ``repr``."""

    user_id: str
    user_name: str
    email: str | None
    access_token: str = field(repr=False)
    public_token: str | None = field(repr=False)
    login_time: datetime
    expires_at: datetime


def _parse_ist(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        naive = datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return naive.replace(tzinfo=IST).astimezone(UTC)


def _text(value: object) -> str:
    return "" if value is None else str(value)


class KiteBroker:
    """A Kite Connect account. ``base_url`` points at the real API or a sandbox fake."""

    provider = BrokerProvider.ZERODHA

    def __init__(
        self,
        api_key: str,
        *,
        api_secret: str | None = None,
        access_token: str | None = None,
        base_url: str = KITE_API_URL,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.api_key = api_key
        self._api_secret = api_secret
        self._access_token = access_token
        self._http = BrokerHttpClient(
            base_url,
            provider=_PROVIDER,
            policy=policy,
            transport=transport,
            headers={"X-Kite-Version": KITE_VERSION},
            rng=rng,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> KiteBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport ---------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if not self._access_token:
            raise BrokerAuthError("Kite session is not established", provider=_PROVIDER)
        return {"Authorization": f"token {self.api_key}:{self._access_token}"}

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> Any:
        headers = self._auth_headers() if auth else None
        response = await self._http.request(
            method, path, what=what, params=params, data=data, headers=headers
        )
        body = decode_json(response, _PROVIDER)
        if not isinstance(body, dict):
            raise BrokerUnavailable(f"Kite {what}: unexpected reply", provider=_PROVIDER)
        if response.status_code < 400 and body.get("status") == "success":
            return body.get("data")
        raise _map_error(what, response.status_code, body)

    # -- session -----------------------------------------------------------------------

    async def exchange_request_token(self, request_token: str) -> KiteSession:
        """Trade the single-use request token for an access token (kept on this client)."""
        if not self._api_secret:
            raise BrokerAuthError("Kite api secret is not configured", provider=_PROVIDER)
        data = await self._call(
            "POST",
            "/session/token",
            what="session exchange",
            data={
                "api_key": self.api_key,
                "request_token": request_token,
                "checksum": kite_checksum(self.api_key, request_token, self._api_secret),
            },
            auth=False,
        )
        if not isinstance(data, dict) or not data.get("access_token"):
            raise BrokerUnavailable("Kite session exchange: unexpected reply", provider=_PROVIDER)
        login_time = _parse_ist(data.get("login_time")) or datetime.now(UTC)
        self._access_token = str(data["access_token"])
        return KiteSession(
            user_id=_text(data.get("user_id")),
            user_name=_text(data.get("user_name")),
            email=data.get("email") or None,
            access_token=self._access_token,
            public_token=data.get("public_token") or None,
            login_time=login_time,
            expires_at=kite_token_expiry(login_time),
        )

    async def invalidate_session(self) -> None:
        """Log the access token out at Kite (used on unlink)."""
        if not self._access_token:
            return
        await self._call(
            "DELETE",
            "/session/token",
            what="logout",
            params={"api_key": self.api_key, "access_token": self._access_token},
        )
        self._access_token = None

    # -- reads -------------------------------------------------------------------------

    async def balances(self) -> list[Balance]:
        """Equity segment funds: ``available`` is Kite's ``net``, ``locked`` its debits."""
        data = await self._call("GET", "/user/margins", what="margins")
        equity = data.get("equity") if isinstance(data, dict) else None
        if not isinstance(equity, dict):
            return []
        net = to_decimal(equity.get("net", 0), provider=_PROVIDER, what="net margin")
        utilised = equity.get("utilised") or {}
        debits = to_decimal(utilised.get("debits", 0), provider=_PROVIDER, what="debits")
        return [Balance(asset="INR", total=net + debits, available=net, locked=debits)]

    async def holdings(self) -> list[Position]:
        data = await self._call("GET", "/portfolio/holdings", what="holdings")
        out = []
        for row in data or []:
            qty = to_decimal(row.get("quantity", 0), provider=_PROVIDER, what="quantity")
            qty += to_decimal(row.get("t1_quantity", 0), provider=_PROVIDER, what="quantity")
            if qty == 0:
                continue
            out.append(
                Position(
                    symbol=f"{row.get('exchange')}:{row.get('tradingsymbol')}",
                    side=PositionSide.LONG if qty > 0 else PositionSide.SHORT,
                    quantity=abs(qty),
                    kind=PositionKind.HOLDING,
                    average_price=optional_decimal(
                        row.get("average_price"), provider=_PROVIDER, what="price"
                    ),
                    mark_price=optional_decimal(
                        row.get("last_price"), provider=_PROVIDER, what="price"
                    ),
                    unrealized_pnl=optional_decimal(row.get("pnl"), provider=_PROVIDER, what="pnl"),
                    currency="INR",
                    exchange=_text(row.get("exchange")) or None,
                    product=_text(row.get("product")) or "CNC",
                )
            )
        return out

    async def net_positions(self) -> list[Position]:
        """Open intraday / F&O / today's delivery positions (the ``net`` book)."""
        data = await self._call("GET", "/portfolio/positions", what="positions")
        out = []
        for row in (data or {}).get("net", []):
            qty = to_decimal(row.get("quantity", 0), provider=_PROVIDER, what="quantity")
            if qty == 0:
                continue
            out.append(
                Position(
                    symbol=f"{row.get('exchange')}:{row.get('tradingsymbol')}",
                    side=PositionSide.LONG if qty > 0 else PositionSide.SHORT,
                    quantity=abs(qty),
                    kind=PositionKind.POSITION,
                    average_price=optional_decimal(
                        row.get("average_price"), provider=_PROVIDER, what="price"
                    ),
                    mark_price=optional_decimal(
                        row.get("last_price"), provider=_PROVIDER, what="price"
                    ),
                    unrealized_pnl=optional_decimal(
                        row.get("unrealised", row.get("pnl")), provider=_PROVIDER, what="pnl"
                    ),
                    currency="INR",
                    exchange=_text(row.get("exchange")) or None,
                    product=_text(row.get("product")) or None,
                )
            )
        return out

    async def positions(self) -> list[Position]:
        """The whole portfolio: settled holdings followed by open positions."""
        return [*await self.holdings(), *await self.net_positions()]

    async def orders(self) -> list[BrokerOrder]:
        """Today's orders (Kite keeps the order book for the trading day only)."""
        data = await self._call("GET", "/orders", what="orders")
        return [_order(row) for row in data or []]

    async def order(self, order_id: str) -> BrokerOrder:
        """Current state of one order: the last entry of its history."""
        data = await self._call("GET", f"/orders/{_order_id(order_id)}", what="order history")
        if not data:
            raise BrokerRejected("Kite knows no such order", provider=_PROVIDER, field="id")
        return _order(data[-1])

    # -- writes ------------------------------------------------------------------------

    async def place_order(self, order: OrderRequest) -> BrokerOrder:
        """Place a regular order. ``symbol`` is ``EXCHANGE:TRADINGSYMBOL`` (or set
        ``options["exchange"]``); ``options`` may set ``product`` (default CNC) and
        ``validity`` (default DAY). ``client_order_id`` becomes Kite's ``tag``.
        """
        exchange, tradingsymbol = _split_symbol(order)
        if order.quantity != order.quantity.to_integral_value():
            raise DomainError("Kite quantities are whole units", field="quantity")
        form = {
            "tradingsymbol": tradingsymbol,
            "exchange": exchange,
            "transaction_type": str(order.side),
            "order_type": _ORDER_TYPES[order.order_type],
            "quantity": decimal_str(order.quantity),
            "product": order.options.get("product", "CNC"),
            "validity": order.options.get("validity", "DAY"),
        }
        if order.price is not None:
            form["price"] = decimal_str(order.price)
        if order.stop_price is not None:
            form["trigger_price"] = decimal_str(order.stop_price)
        if order.client_order_id is not None:
            if not _TAG.match(order.client_order_id):
                raise DomainError(
                    "Kite order tags are 1-20 letters, digits, '-' or '_'",
                    field="clientOrderId",
                )
            form["tag"] = order.client_order_id
        data = await self._call("POST", "/orders/regular", what="place order", data=form)
        order_id = _text((data or {}).get("order_id"))
        if not order_id:
            raise BrokerUnavailable("Kite place order: no order id in reply", provider=_PROVIDER)
        return await self.order(order_id)

    async def cancel_order(self, order_id: str, *, symbol: str | None = None) -> BrokerOrder:
        """Cancel a regular order; a cancel that already went through counts as success."""
        try:
            await self._call(
                "DELETE", f"/orders/regular/{_order_id(order_id)}", what="cancel order"
            )
        except BrokerRejected:
            current = await self.order(order_id)
            if current.status is OrderStatus.CANCELED:
                return current
            raise
        return await self.order(order_id)


def _order_id(value: str) -> str:
    if not value.isalnum():
        raise DomainError("invalid order id", field="id")
    return value


def _split_symbol(order: OrderRequest) -> tuple[str, str]:
    if ":" in order.symbol:
        exchange, _, tradingsymbol = order.symbol.partition(":")
    else:
        exchange, tradingsymbol = order.options.get("exchange", ""), order.symbol
    if not exchange or not tradingsymbol:
        raise DomainError("Kite symbols look like NSE:INFY", field="symbol")
    return exchange.upper(), tradingsymbol.upper()


def _order(row: Mapping[str, Any]) -> BrokerOrder:
    venue_status = _text(row.get("status"))
    quantity = to_decimal(row.get("quantity", 0), provider=_PROVIDER, what="quantity")
    filled = to_decimal(row.get("filled_quantity", 0), provider=_PROVIDER, what="quantity")
    status = _STATUS.get(venue_status)
    if status is None:
        status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.NEW
    price = optional_decimal(row.get("price"), provider=_PROVIDER, what="price")
    avg = optional_decimal(row.get("average_price"), provider=_PROVIDER, what="price")
    return BrokerOrder(
        order_id=_text(row.get("order_id")),
        symbol=f"{row.get('exchange')}:{row.get('tradingsymbol')}",
        side=OrderSide(_text(row.get("transaction_type")) or "BUY"),
        order_type=_ORDER_TYPES_BACK.get(_text(row.get("order_type")), OrderType.MARKET),
        status=status,
        quantity=quantity,
        filled_quantity=filled,
        price=price or None,
        average_price=avg or None,
        client_order_id=row.get("tag") or None,
        created_at=_parse_ist(row.get("order_timestamp")),
        venue_status=venue_status or None,
        status_message=row.get("status_message") or None,
    )


def _map_error(what: str, status: int, body: Mapping[str, Any]) -> Exception:
    """Kite ``error_type`` to our error classes; the message is Kite's own (never a token)."""
    error_type = _text(body.get("error_type")) or None
    message = _text(body.get("message"))[:200] or f"HTTP {status}"
    text = f"Kite {what}: {message}"
    if error_type in _AUTH_ERRORS or status == 403:
        return BrokerAuthError(text, provider=_PROVIDER, broker_code=error_type)
    if error_type in _UNAVAILABLE_ERRORS or status >= 500:
        return BrokerUnavailable(text, provider=_PROVIDER, broker_code=error_type)
    return BrokerRejected(text, provider=_PROVIDER, broker_code=error_type)

"""A local Kite Connect v3 server (Starlette) for tests and sandbox mode.

It enforces what the real API enforces and what the adapter could get wrong: the exact
SHA-256 checksum, single-use short-lived request tokens, the ``X-Kite-Version`` header,
``Authorization: token api_key:access_token`` on every call, and token expiry at 06:00 IST.
Orders fill at the configured last price; money is kept in ``Decimal``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tradegraph.brokers.sandbox.faults import FaultInjector, FaultMiddleware
from tradegraph.brokers.sandbox.server import RunningServer, serve_asgi

IST = ZoneInfo("Asia/Kolkata")
REQUEST_TOKEN_TTL = 300.0
_EXCHANGES = frozenset({"NSE", "BSE", "NFO", "BFO", "CDS", "MCX"})
_PRODUCTS = frozenset({"CNC", "MIS", "NRML", "MTF"})
_ORDER_TYPES = frozenset({"MARKET", "LIMIT", "SL", "SL-M"})


def _num(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


def _ist(ts: float) -> str:
    return datetime.fromtimestamp(ts, IST).strftime("%Y-%m-%d %H:%M:%S")


def _expiry(login_ts: float) -> float:
    """06:00 IST after the login (the same morning when logging in before 06:00)."""
    local = datetime.fromtimestamp(login_ts, IST)
    day = local.date() if local.time() < dtime(6) else local.date() + timedelta(days=1)
    return datetime.combine(day, dtime(6), tzinfo=IST).timestamp()


class KiteError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass
class KiteAppConfig:
    api_key: str
    api_secret: str
    redirect_url: str


@dataclass
class KiteUser:
    user_id: str
    user_name: str
    email: str
    cash: Decimal
    holdings: dict[tuple[str, str], tuple[Decimal, Decimal]] = field(default_factory=dict)
    positions: dict[tuple[str, str, str], tuple[Decimal, Decimal]] = field(default_factory=dict)
    orders: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class _Session:
    api_key: str
    user_id: str
    expires_at: float


class FakeKite:
    """State and HTTP app of the fake. ``clock`` is injectable so expiry can be tested."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        prices: dict[str, Decimal] | None = None,
        default_user: str | None = None,
    ) -> None:
        self.clock = clock
        self.apps: dict[str, KiteAppConfig] = {}
        self.users: dict[str, KiteUser] = {}
        self.prices: dict[str, Decimal] = dict(prices or {})
        self.default_user = default_user
        self.faults = FaultInjector()
        self._request_tokens: dict[str, tuple[str, str, float]] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._order_ids = itertools.count(240_101_000_000_001)
        self._running: RunningServer | None = None
        routes = [
            Route("/connect/login", self._login, methods=["GET"]),
            Route("/session/token", self._session_token, methods=["POST", "DELETE"]),
            Route("/user/margins", self._margins, methods=["GET"]),
            Route("/portfolio/holdings", self._holdings, methods=["GET"]),
            Route("/portfolio/positions", self._positions, methods=["GET"]),
            Route("/orders", self._orders, methods=["GET"]),
            Route("/orders/{order_id}", self._order_history, methods=["GET"]),
            Route("/orders/regular", self._place, methods=["POST"]),
            Route("/orders/regular/{order_id}", self._cancel, methods=["DELETE"]),
        ]
        self.app = FaultMiddleware(Starlette(routes=routes), self.faults, body=_fault_body)

    # -- setup (tests and sandbox seeding) ---------------------------------------------

    def register_app(
        self, api_key: str, api_secret: str, redirect_url: str = "http://127.0.0.1/callback"
    ) -> None:
        self.apps[api_key] = KiteAppConfig(api_key, api_secret, redirect_url)

    def add_user(
        self,
        user_id: str,
        *,
        cash: Decimal = Decimal("100000"),
        user_name: str = "Sandbox Trader",
        email: str | None = None,
    ) -> KiteUser:
        user = KiteUser(user_id, user_name, email or f"{user_id.lower()}@example.com", cash)
        self.users[user_id] = user
        return user

    def add_holding(self, user_id: str, symbol: str, quantity: int, average: Decimal) -> None:
        exchange, _, tradingsymbol = symbol.partition(":")
        self.users[user_id].holdings[(exchange, tradingsymbol)] = (Decimal(quantity), average)

    def issue_request_token(self, api_key: str, user_id: str) -> str:
        """What a successful login at kite.zerodha.com would hand to the redirect URL."""
        if api_key not in self.apps or user_id not in self.users:
            raise KeyError("unknown app or user")
        token = secrets.token_hex(16)
        self._request_tokens[token] = (api_key, user_id, self.clock())
        return token

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)

    async def start(self) -> str:
        self._running = await serve_asgi(self.app)
        return self._running.base_url

    async def stop(self) -> None:
        self.faults.release()
        if self._running is not None:
            await self._running.stop()
            self._running = None

    async def __aenter__(self) -> FakeKite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._running is None:
            raise RuntimeError("fake Kite is not started")
        return self._running.base_url

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _ok(data: object) -> JSONResponse:
        return JSONResponse({"status": "success", "data": data})

    @staticmethod
    def _fail(exc: KiteError) -> JSONResponse:
        return JSONResponse(
            {"status": "error", "message": exc.message, "data": None, "error_type": exc.error_type},
            status_code=exc.status,
        )

    def _check_version(self, request: Request) -> None:
        if request.headers.get("x-kite-version") != "3":
            raise KiteError(400, "InputException", "Missing or invalid `X-Kite-Version` header.")

    def _user(self, request: Request) -> KiteUser:
        self._check_version(request)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        api_key, _, access_token = credentials.partition(":")
        session = self._sessions.get((api_key, access_token))
        if scheme != "token" or session is None:
            raise KiteError(403, "TokenException", "Incorrect `api_key` or `access_token`.")
        if self.clock() >= session.expires_at:
            del self._sessions[(api_key, access_token)]
            raise KiteError(403, "TokenException", "Token is invalid or has expired.")
        return self.users[session.user_id]

    async def _form(self, request: Request) -> dict[str, str]:
        body = (await request.body()).decode()
        return dict(parse_qsl(body, keep_blank_values=True))

    # -- routes ------------------------------------------------------------------------

    async def _login(self, request: Request) -> Response:
        """Sandbox login page: logs the default user in and redirects like Kite does."""
        app = self.apps.get(request.query_params.get("api_key", ""))
        if app is None or request.query_params.get("v") != "3" or self.default_user is None:
            return JSONResponse({"status": "error", "message": "Invalid api_key"}, 400)
        token = self.issue_request_token(app.api_key, self.default_user)
        params = {"action": "login", "type": "login", "status": "success"}
        params["request_token"] = token
        query = urlencode(params)
        extra = request.query_params.get("redirect_params")
        if extra:
            query = f"{query}&{extra}"
        sep = "&" if "?" in app.redirect_url else "?"
        return RedirectResponse(f"{app.redirect_url}{sep}{query}", status_code=302)

    async def _session_token(self, request: Request) -> Response:
        try:
            self._check_version(request)
            if request.method == "DELETE":
                key = (
                    request.query_params.get("api_key", ""),
                    request.query_params.get("access_token", ""),
                )
                if self._sessions.pop(key, None) is None:
                    raise KiteError(403, "TokenException", "Token is invalid or has expired.")
                return self._ok(True)
            form = await self._form(request)
            app = self.apps.get(form.get("api_key", ""))
            if app is None:
                raise KiteError(400, "InputException", "Invalid `api_key`.")
            request_token = form.get("request_token", "")
            grant = self._request_tokens.pop(request_token, None)  # single use, even on failure
            if grant is None or grant[0] != app.api_key:
                raise KiteError(403, "TokenException", "Token is invalid or has expired.")
            if self.clock() - grant[2] > REQUEST_TOKEN_TTL:
                raise KiteError(403, "TokenException", "Token is invalid or has expired.")
            expected = hashlib.sha256(
                (app.api_key + request_token + app.api_secret).encode()
            ).hexdigest()
            if not hmac.compare_digest(expected, form.get("checksum", "")):
                raise KiteError(403, "TokenException", "Invalid `checksum`.")
            user = self.users[grant[1]]
            now = self.clock()
            access_token = secrets.token_hex(16)
            self._sessions[(app.api_key, access_token)] = _Session(
                app.api_key, user.user_id, _expiry(now)
            )
            return self._ok(
                {
                    "user_id": user.user_id,
                    "user_name": user.user_name,
                    "user_shortname": user.user_name.split()[0],
                    "email": user.email,
                    "user_type": "individual",
                    "broker": "ZERODHA",
                    "exchanges": sorted(_EXCHANGES),
                    "products": sorted(_PRODUCTS),
                    "order_types": sorted(_ORDER_TYPES),
                    "api_key": app.api_key,
                    "access_token": access_token,
                    "public_token": secrets.token_hex(8),
                    "refresh_token": "",
                    "login_time": _ist(now),
                }
            )
        except KiteError as exc:
            return self._fail(exc)

    async def _margins(self, request: Request) -> Response:
        try:
            user = self._user(request)
        except KiteError as exc:
            return self._fail(exc)
        debits = sum(
            (qty * avg for qty, avg in user.positions.values() if qty > 0),
            Decimal(0),
        )
        equity = {
            "enabled": True,
            "net": _num(user.cash),
            "available": {"cash": _num(user.cash + debits), "live_balance": _num(user.cash)},
            "utilised": {"debits": _num(debits)},
        }
        return self._ok({"equity": equity, "commodity": {"enabled": False, "net": 0}})

    async def _holdings(self, request: Request) -> Response:
        try:
            user = self._user(request)
        except KiteError as exc:
            return self._fail(exc)
        rows = []
        for (exchange, symbol), (qty, avg) in user.holdings.items():
            last = self.prices.get(f"{exchange}:{symbol}", avg)
            rows.append(
                {
                    "tradingsymbol": symbol,
                    "exchange": exchange,
                    "isin": "INE000000000",
                    "product": "CNC",
                    "quantity": _num(qty),
                    "t1_quantity": 0,
                    "average_price": _num(avg),
                    "last_price": _num(last),
                    "pnl": _num((last - avg) * qty),
                }
            )
        return self._ok(rows)

    async def _positions(self, request: Request) -> Response:
        try:
            user = self._user(request)
        except KiteError as exc:
            return self._fail(exc)
        rows = []
        for (exchange, symbol, product), (qty, avg) in user.positions.items():
            last = self.prices.get(f"{exchange}:{symbol}", avg)
            pnl = (last - avg) * qty
            rows.append(
                {
                    "tradingsymbol": symbol,
                    "exchange": exchange,
                    "product": product,
                    "quantity": _num(qty),
                    "average_price": _num(avg),
                    "last_price": _num(last),
                    "pnl": _num(pnl),
                    "unrealised": _num(pnl),
                    "realised": 0,
                }
            )
        return self._ok({"net": rows, "day": rows})

    async def _orders(self, request: Request) -> Response:
        try:
            user = self._user(request)
        except KiteError as exc:
            return self._fail(exc)
        return self._ok([history[-1] for history in user.orders.values()])

    async def _order_history(self, request: Request) -> Response:
        try:
            user = self._user(request)
            history = user.orders.get(request.path_params["order_id"])
            if history is None:
                raise KiteError(400, "OrderException", "Couldn't find that `order_id`.")
        except KiteError as exc:
            return self._fail(exc)
        return self._ok(history)

    async def _place(self, request: Request) -> Response:
        try:
            user = self._user(request)
            form = await self._form(request)
            order = self._validate(form)
        except KiteError as exc:
            return self._fail(exc)
        order_id = str(next(self._order_ids))
        order["order_id"] = order_id
        order["order_timestamp"] = _ist(self.clock())
        history = [dict(order, status="PUT ORDER REQ RECEIVED")]
        user.orders[order_id] = history
        self._execute(user, order, history)
        return self._ok({"order_id": order_id})

    def _validate(self, form: dict[str, str]) -> dict[str, Any]:
        required = ("tradingsymbol", "exchange", "transaction_type", "order_type", "quantity")
        for name in (*required, "product"):
            if not form.get(name):
                raise KiteError(400, "InputException", f"Missing `{name}`.")
        if form["exchange"] not in _EXCHANGES:
            raise KiteError(400, "InputException", "Invalid `exchange`.")
        if form["transaction_type"] not in ("BUY", "SELL"):
            raise KiteError(400, "InputException", "Invalid `transaction_type`.")
        if form["order_type"] not in _ORDER_TYPES:
            raise KiteError(400, "InputException", "Invalid `order_type`.")
        if form["product"] not in _PRODUCTS:
            raise KiteError(400, "InputException", "Invalid `product`.")
        if f"{form['exchange']}:{form['tradingsymbol']}" not in self.prices:
            raise KiteError(400, "InputException", "Invalid `tradingsymbol`.")
        if not form["quantity"].isdigit() or int(form["quantity"]) <= 0:
            raise KiteError(400, "InputException", "Invalid `quantity`.")
        try:
            price = Decimal(form.get("price") or "0")
            trigger = Decimal(form.get("trigger_price") or "0")
        except InvalidOperation:
            raise KiteError(400, "InputException", "Invalid `price`.") from None
        if form["order_type"] in ("LIMIT", "SL") and price <= 0:
            raise KiteError(400, "InputException", "Invalid `price`.")
        if form["order_type"] in ("SL", "SL-M") and trigger <= 0:
            raise KiteError(400, "InputException", "Invalid `trigger_price`.")
        return {
            "variety": "regular",
            "tradingsymbol": form["tradingsymbol"],
            "exchange": form["exchange"],
            "transaction_type": form["transaction_type"],
            "order_type": form["order_type"],
            "product": form["product"],
            "validity": form.get("validity") or "DAY",
            "quantity": int(form["quantity"]),
            "price": _num(price),
            "trigger_price": _num(trigger),
            "filled_quantity": 0,
            "pending_quantity": int(form["quantity"]),
            "average_price": 0,
            "tag": form.get("tag") or None,
            "status_message": None,
        }

    def _execute(
        self, user: KiteUser, order: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        symbol = f"{order['exchange']}:{order['tradingsymbol']}"
        last = self.prices[symbol]
        qty = Decimal(order["quantity"])
        buy = order["transaction_type"] == "BUY"
        limit = Decimal(str(order["price"]))
        kind = order["order_type"]
        if kind in ("SL", "SL-M"):
            history.append(dict(order, status="TRIGGER PENDING"))
            return
        marketable = kind == "MARKET" or (limit >= last if buy else limit <= last)
        if not marketable:
            history.append(dict(order, status="OPEN"))
            return
        key = (order["exchange"], order["tradingsymbol"], order["product"])
        held, avg = user.positions.get(key, (Decimal(0), Decimal(0)))
        if buy and qty * last > user.cash:
            history.append(
                dict(
                    order,
                    status="REJECTED",
                    status_message="Insufficient funds. Required margin is higher than available.",
                )
            )
            return
        if not buy and order["product"] == "CNC":
            owned = user.holdings.get(key[:2], (Decimal(0), Decimal(0)))[0] + held
            if owned < qty:
                history.append(
                    dict(order, status="REJECTED", status_message="Insufficient holdings.")
                )
                return
        if buy:
            user.cash -= qty * last
            new_qty = held + qty
            avg = (held * avg + qty * last) / new_qty if new_qty else Decimal(0)
        else:
            user.cash += qty * last
            new_qty = held - qty
        user.positions[key] = (new_qty, avg.quantize(Decimal("0.01")))
        history.append(
            dict(
                order,
                status="COMPLETE",
                filled_quantity=order["quantity"],
                pending_quantity=0,
                average_price=_num(last),
            )
        )

    async def _cancel(self, request: Request) -> Response:
        try:
            user = self._user(request)
            order_id = request.path_params["order_id"]
            history = user.orders.get(order_id)
            if history is None:
                raise KiteError(400, "OrderException", "Couldn't find that `order_id`.")
            if history[-1]["status"] not in ("OPEN", "TRIGGER PENDING"):
                raise KiteError(
                    400,
                    "OrderException",
                    f"Order cannot be cancelled as it is {history[-1]['status'].lower()}.",
                )
        except KiteError as exc:
            return self._fail(exc)
        history.append(dict(history[-1], status="CANCELLED", pending_quantity=0))
        return self._ok({"order_id": order_id})


def _fault_body(status: int) -> bytes:
    if status == 429:
        message, error_type = "Too many requests", "NetworkException"
    else:
        message, error_type = "Something went wrong. Please try again.", "GeneralException"
    return json.dumps(
        {"status": "error", "message": message, "data": None, "error_type": error_type}
    ).encode()

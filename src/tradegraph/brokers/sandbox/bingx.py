"""A local BingX open API (Starlette) for tests and sandbox mode.

Every private endpoint recomputes the HMAC-SHA256 signature over the received parameters
(sorted by key, signature excluded) with the secret it holds for ``X-BX-APIKEY`` and checks
the timestamp window, answering with BingX's own codes, so a wrong secret or a skewed
clock fails here exactly as it would there. Deposit history and referral relations are
plain data that tests set.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tradegraph.brokers.sandbox.faults import FaultInjector, FaultMiddleware
from tradegraph.brokers.sandbox.server import RunningServer, serve_asgi

DEFAULT_RECV_WINDOW_MS = 5000
FUTURE_TOLERANCE_MS = 1000
LEVERAGE = Decimal(10)


class BingXError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass
class FakeBingXAccount:
    api_key: str
    secret: str
    uid: str
    balance: Decimal
    positions: dict[tuple[str, str], tuple[Decimal, Decimal]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    deposits: list[dict[str, Any]] = field(default_factory=list)


def _s(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class FakeBingX:
    """State and HTTP app of the fake. ``clock`` (seconds) drives the timestamp window."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        prices: dict[str, Decimal] | None = None,
        recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
    ) -> None:
        self.clock = clock
        self.prices: dict[str, Decimal] = dict(prices or {})
        self.recv_window_ms = recv_window_ms
        self.accounts: dict[str, FakeBingXAccount] = {}
        self.invites: dict[str, dict[str, Any]] = {}
        self.faults = FaultInjector()
        self._order_ids = itertools.count(1_735_950_529_123_455_001)
        self._running: RunningServer | None = None
        routes = [
            Route("/openApi/swap/v2/user/balance", self._balance, methods=["GET"]),
            Route("/openApi/swap/v2/user/positions", self._positions, methods=["GET"]),
            Route("/openApi/swap/v2/trade/order", self._order, methods=["GET", "POST", "DELETE"]),
            Route("/openApi/api/v3/capital/deposit/hisrec", self._deposits, methods=["GET"]),
            Route("/openApi/agent/v1/account/inviteRelationCheck", self._invite, methods=["GET"]),
        ]
        self.app = FaultMiddleware(Starlette(routes=routes), self.faults, body=_fault_body)

    # -- setup -------------------------------------------------------------------------

    def add_account(
        self, api_key: str, secret: str, *, uid: str, balance: Decimal = Decimal("1000")
    ) -> FakeBingXAccount:
        account = FakeBingXAccount(api_key, secret, uid, balance)
        self.accounts[api_key] = account
        return account

    def add_deposit(
        self,
        api_key: str,
        amount: Decimal,
        *,
        coin: str = "USDT",
        status: int = 1,
        at_ms: int | None = None,
        network: str = "TRC20",
    ) -> None:
        account = self.accounts[api_key]
        at = at_ms if at_ms is not None else int(self.clock() * 1000)
        account.deposits.append(
            {
                "amount": _s(amount),
                "coin": coin,
                "network": network,
                "status": status,
                "address": "T" + "0" * 33,
                "addressTag": "",
                "txId": hashlib.sha256(f"{api_key}{at}{amount}".encode()).hexdigest(),
                "insertTime": at,
                "transferType": 0,
                "confirmTimes": "1/1",
            }
        )

    def set_invite(
        self,
        uid: str,
        *,
        inviter_uid: str,
        direct: bool = True,
        deposit: bool = False,
        kyc: bool = False,
        trade: bool = False,
        registered_ms: int = 1_700_000_000_000,
    ) -> None:
        """Record that ``uid`` signed up through ``inviter_uid``'s referral link."""
        self.invites[uid] = {
            "inviter": inviter_uid,
            "directInvitation": direct,
            "deposit": deposit,
            "kycResult": kyc,
            "trade": trade,
            "registerDateTime": registered_ms,
        }

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

    async def __aenter__(self) -> FakeBingX:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._running is None:
            raise RuntimeError("fake BingX is not started")
        return self._running.base_url

    # -- plumbing ----------------------------------------------------------------------

    async def _authenticate(self, request: Request) -> tuple[FakeBingXAccount, dict[str, str]]:
        """Check key, timestamp window and signature exactly as the docs describe."""
        account = self.accounts.get(request.headers.get("x-bx-apikey", ""))
        if account is None:
            raise BingXError(100413, "Incorrect apiKey")
        params = dict(parse_qsl(request.url.query, keep_blank_values=True))
        if request.headers.get("content-type", "").startswith("application/x-www-form"):
            params.update(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        signature = params.pop("signature", "")
        try:
            timestamp = int(params.get("timestamp", ""))
            window = int(params.get("recvWindow", self.recv_window_ms))
        except ValueError:
            raise BingXError(100421, "Null timestamp or timestamp mismatch") from None
        now_ms = int(self.clock() * 1000)
        if timestamp > now_ms + FUTURE_TOLERANCE_MS or now_ms - timestamp > window:
            raise BingXError(100421, "Null timestamp or timestamp mismatch")
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
        expected = hmac.new(account.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise BingXError(100001, "Signature verification failed")
        return account, params

    @staticmethod
    def _ok(data: object) -> JSONResponse:
        return JSONResponse({"code": 0, "msg": "", "data": data})

    @staticmethod
    def _fail(exc: BingXError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "msg": exc.msg, "debugMsg": ""})

    def _mark(self, symbol: str) -> Decimal:
        price = self.prices.get(symbol)
        if price is None:
            raise BingXError(80014, f"Invalid parameters, symbol {symbol} does not exist")
        return price

    def _used_margin(self, account: FakeBingXAccount) -> Decimal:
        return sum((qty * avg / LEVERAGE for qty, avg in account.positions.values()), Decimal(0))

    # -- routes ------------------------------------------------------------------------

    async def _balance(self, request: Request) -> Response:
        try:
            account, _ = await self._authenticate(request)
        except BingXError as exc:
            return self._fail(exc)
        used = self._used_margin(account)
        unrealized = sum(
            (
                (self.prices.get(sym, avg) - avg) * qty * (1 if side == "LONG" else -1)
                for (sym, side), (qty, avg) in account.positions.items()
            ),
            Decimal(0),
        )
        return self._ok(
            {
                "balance": {
                    "userId": account.uid,
                    "asset": "USDT",
                    "balance": _s(account.balance),
                    "equity": _s(account.balance + unrealized),
                    "unrealizedProfit": _s(unrealized),
                    "realisedProfit": "0",
                    "availableMargin": _s(account.balance - used),
                    "usedMargin": _s(used),
                    "freezedMargin": "0",
                }
            }
        )

    async def _positions(self, request: Request) -> Response:
        try:
            account, params = await self._authenticate(request)
        except BingXError as exc:
            return self._fail(exc)
        rows = []
        for (symbol, side), (qty, avg) in account.positions.items():
            if params.get("symbol") and params["symbol"] != symbol:
                continue
            mark = self.prices.get(symbol, avg)
            sign = 1 if side == "LONG" else -1
            rows.append(
                {
                    "symbol": symbol,
                    "positionId": hashlib.sha1(  # noqa: S324 - an id, not security
                        f"{account.uid}{symbol}{side}".encode()
                    ).hexdigest()[:18],
                    "positionSide": side,
                    "isolated": False,
                    "positionAmt": _s(qty),
                    "availableAmt": _s(qty),
                    "unrealizedProfit": _s((mark - avg) * qty * sign),
                    "realisedProfit": "0",
                    "initialMargin": _s(qty * avg / LEVERAGE),
                    "avgPrice": _s(avg),
                    "markPrice": _s(mark),
                    "leverage": int(LEVERAGE),
                    "currency": "USDT",
                }
            )
        return self._ok(rows)

    async def _order(self, request: Request) -> Response:
        try:
            account, params = await self._authenticate(request)
            if request.method == "POST":
                return self._ok({"order": self._place(account, params)})
            order = self._find(account, params)
            if request.method == "DELETE":
                if order["status"] not in ("NEW", "PENDING"):
                    raise BingXError(80018, "order is already filled or canceled")
                order["status"] = "CANCELLED"
                order["updateTime"] = int(self.clock() * 1000)
            return self._ok({"order": order})
        except BingXError as exc:
            return self._fail(exc)

    def _find(self, account: FakeBingXAccount, params: dict[str, str]) -> dict[str, Any]:
        order = account.orders.get(params.get("orderId", ""))
        if order is None and params.get("clientOrderID"):
            order = next(
                (
                    o
                    for o in account.orders.values()
                    if o["clientOrderId"] == params["clientOrderID"]
                ),
                None,
            )
        if order is None or order["symbol"] != params.get("symbol"):
            raise BingXError(80016, "order not exist")
        return order

    def _place(self, account: FakeBingXAccount, params: dict[str, str]) -> dict[str, Any]:
        for name in ("symbol", "side", "type", "quantity"):
            if not params.get(name):
                raise BingXError(109400, f"Invalid parameters, {name} is required")
        symbol, side, kind = params["symbol"], params["side"], params["type"]
        position_side = params.get("positionSide", "LONG")
        if side not in ("BUY", "SELL") or position_side not in ("LONG", "SHORT"):
            raise BingXError(109400, "Invalid parameters, side or positionSide")
        if kind not in ("MARKET", "LIMIT", "STOP", "STOP_MARKET"):
            raise BingXError(109400, "Invalid parameters, type")
        try:
            qty = Decimal(params["quantity"])
            price = Decimal(params.get("price") or "0")
        except InvalidOperation:
            raise BingXError(109400, "Invalid parameters, quantity or price") from None
        if qty <= 0 or (kind == "LIMIT" and price <= 0):
            raise BingXError(109400, "Invalid parameters, quantity or price")
        mark = self._mark(symbol)
        opening = (side == "BUY") == (position_side == "LONG")
        key = (symbol, position_side)
        held, avg = account.positions.get(key, (Decimal(0), Decimal(0)))
        if not opening and qty > held:
            raise BingXError(80017, "position not exist or quantity exceeds position")
        if opening:
            need = qty * mark / LEVERAGE
            if need > account.balance - self._used_margin(account):
                raise BingXError(101204, "Insufficient margin")
        client_id = params.get("clientOrderID", "")
        if client_id and any(o["clientOrderId"] == client_id for o in account.orders.values()):
            raise BingXError(80001, "clientOrderID already exists")
        order_id = str(next(self._order_ids))
        now = int(self.clock() * 1000)
        marketable = kind == "MARKET" or (
            kind == "LIMIT" and (price >= mark if side == "BUY" else price <= mark)
        )
        order = {
            "symbol": symbol,
            "orderId": int(order_id),
            "side": side,
            "positionSide": position_side,
            "type": kind,
            "origQty": _s(qty),
            "price": _s(price),
            "executedQty": "0",
            "avgPrice": "0",
            "cumQuote": "0",
            "stopPrice": params.get("stopPrice", ""),
            "status": "NEW",
            "time": now,
            "updateTime": now,
            "clientOrderId": client_id,
        }
        if marketable:
            if opening:
                new_qty = held + qty
                account.positions[key] = (new_qty, (held * avg + qty * mark) / new_qty)
            else:
                sign = 1 if position_side == "LONG" else -1
                account.balance += (mark - avg) * qty * sign
                if held == qty:
                    del account.positions[key]
                else:
                    account.positions[key] = (held - qty, avg)
            order.update(
                status="FILLED",
                executedQty=_s(qty),
                avgPrice=_s(mark),
                cumQuote=_s(qty * mark),
            )
        account.orders[order_id] = order
        return {
            "symbol": symbol,
            "orderId": int(order_id),
            "side": side,
            "positionSide": position_side,
            "type": kind,
            "clientOrderID": client_id,
        }

    async def _deposits(self, request: Request) -> Response:
        try:
            account, params = await self._authenticate(request)
            start = int(params.get("startTime", 0))
            end = int(params.get("endTime", 2**62))
            limit = int(params.get("limit", 1000))
        except BingXError as exc:
            return self._fail(exc)
        except ValueError:
            return self._fail(BingXError(109400, "Invalid parameters"))
        rows = [
            d
            for d in account.deposits
            if start <= d["insertTime"] <= end
            and (not params.get("coin") or d["coin"] == params["coin"])
            and ("status" not in params or str(d["status"]) == params["status"])
        ]
        rows.sort(key=lambda d: d["insertTime"], reverse=True)
        return self._ok(rows[:limit])

    async def _invite(self, request: Request) -> Response:
        try:
            account, params = await self._authenticate(request)
            uid = params.get("uid", "")
            if not uid.isdigit():
                raise BingXError(109400, "Invalid parameters, uid")
        except BingXError as exc:
            return self._fail(exc)
        relation = self.invites.get(uid)
        if relation is None:
            return self._ok({"uid": int(uid), "existInviter": False, "inviteResult": False})
        return self._ok(
            {
                "uid": int(uid),
                "existInviter": True,
                "inviteResult": relation["inviter"] == account.uid,
                "directInvitation": relation["directInvitation"],
                "inviterSid": int(relation["inviter"]),
                "registerDateTime": relation["registerDateTime"],
                "deposit": relation["deposit"],
                "kycResult": relation["kycResult"],
                "trade": relation["trade"],
            }
        )


def _fault_body(status: int) -> bytes:
    if status == 429:
        return json.dumps({"code": 100410, "msg": "The frequency limit has been reached"}).encode()
    return json.dumps({"code": 100500, "msg": "Internal system error"}).encode()

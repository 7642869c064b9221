"""Deriv adapter: the legacy OAuth redirect and the websocket API (``/websockets/v3``).

Deriv speaks JSON over one websocket; replies are matched to requests by ``req_id``, and
authorization belongs to the connection, so after a dropped connection the client
reconnects and re-authorizes before anything else. Reads are retried across reconnects;
``buy``/``sell`` are not (a repeated buy would buy twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import parse_qs, urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from tradegraph.brokers.adapters.retry import RetryableFailure, RetryPolicy, call_with_retries
from tradegraph.brokers.protocol import (
    Balance,
    BrokerAuthError,
    BrokerOrder,
    BrokerProvider,
    BrokerRejected,
    BrokerUnavailable,
    Contract,
    ContractDirection,
    ContractStatus,
    OrderRequest,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    PositionKind,
    PositionSide,
    optional_decimal,
    to_decimal,
)
from tradegraph.errors import DomainError

DERIV_OAUTH_URL = "https://oauth.deriv.com/oauth2/authorize"
DERIV_WS_URL = "wss://ws.derivws.com/websockets/v3"
_PROVIDER = BrokerProvider.DERIV

DurationUnit = Literal["t", "s", "m", "h", "d"]
DURATION_UNITS: frozenset[str] = frozenset({"t", "s", "m", "h", "d"})
GRANULARITIES = frozenset({60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400})
_CONTRACT_TYPES = {ContractDirection.RISE: "CALL", ContractDirection.FALL: "PUT"}
_DIRECTIONS = {v: k for k, v in _CONTRACT_TYPES.items()}
_AUTH_CODES = frozenset(
    {"InvalidToken", "AuthorizationRequired", "InvalidAppID", "PermissionDenied", "DisabledClient"}
)
_UNAVAILABLE_CODES = frozenset({"ServiceUnavailable", "InternalServerError", "WrongResponse"})
_ACCOUNT = re.compile(r"^[A-Za-z]{2,6}\d+$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{2,128}$")


# -- OAuth ---------------------------------------------------------------------------------


def deriv_authorize_url(
    app_id: str,
    *,
    language: str | None = None,
    affiliate_token: str | None = None,
    utm_campaign: str | None = None,
    base_url: str = DERIV_OAUTH_URL,
) -> str:
    """The legacy OAuth page; Deriv redirects to the URL registered for ``app_id``."""
    if not app_id.isdigit():
        raise ValueError("Deriv app ids are numeric")
    query = {"app_id": app_id}
    if language:
        query["l"] = language
    if affiliate_token:
        query["affiliate_token"] = affiliate_token
    if utm_campaign:
        query["utm_campaign"] = utm_campaign
    return f"{base_url}?{urlencode(query)}"


class DerivOAuthAccount(NamedTuple):
    """One ``(account, token, currency)`` from the redirect; the token stays out of repr."""

    account: str
    token: str
    currency: str | None

    def __repr__(self) -> str:
        return f"DerivOAuthAccount(account={self.account!r}, currency={self.currency!r})"


def parse_deriv_redirect(
    query: str | Mapping[str, str | Sequence[str]],
) -> list[DerivOAuthAccount]:
    """Read ``acct1/token1/cur1, acct2/token2/cur2, ...`` from the OAuth callback.

    Accepts a full URL, a bare query string or a parsed mapping. Numbering stops at the
    first missing ``acctN``; an account without a well-formed token is an error, since
    silently dropping it would link fewer accounts than the user approved.
    """
    if isinstance(query, str):
        raw = urlsplit(query).query if "?" in query else query.lstrip("?")
        items: dict[str, str] = {k: v[0] for k, v in parse_qs(raw).items()}
    else:
        items = {k: (v if isinstance(v, str) else (v[0] if v else "")) for k, v in query.items()}
    accounts: list[DerivOAuthAccount] = []
    seen: set[str] = set()
    for n in itertools.count(1):
        account = items.get(f"acct{n}", "").strip()
        if not account:
            break
        if not _ACCOUNT.match(account):
            raise BrokerAuthError(
                f"Deriv redirect has a malformed acct{n}", provider=_PROVIDER, field=f"acct{n}"
            )
        token = items.get(f"token{n}", "").strip()
        if not _TOKEN.match(token):
            raise BrokerAuthError(
                f"Deriv redirect has no valid token{n}", provider=_PROVIDER, field=f"token{n}"
            )
        currency = items.get(f"cur{n}", "").strip().upper() or None
        if account not in seen:
            seen.add(account)
            accounts.append(DerivOAuthAccount(account, token, currency))
    if not accounts:
        raise BrokerAuthError("Deriv redirect carries no accounts", provider=_PROVIDER)
    return accounts


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DerivAccount:
    loginid: str
    currency: str | None
    is_virtual: bool


@dataclass(frozen=True, slots=True)
class DerivAuthorization:
    """What ``authorize`` reports about the token's account and its siblings."""

    loginid: str
    currency: str
    balance: Decimal
    is_virtual: bool
    email: str | None
    accounts: list[DerivAccount] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DerivTick:
    time: datetime
    price: Decimal


@dataclass(frozen=True, slots=True)
class DerivCandle:
    time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


@dataclass(frozen=True, slots=True)
class DerivProposal:
    """A priced, not yet bought contract; ``proposal_id`` is what ``buy`` takes."""

    proposal_id: str
    symbol: str
    direction: ContractDirection
    currency: str
    ask_price: Decimal
    payout: Decimal
    spot: Decimal | None
    description: str | None


@dataclass(frozen=True, slots=True)
class DerivSale:
    contract_id: str
    sold_for: Decimal
    balance_after: Decimal | None
    transaction_id: str | None


def _epoch(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError):
        return None


def _dec(value: object, what: str) -> Decimal:
    return to_decimal(value, provider=_PROVIDER, what=what)


def _json_number(value: Decimal, name: str) -> int | float:
    """Deriv wants JSON numbers; only send ones a float carries exactly in its repr."""
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(repr(as_float)) != value:
        raise DomainError(f"{name} has too many digits", field=name)
    return as_float


def _error(what: str, error: Mapping[str, Any]) -> Exception:
    code = str(error.get("code") or "UnknownError")
    message = f"Deriv {what}: {str(error.get('message') or code)[:200]}"
    if code in _AUTH_CODES:
        return BrokerAuthError(message, provider=_PROVIDER, broker_code=code)
    if code in _UNAVAILABLE_CODES or code == "RateLimit":
        return BrokerUnavailable(message, provider=_PROVIDER, broker_code=code)
    return BrokerRejected(message, provider=_PROVIDER, broker_code=code)


# -- websocket client ----------------------------------------------------------------------


class _ConnectionLost(Exception):
    pass


class _Connection:
    """One websocket plus the replies it still owes; fails them all if it drops."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read(), name="deriv-ws-reader")

    @property
    def open(self) -> bool:
        return not self.reader.done()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    message = json.loads(raw, parse_float=Decimal)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                future = self.pending.pop(message.get("req_id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except ConnectionClosed:
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(_ConnectionLost())
            self.pending.clear()

    async def request(self, req_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.open:
            raise _ConnectionLost()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[req_id] = future
        try:
            await self.ws.send(json.dumps({**payload, "req_id": req_id}))
        except ConnectionClosed:
            self.pending.pop(req_id, None)
            raise _ConnectionLost() from None
        try:
            return await future
        finally:
            self.pending.pop(req_id, None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), timeout=2)
        self.reader.cancel()
        await asyncio.wait([self.reader], timeout=2)


class DerivClient:
    """A Deriv websocket session: connects lazily, reconnects and re-authorizes on demand."""

    def __init__(
        self,
        app_id: str,
        *,
        url: str = DERIV_WS_URL,
        language: str = "EN",
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        proxy: str | Literal[True] | None = True,
    ) -> None:
        sep = "&" if "?" in url else "?"
        self._url = f"{url}{sep}{urlencode({'app_id': app_id, 'l': language})}"
        # ``True`` follows the environment's proxy settings; loopback (the sandbox) never
        # goes through a proxy.
        host = urlsplit(url).hostname or ""
        self._proxy = None if host in ("127.0.0.1", "localhost", "::1") else proxy
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self.authorization: DerivAuthorization | None = None
        self.connections_opened = 0

    async def __aenter__(self) -> DerivClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _connection(self) -> _Connection:
        async with self._lock:
            if self._conn is not None and self._conn.open:
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            try:
                ws = await connect(
                    self._url,
                    open_timeout=self.policy.connect_timeout,
                    close_timeout=2,
                    max_size=2**22,
                    proxy=self._proxy,
                )
            except (OSError, WebSocketException, TimeoutError) as exc:
                raise RetryableFailure(
                    f"could not connect ({type(exc).__name__})", request_sent=False
                ) from None
            conn = _Connection(ws)
            self.connections_opened += 1
            try:
                if self._token is not None:
                    # Authorization is per connection: restore it before anyone uses it.
                    try:
                        reply = await conn.request(next(self._ids), {"authorize": self._token})
                    except _ConnectionLost:
                        raise RetryableFailure("connection dropped", request_sent=False) from None
                    if "error" in reply:
                        raise _error("authorize", reply["error"])
            except BaseException:
                # Includes cancellation by the attempt timeout: never leak the socket.
                await asyncio.shield(conn.close())
                raise
            self._conn = conn
            return conn

    async def call(
        self, payload: dict[str, Any], *, what: str, idempotent: bool = True
    ) -> dict[str, Any]:
        """Send one request and return the whole reply, retrying within the policy."""

        async def attempt() -> dict[str, Any]:
            conn = await self._connection()
            try:
                reply = await conn.request(next(self._ids), payload)
            except _ConnectionLost:
                raise RetryableFailure("connection dropped", request_sent=True) from None
            error = reply.get("error")
            if isinstance(error, dict):
                code = error.get("code")
                if code == "RateLimit":
                    raise RetryableFailure("rate limited", request_sent=False)
                if code in _UNAVAILABLE_CODES:
                    raise RetryableFailure(f"broker error {code}", request_sent=True)
                raise _error(what, error)
            return reply

        return await call_with_retries(
            attempt,
            policy=self.policy,
            provider=_PROVIDER,
            what=what,
            idempotent=idempotent,
            rng=self._rng,
        )

    # -- calls -------------------------------------------------------------------------

    async def authorize(self, token: str) -> DerivAuthorization:
        """Authorize this connection; the token is remembered for reconnects."""
        reply = await self.call({"authorize": token}, what="authorize")
        data = reply.get("authorize") or {}
        self._token = token
        accounts = [
            DerivAccount(
                loginid=str(row.get("loginid")),
                currency=row.get("currency") or None,
                is_virtual=bool(row.get("is_virtual")),
            )
            for row in data.get("account_list", [])
        ]
        self.authorization = DerivAuthorization(
            loginid=str(data.get("loginid")),
            currency=str(data.get("currency") or ""),
            balance=_dec(data.get("balance", 0), "balance"),
            is_virtual=bool(data.get("is_virtual")),
            email=data.get("email") or None,
            accounts=accounts,
        )
        return self.authorization

    async def ping(self) -> None:
        await self.call({"ping": 1}, what="ping")

    async def ticks_history(
        self, symbol: str, *, count: int = 100, end: int | Literal["latest"] = "latest"
    ) -> list[DerivTick]:
        """The last ``count`` ticks up to ``end`` (epoch seconds or ``"latest"``)."""
        reply = await self.call(
            {"ticks_history": symbol, "end": end, "count": _count(count), "style": "ticks"},
            what="ticks history",
        )
        history = reply.get("history") or {}
        times, prices = history.get("times", []), history.get("prices", [])
        return [
            DerivTick(time=_epoch(t) or datetime.fromtimestamp(0, UTC), price=_dec(p, "price"))
            for t, p in zip(times, prices, strict=False)
        ]

    async def candles(
        self,
        symbol: str,
        *,
        granularity: int = 60,
        count: int = 100,
        end: int | Literal["latest"] = "latest",
    ) -> list[DerivCandle]:
        """OHLC candles through ``ticks_history`` with ``style: candles``."""
        if granularity not in GRANULARITIES:
            raise DomainError("unsupported candle granularity", field="granularity")
        reply = await self.call(
            {
                "ticks_history": symbol,
                "end": end,
                "count": _count(count),
                "style": "candles",
                "granularity": granularity,
            },
            what="candles",
        )
        return [
            DerivCandle(
                time=_epoch(row.get("epoch")) or datetime.fromtimestamp(0, UTC),
                open=_dec(row.get("open"), "price"),
                high=_dec(row.get("high"), "price"),
                low=_dec(row.get("low"), "price"),
                close=_dec(row.get("close"), "price"),
            )
            for row in reply.get("candles", [])
        ]

    async def proposal(
        self,
        *,
        symbol: str,
        direction: ContractDirection,
        amount: Decimal,
        duration: int,
        duration_unit: DurationUnit,
        currency: str,
        basis: Literal["stake", "payout"] = "stake",
    ) -> DerivProposal:
        """Price a Rise/Fall contract; read-only, so it is retried like any read."""
        if duration_unit not in DURATION_UNITS:
            raise DomainError("duration unit must be one of t, s, m, h, d", field="durationUnit")
        if duration < 1:
            raise DomainError("duration must be positive", field="duration")
        if not amount.is_finite() or amount <= 0:
            raise DomainError("stake must be positive", field="stake")
        reply = await self.call(
            {
                "proposal": 1,
                "contract_type": _CONTRACT_TYPES[direction],
                "amount": _json_number(amount, "stake"),
                "basis": basis,
                "duration": duration,
                "duration_unit": duration_unit,
                "currency": currency,
                "symbol": symbol,
            },
            what="proposal",
        )
        data = reply.get("proposal") or {}
        if not data.get("id"):
            raise BrokerUnavailable("Deriv proposal: no proposal id", provider=_PROVIDER)
        return DerivProposal(
            proposal_id=str(data["id"]),
            symbol=symbol,
            direction=direction,
            currency=currency,
            ask_price=_dec(data.get("ask_price"), "ask price"),
            payout=_dec(data.get("payout"), "payout"),
            spot=optional_decimal(data.get("spot"), provider=_PROVIDER, what="spot"),
            description=data.get("longcode") or None,
        )

    async def buy(self, proposal_id: str, *, max_price: Decimal) -> dict[str, Any]:
        """Buy a priced proposal paying at most ``max_price``. Never retried once sent."""
        reply = await self.call(
            {"buy": proposal_id, "price": _json_number(max_price, "price")},
            what="buy",
            idempotent=False,
        )
        data = reply.get("buy")
        if not isinstance(data, dict) or not data.get("contract_id"):
            raise BrokerUnavailable("Deriv buy: no contract id", provider=_PROVIDER)
        return data

    async def sell(self, contract_id: str, *, price: Decimal = Decimal(0)) -> DerivSale:
        """Sell an open contract for at least ``price`` (0 sells at market)."""
        reply = await self.call(
            {"sell": _contract_id(contract_id), "price": _json_number(price, "price")},
            what="sell",
            idempotent=False,
        )
        data = reply.get("sell") or {}
        return DerivSale(
            contract_id=str(data.get("contract_id") or contract_id),
            sold_for=_dec(data.get("sold_for"), "sale price"),
            balance_after=optional_decimal(
                data.get("balance_after"), provider=_PROVIDER, what="balance"
            ),
            transaction_id=str(data["transaction_id"]) if data.get("transaction_id") else None,
        )

    async def balance(self) -> Balance:
        reply = await self.call({"balance": 1}, what="balance")
        data = reply.get("balance") or {}
        amount = _dec(data.get("balance"), "balance")
        return Balance(
            asset=str(data.get("currency") or ""), total=amount, available=amount, locked=Decimal(0)
        )

    async def portfolio(self) -> list[Contract]:
        """Open contracts of the authorized account."""
        reply = await self.call({"portfolio": 1}, what="portfolio")
        rows = (reply.get("portfolio") or {}).get("contracts", [])
        return [
            Contract(
                contract_id=str(row.get("contract_id")),
                symbol=str(row.get("symbol") or row.get("underlying") or ""),
                direction=_DIRECTIONS.get(str(row.get("contract_type")), ContractDirection.RISE),
                currency=str(row.get("currency") or ""),
                buy_price=_dec(row.get("buy_price"), "buy price"),
                payout=_dec(row.get("payout"), "payout"),
                status=ContractStatus.OPEN,
                purchase_time=_epoch(row.get("purchase_time") or row.get("date_start")),
                expiry_time=_epoch(row.get("expiry_time")),
                transaction_id=str(row["transaction_id"]) if row.get("transaction_id") else None,
                description=row.get("longcode") or None,
            )
            for row in rows
        ]

    async def open_contract(self, contract_id: str) -> Contract:
        """Full state of one contract (open, won, lost or sold)."""
        reply = await self.call(
            {"proposal_open_contract": 1, "contract_id": _contract_id(contract_id)},
            what="contract status",
        )
        row = reply.get("proposal_open_contract") or {}
        if not row.get("contract_id"):
            raise BrokerRejected(
                "Deriv knows no such contract", provider=_PROVIDER, field="contractId"
            )
        status = {
            "won": ContractStatus.WON,
            "lost": ContractStatus.LOST,
            "sold": ContractStatus.SOLD,
        }.get(str(row.get("status")), ContractStatus.OPEN)
        return Contract(
            contract_id=str(row["contract_id"]),
            symbol=str(row.get("underlying") or ""),
            direction=_DIRECTIONS.get(str(row.get("contract_type")), ContractDirection.RISE),
            currency=str(row.get("currency") or ""),
            buy_price=_dec(row.get("buy_price"), "buy price"),
            payout=_dec(row.get("payout"), "payout"),
            status=status,
            purchase_time=_epoch(row.get("purchase_time") or row.get("date_start")),
            expiry_time=_epoch(row.get("date_expiry")),
            sell_price=optional_decimal(row.get("sell_price"), provider=_PROVIDER, what="price"),
            profit=optional_decimal(row.get("profit"), provider=_PROVIDER, what="profit"),
            entry_spot=optional_decimal(row.get("entry_spot"), provider=_PROVIDER, what="spot"),
            exit_spot=optional_decimal(row.get("exit_spot"), provider=_PROVIDER, what="spot"),
            transaction_id=_text_id((row.get("transaction_ids") or {}).get("buy")),
            description=row.get("longcode") or None,
        )


def _count(count: int) -> int:
    if not 1 <= count <= 5000:
        raise DomainError("count must be between 1 and 5000", field="count")
    return count


def _contract_id(value: str) -> int:
    if not value.isdigit():
        raise DomainError("Deriv contract ids are numeric", field="contractId")
    return int(value)


def _text_id(value: object) -> str | None:
    return None if value in (None, "") else str(value)


# -- broker --------------------------------------------------------------------------------


class DerivBroker:
    """One Deriv account (one OAuth token) as a ``Broker``, plus Rise/Fall contracts."""

    provider = BrokerProvider.DERIV

    def __init__(self, client: DerivClient, token: str) -> None:
        self.client = client
        self._token = token

    @classmethod
    def connect(
        cls,
        app_id: str,
        token: str,
        *,
        url: str = DERIV_WS_URL,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> DerivBroker:
        """Build a broker with its own client; nothing is opened until the first call."""
        return cls(DerivClient(app_id, url=url, policy=policy, rng=rng), token)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> DerivBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def authorize(self) -> DerivAuthorization:
        """Authorize (once per client; reconnects re-authorize by themselves)."""
        if self.client.authorization is None:
            return await self.client.authorize(self._token)
        return self.client.authorization

    async def balances(self) -> list[Balance]:
        await self.authorize()
        return [await self.client.balance()]

    async def positions(self) -> list[Position]:
        """Open contracts as portfolio lines: one contract each, priced at its stake."""
        await self.authorize()
        return [
            Position(
                symbol=c.symbol,
                side=PositionSide.LONG
                if c.direction is ContractDirection.RISE
                else PositionSide.SHORT,
                quantity=Decimal(1),
                kind=PositionKind.CONTRACT,
                average_price=c.buy_price,
                currency=c.currency,
                product=_CONTRACT_TYPES[c.direction],
                position_id=c.contract_id,
            )
            for c in await self.client.portfolio()
        ]

    async def buy_contract(
        self,
        symbol: str,
        direction: ContractDirection,
        stake: Decimal,
        duration: int,
        unit: DurationUnit,
        *,
        max_price: Decimal | None = None,
    ) -> Contract:
        """Price a Rise/Fall contract and buy it at that price (or up to ``max_price``)."""
        auth = await self.authorize()
        proposal = await self.client.proposal(
            symbol=symbol,
            direction=direction,
            amount=stake,
            duration=duration,
            duration_unit=unit,
            currency=auth.currency,
        )
        bought = await self.client.buy(
            proposal.proposal_id, max_price=proposal.ask_price if max_price is None else max_price
        )
        return Contract(
            contract_id=str(bought["contract_id"]),
            symbol=symbol,
            direction=direction,
            currency=auth.currency,
            buy_price=_dec(bought.get("buy_price"), "buy price"),
            payout=_dec(bought.get("payout", proposal.payout), "payout"),
            status=ContractStatus.OPEN,
            purchase_time=_epoch(bought.get("purchase_time") or bought.get("start_time")),
            transaction_id=_text_id(bought.get("transaction_id")),
            balance_after=optional_decimal(
                bought.get("balance_after"), provider=_PROVIDER, what="balance"
            ),
            description=bought.get("longcode") or proposal.description,
        )

    async def sell_contract(self, contract_id: str, *, min_price: Decimal = Decimal(0)) -> Contract:
        """Sell at market (or not below ``min_price``) and return the settled contract."""
        await self.authorize()
        sale = await self.client.sell(contract_id, price=min_price)
        contract = await self.client.open_contract(contract_id)
        return Contract(
            contract_id=contract.contract_id,
            symbol=contract.symbol,
            direction=contract.direction,
            currency=contract.currency,
            buy_price=contract.buy_price,
            payout=contract.payout,
            status=ContractStatus.SOLD,
            purchase_time=contract.purchase_time,
            expiry_time=contract.expiry_time,
            sell_price=sale.sold_for,
            profit=sale.sold_for - contract.buy_price,
            entry_spot=contract.entry_spot,
            exit_spot=contract.exit_spot,
            transaction_id=sale.transaction_id,
            balance_after=sale.balance_after,
            description=contract.description,
        )

    async def contract(self, contract_id: str) -> Contract:
        await self.authorize()
        return await self.client.open_contract(contract_id)

    async def place_order(self, order: OrderRequest) -> BrokerOrder:
        """A market BUY is a Rise contract, a SELL a Fall one, ``quantity`` the stake;
        ``options`` must give ``duration`` and ``duration_unit``.
        """
        if order.order_type is not OrderType.MARKET:
            raise DomainError("Deriv contracts are bought at market", field="type")
        try:
            duration = int(order.options["duration"])
            unit = order.options["duration_unit"]
        except (KeyError, ValueError):
            raise DomainError(
                "Deriv orders need options duration and duration_unit", field="duration"
            ) from None
        if unit not in DURATION_UNITS:
            raise DomainError("duration unit must be one of t, s, m, h, d", field="durationUnit")
        direction = (
            ContractDirection.RISE if order.side is OrderSide.BUY else ContractDirection.FALL
        )
        contract = await self.buy_contract(
            order.symbol,
            direction,
            order.quantity,
            duration,
            cast(DurationUnit, unit),  # checked against DURATION_UNITS above
        )
        return BrokerOrder(
            order_id=contract.contract_id,
            symbol=contract.symbol,
            side=order.side,
            order_type=OrderType.MARKET,
            status=OrderStatus.FILLED,
            quantity=order.quantity,
            filled_quantity=order.quantity,
            average_price=contract.buy_price,
            client_order_id=order.client_order_id,
            created_at=contract.purchase_time,
            venue_status="bought",
        )

    async def cancel_order(self, order_id: str, *, symbol: str | None = None) -> BrokerOrder:
        """Deriv contracts are filled on purchase; closing one early is ``sell_contract``."""
        raise BrokerRejected(
            "Deriv contracts cannot be cancelled; sell the contract instead",
            provider=_PROVIDER,
            field="id",
        )

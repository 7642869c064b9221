"""A local Deriv websocket API (``websockets.serve`` on 127.0.0.1) for tests and sandbox mode.

It issues OAuth-style tokens, keeps per-account balances, prices Rise/Fall contracts from
a deterministic synthetic tick stream (one tick per second, a pure function of symbol and
epoch), settles them at expiry and answers with Deriv's envelope (``echo_req``,
``msg_type``, ``req_id``, ``error.code``). The legacy OAuth page is served over plain
HTTP on the same port so sandbox logins work end to end. Faults can throttle, delay or
drop the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tradegraph.brokers.sandbox.faults import FaultInjector, FaultKind

CENT = Decimal("0.01")
PAYOUT_RATIO = Decimal("1.95")
MIN_STAKE = Decimal("0.35")
MAX_STAKE = Decimal("50000")
PROPOSAL_TTL = 60.0

# symbol -> (display name, base price, decimals)
SYMBOLS: dict[str, tuple[str, float, int]] = {
    "R_10": ("Volatility 10 Index", 6000.0, 3),
    "R_25": ("Volatility 25 Index", 2500.0, 3),
    "R_50": ("Volatility 50 Index", 250.0, 4),
    "R_75": ("Volatility 75 Index", 45000.0, 4),
    "R_100": ("Volatility 100 Index", 1200.0, 2),
}
_UNIT_SECONDS = {"t": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_LIMITS = {"t": (1, 10), "s": (15, 86400), "m": (1, 1440), "h": (1, 24), "d": (1, 365)}
_MSG_TYPES = (
    "authorize",
    "balance",
    "buy",
    "logout",
    "ping",
    "portfolio",
    "proposal",
    "proposal_open_contract",
    "sell",
    "ticks_history",
)


def spot(symbol: str, epoch: int) -> Decimal:
    """The synthetic tick of ``symbol`` at ``epoch``: a slow wave plus hashed noise."""
    _, base, decimals = SYMBOLS[symbol]
    digest = hashlib.sha256(f"{symbol}:{epoch}".encode()).digest()
    noise = int.from_bytes(digest[:4], "big") / 2**32 - 0.5
    phase = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:2], "big") / 1000
    value = base * (1 + 0.01 * math.sin(epoch / 60 + phase) + 0.002 * noise)
    return Decimal(f"{value:.{decimals}f}")


class DerivApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FakeDerivAccount:
    loginid: str
    currency: str
    balance: Decimal
    is_virtual: bool
    email: str
    contracts: dict[int, FakeContract] = field(default_factory=dict)


@dataclass
class FakeContract:
    contract_id: int
    symbol: str
    contract_type: str
    currency: str
    buy_price: Decimal
    payout: Decimal
    purchase_time: int
    entry_epoch: int
    exit_epoch: int
    buy_transaction: int
    duration_text: str = ""
    status: str = "open"
    sell_price: Decimal | None = None
    sell_transaction: int | None = None
    sell_time: int | None = None

    @property
    def longcode(self) -> str:
        name = SYMBOLS[self.symbol][0]
        word = "higher" if self.contract_type == "CALL" else "lower"
        return (
            f"Win payout if {name} is strictly {word} than entry spot at "
            f"{self.duration_text} after contract start time."
        )


@dataclass
class _Proposal:
    symbol: str
    contract_type: str
    currency: str
    ask_price: Decimal
    payout: Decimal
    seconds: int
    duration_text: str
    created: float


@dataclass
class _Session:
    loginid: str | None = None


class FakeDeriv:
    """State and websocket server of the fake. ``clock`` (seconds) drives ticks and expiry."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        app_ids: set[str] | None = None,
        oauth_redirect_uri: str | None = None,
        demo_email: str | None = None,
    ) -> None:
        self.clock = clock
        self.app_ids = app_ids
        self.oauth_redirect_uri = oauth_redirect_uri
        self.demo_email = demo_email
        self.accounts: dict[str, FakeDerivAccount] = {}
        self.faults = FaultInjector()
        self.connections_opened = 0
        self._tokens: dict[str, str] = {}
        self._proposals: dict[str, _Proposal] = {}
        self._contract_ids = itertools.count(250_000_000_001)
        self._transaction_ids = itertools.count(500_000_000_001)
        self._server: Server | None = None
        self._port: int | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- setup -------------------------------------------------------------------------

    def add_account(
        self,
        loginid: str,
        *,
        currency: str = "USD",
        balance: Decimal = Decimal("10000"),
        email: str = "trader@example.com",
    ) -> str:
        """Create an account and return a fresh API token for it."""
        self.accounts[loginid] = FakeDerivAccount(
            loginid, currency, balance, loginid.startswith("VR"), email
        )
        return self.issue_token(loginid)

    def issue_token(self, loginid: str) -> str:
        token = "a1-" + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
        self._tokens[token] = loginid
        return token

    def revoke_token(self, token: str) -> None:
        self._tokens.pop(token, None)

    @property
    def url(self) -> str:
        """Websocket endpoint, like ``wss://ws.derivws.com/websockets/v3``."""
        return f"ws://127.0.0.1:{self._require_port()}/websockets/v3"

    @property
    def oauth_url(self) -> str:
        """Sandbox stand-in for ``https://oauth.deriv.com/oauth2/authorize``."""
        return f"http://127.0.0.1:{self._require_port()}/oauth2/authorize"

    def _require_port(self) -> int:
        if self._port is None:
            raise RuntimeError("fake Deriv is not started")
        return self._port

    async def start(self) -> str:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=None,
            close_timeout=1,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        return self.url

    async def stop(self) -> None:
        self.faults.release()
        for task in list(self._handlers):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None

    async def __aenter__(self) -> FakeDeriv:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP: handshake checks and the OAuth page -------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        app_id = query.get("app_id", "")
        app_ok = app_id.isdigit() and (self.app_ids is None or app_id in self.app_ids)
        if parts.path == "/oauth2/authorize":
            return self._oauth(connection, app_ok)
        if parts.path != "/websockets/v3":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if not app_ok:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Invalid app_id\n")
        return None

    def _oauth(self, connection: ServerConnection, app_ok: bool) -> Response:
        """Log the demo user in: redirect with ``acctN/tokenN/curN`` for each account."""
        if not app_ok or not self.oauth_redirect_uri:
            return connection.respond(HTTPStatus.BAD_REQUEST, "Invalid app_id\n")
        accounts = [a for a in self.accounts.values() if a.email == self.demo_email]
        params: dict[str, str] = {}
        for n, account in enumerate(accounts, start=1):
            params[f"acct{n}"] = account.loginid
            params[f"token{n}"] = self.issue_token(account.loginid)
            params[f"cur{n}"] = account.currency.lower()
        sep = "&" if "?" in self.oauth_redirect_uri else "?"
        response = connection.respond(HTTPStatus.FOUND, "")
        response.headers["Location"] = f"{self.oauth_redirect_uri}{sep}{urlencode(params)}"
        return response

    # -- websocket ---------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections_opened += 1
        session = _Session()
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for raw in ws:
                task = asyncio.create_task(self._message(ws, session, raw))
                tasks.add(task)
                self._handlers.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(self._handlers.discard)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async def _message(self, ws: ServerConnection, session: _Session, raw: str | bytes) -> None:
        try:
            request = json.loads(raw, parse_float=Decimal)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            await self._send(ws, {"error": {"code": "InputValidationFailed", "message": "Bad"}})
            return
        msg_type = next((k for k in _MSG_TYPES if k in request), "unknown")
        envelope: dict[str, Any] = {"echo_req": request, "msg_type": msg_type}
        if "req_id" in request:
            envelope["req_id"] = request["req_id"]
        fault = self.faults.take(msg_type)
        if fault is not None and fault.kind is FaultKind.DROP:
            ws.transport.abort()  # vanish like a network failure: no close frame
            return
        if fault is not None and fault.kind is FaultKind.DELAY:
            await self.faults.sleep(fault.delay)
        try:
            if fault is not None and fault.kind is FaultKind.STATUS:
                raise DerivApiError(fault.error_code or "RateLimit", "Injected failure.")
            if msg_type == "unknown":
                raise DerivApiError("UnrecognisedRequest", "Unrecognised request.")
            envelope.update(self._dispatch(msg_type, session, request))
        except DerivApiError as exc:
            envelope["error"] = {"code": exc.code, "message": exc.message}
        await self._send(ws, envelope)

    @staticmethod
    async def _send(ws: ServerConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(message, default=_json_default))

    def _dispatch(self, msg_type: str, session: _Session, req: dict[str, Any]) -> dict[str, Any]:
        """The reply fields for one request (``ticks_history`` renames its ``msg_type``)."""
        now = self.clock()
        self._settle(now)
        if msg_type == "ticks_history":
            return self._history(req, now)
        return {msg_type: self._reply(msg_type, session, req, now)}

    def _reply(self, msg_type: str, session: _Session, req: dict[str, Any], now: float) -> Any:
        if msg_type == "ping":
            return "pong"
        if msg_type == "authorize":
            return self._authorize(session, req)
        if msg_type == "proposal":
            return self._proposal(req, now)
        account = self._account(session)
        if msg_type == "logout":
            session.loginid = None
            return 1
        if msg_type == "balance":
            return {
                "balance": account.balance,
                "currency": account.currency,
                "loginid": account.loginid,
            }
        if msg_type == "buy":
            return self._buy(account, req, now)
        if msg_type == "sell":
            return self._sell(account, req, now)
        if msg_type == "portfolio":
            return {
                "contracts": [
                    {
                        "contract_id": c.contract_id,
                        "contract_type": c.contract_type,
                        "currency": c.currency,
                        "symbol": c.symbol,
                        "buy_price": c.buy_price,
                        "payout": c.payout,
                        "date_start": c.purchase_time,
                        "purchase_time": c.purchase_time,
                        "expiry_time": c.exit_epoch,
                        "longcode": c.longcode,
                        "transaction_id": c.buy_transaction,
                    }
                    for c in account.contracts.values()
                    if c.status == "open"
                ]
            }
        return self._open_contract(account, req, now)

    def _account(self, session: _Session) -> FakeDerivAccount:
        if session.loginid is None:
            raise DerivApiError("AuthorizationRequired", "Please log in.")
        return self.accounts[session.loginid]

    def _authorize(self, session: _Session, req: dict[str, Any]) -> dict[str, Any]:
        loginid = self._tokens.get(str(req.get("authorize", "")))
        if loginid is None:
            raise DerivApiError("InvalidToken", "The token is invalid.")
        session.loginid = loginid
        account = self.accounts[loginid]
        siblings = [a for a in self.accounts.values() if a.email == account.email]
        return {
            "loginid": account.loginid,
            "currency": account.currency,
            "balance": account.balance,
            "email": account.email,
            "fullname": " Sandbox Trader",
            "is_virtual": int(account.is_virtual),
            "landing_company_name": "svg",
            "scopes": ["read", "trade"],
            "account_list": [
                {
                    "loginid": a.loginid,
                    "currency": a.currency,
                    "is_virtual": int(a.is_virtual),
                    "is_disabled": 0,
                    "account_type": "trading",
                }
                for a in siblings
            ],
        }

    @staticmethod
    def _symbol(value: object) -> str:
        if not isinstance(value, str) or value not in SYMBOLS:
            raise DerivApiError("InvalidSymbol", "Symbol is invalid.")
        return value

    def _history(self, req: dict[str, Any], now: float) -> dict[str, Any]:
        symbol = self._symbol(req.get("ticks_history"))
        end = req.get("end", "latest")
        end_epoch = int(now) if end == "latest" else int(end)
        end_epoch = min(end_epoch, int(now))
        count = int(req.get("count", 5000))
        if not 1 <= count <= 5000:
            raise DerivApiError("InputValidationFailed", "Input validation failed: count")
        if req.get("style", "ticks") == "candles":
            granularity = int(req.get("granularity", 60))
            last = end_epoch - end_epoch % granularity
            step = max(1, granularity // 60)
            candles = []
            for start in range(last - (count - 1) * granularity, last + 1, granularity):
                prices = [spot(symbol, e) for e in range(start, start + granularity, step)]
                candles.append(
                    {
                        "epoch": start,
                        "open": prices[0],
                        "high": max(prices),
                        "low": min(prices),
                        "close": prices[-1],
                    }
                )
            return {"msg_type": "candles", "candles": candles}
        times = list(range(end_epoch - count + 1, end_epoch + 1))
        return {
            "msg_type": "history",
            "history": {"prices": [spot(symbol, t) for t in times], "times": times},
            "pip_size": SYMBOLS[symbol][2],
        }

    def _proposal(self, req: dict[str, Any], now: float) -> dict[str, Any]:
        symbol = self._symbol(req.get("symbol"))
        contract_type = req.get("contract_type")
        if contract_type not in ("CALL", "PUT"):
            raise DerivApiError("InputValidationFailed", "Input validation failed: contract_type")
        unit = req.get("duration_unit")
        duration = req.get("duration")
        if unit not in _UNIT_SECONDS or not isinstance(duration, int):
            raise DerivApiError("InputValidationFailed", "Input validation failed: duration")
        low, high = _UNIT_LIMITS[unit]
        if not low <= duration <= high:
            raise DerivApiError(
                "ContractCreationFailure", "Trading is not offered for this duration."
            )
        currency = req.get("currency")
        if not isinstance(currency, str) or not currency:
            raise DerivApiError("InputValidationFailed", "Input validation failed: currency")
        try:
            amount = Decimal(str(req.get("amount"))).quantize(CENT)
        except ArithmeticError:
            raise DerivApiError(
                "InputValidationFailed", "Input validation failed: amount"
            ) from None
        if req.get("basis", "payout") == "stake":
            stake = amount
            payout = (amount * PAYOUT_RATIO).quantize(CENT, ROUND_HALF_UP)
        else:
            payout = amount
            stake = (amount / PAYOUT_RATIO).quantize(CENT, ROUND_HALF_UP)
        if not MIN_STAKE <= stake <= MAX_STAKE:
            raise DerivApiError(
                "ContractBuyValidationError",
                f"Stake must be between {MIN_STAKE} and {MAX_STAKE}.",
            )
        proposal_id = secrets.token_hex(16)
        self._proposals[proposal_id] = _Proposal(
            symbol,
            contract_type,
            currency,
            stake,
            payout,
            duration * _UNIT_SECONDS[unit],
            _duration_text(duration, unit),
            now,
        )
        word = "higher" if contract_type == "CALL" else "lower"
        return {
            "id": proposal_id,
            "ask_price": stake,
            "payout": payout,
            "spot": spot(symbol, int(now)),
            "spot_time": int(now),
            "date_start": int(now),
            "display_value": f"{stake:.2f}",
            "longcode": (
                f"Win payout if {SYMBOLS[symbol][0]} is strictly {word} than entry spot "
                f"at {_duration_text(duration, unit)} after contract start time."
            ),
        }

    def _buy(self, account: FakeDerivAccount, req: dict[str, Any], now: float) -> dict[str, Any]:
        proposal = self._proposals.pop(str(req.get("buy", "")), None)
        if proposal is None or now - proposal.created > PROPOSAL_TTL:
            raise DerivApiError("InvalidContractProposal", "Proposal has expired or is unknown.")
        if proposal.currency != account.currency:
            raise DerivApiError("ContractBuyValidationError", "Invalid currency for account.")
        try:
            max_price = Decimal(str(req.get("price")))
        except ArithmeticError:
            raise DerivApiError("InputValidationFailed", "Input validation failed: price") from None
        if proposal.ask_price > max_price:
            raise DerivApiError(
                "PriceMoved", "The underlying market has moved too much since you priced it."
            )
        if proposal.ask_price > account.balance:
            raise DerivApiError(
                "InsufficientBalance",
                f"Your account balance ({account.currency}{account.balance:.2f}) is "
                f"insufficient to buy this contract ({account.currency}"
                f"{proposal.ask_price:.2f}).",
            )
        account.balance -= proposal.ask_price
        purchase = int(now)
        entry = purchase + 1  # the first tick after purchase
        contract = FakeContract(
            contract_id=next(self._contract_ids),
            symbol=proposal.symbol,
            contract_type=proposal.contract_type,
            currency=proposal.currency,
            buy_price=proposal.ask_price,
            payout=proposal.payout,
            purchase_time=purchase,
            entry_epoch=entry,
            exit_epoch=entry + proposal.seconds,
            buy_transaction=next(self._transaction_ids),
            duration_text=proposal.duration_text,
        )
        account.contracts[contract.contract_id] = contract
        return {
            "contract_id": contract.contract_id,
            "buy_price": contract.buy_price,
            "payout": contract.payout,
            "balance_after": account.balance,
            "purchase_time": purchase,
            "start_time": purchase,
            "transaction_id": contract.buy_transaction,
            "longcode": contract.longcode,
            "shortcode": f"{contract.contract_type}_{contract.symbol}_{contract.payout}",
        }

    def _bid(self, contract: FakeContract, now: float) -> Decimal:
        """Deterministic early-exit price: a share of the payout by current moneyness."""
        if now < contract.entry_epoch:
            return contract.buy_price
        current = spot(contract.symbol, int(now))
        entry = spot(contract.symbol, contract.entry_epoch)
        winning = current > entry if contract.contract_type == "CALL" else current < entry
        share = Decimal("0.6") if winning else Decimal("0.4")
        if current == entry:
            share = Decimal("0.5")
        return (contract.payout * share).quantize(CENT)

    def _sell(self, account: FakeDerivAccount, req: dict[str, Any], now: float) -> dict[str, Any]:
        contract = account.contracts.get(_int(req.get("sell")))
        if contract is None:
            raise DerivApiError("InvalidSellContractProposal", "This contract was not found.")
        if contract.status != "open":
            raise DerivApiError("InvalidSellContractProposal", "This contract has been sold.")
        bid = self._bid(contract, now)
        try:
            minimum = Decimal(str(req.get("price", 0)))
        except ArithmeticError:
            raise DerivApiError("InputValidationFailed", "Input validation failed: price") from None
        if minimum > 0 and bid < minimum:
            raise DerivApiError("PriceMoved", "The contract's sell price is below your minimum.")
        contract.status = "sold"
        contract.sell_price = bid
        contract.sell_time = int(now)
        contract.sell_transaction = next(self._transaction_ids)
        account.balance += bid
        return {
            "contract_id": contract.contract_id,
            "sold_for": bid,
            "balance_after": account.balance,
            "transaction_id": contract.sell_transaction,
            "reference_id": contract.buy_transaction,
        }

    def _open_contract(
        self, account: FakeDerivAccount, req: dict[str, Any], now: float
    ) -> dict[str, Any]:
        contract = account.contracts.get(_int(req.get("contract_id")))
        if contract is None:
            raise DerivApiError("ContractNotFound", "This contract was not found.")
        entry = spot(contract.symbol, contract.entry_epoch) if now >= contract.entry_epoch else None
        closed_at = contract.exit_epoch
        if contract.status == "sold" and contract.sell_time is not None:
            closed_at = contract.sell_time
        exit_spot = spot(contract.symbol, closed_at) if contract.status != "open" else None
        value = contract.sell_price
        if contract.status in ("won", "lost"):
            value = contract.payout if contract.status == "won" else Decimal(0)
        return {
            "contract_id": contract.contract_id,
            "contract_type": contract.contract_type,
            "underlying": contract.symbol,
            "currency": contract.currency,
            "buy_price": contract.buy_price,
            "payout": contract.payout,
            "bid_price": self._bid(contract, now) if contract.status == "open" else value,
            "sell_price": value,
            "profit": None if value is None else value - contract.buy_price,
            "status": contract.status,
            "is_sold": int(contract.status != "open"),
            "is_expired": int(now >= contract.exit_epoch),
            "date_start": contract.purchase_time,
            "date_expiry": contract.exit_epoch,
            "purchase_time": contract.purchase_time,
            "entry_spot": entry,
            "exit_spot": exit_spot,
            "longcode": contract.longcode,
            "transaction_ids": {"buy": contract.buy_transaction, "sell": contract.sell_transaction},
        }

    def _settle(self, now: float) -> None:
        """Pay out every open contract whose exit tick is in the past."""
        for account in self.accounts.values():
            for contract in account.contracts.values():
                if contract.status != "open" or now < contract.exit_epoch:
                    continue
                entry = spot(contract.symbol, contract.entry_epoch)
                exit_ = spot(contract.symbol, contract.exit_epoch)
                won = exit_ > entry if contract.contract_type == "CALL" else exit_ < entry
                contract.status = "won" if won else "lost"
                if won:
                    account.balance += contract.payout


def _duration_text(duration: int, unit: str) -> str:
    word = {"t": "tick", "s": "second", "m": "minute", "h": "hour", "d": "day"}[unit]
    return f"{duration} {word}{'' if duration == 1 else 's'}"


def _int(value: object) -> int:
    if isinstance(value, bool):
        return -1
    try:
        return int(str(value))
    except ValueError:
        return -1


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

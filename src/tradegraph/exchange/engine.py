"""The exchange core: balances, orders, books and matching in one single-writer state.

Pure and I/O-free (no asyncio, no database, no clock).  The sequencer owns one
:class:`Engine`, feeds it commands in order and persists the *effects* each command
returns; the engine never reads anything back.  Everything is an integer:

* prices in *price units* (``10**-price_decimals`` quote per base unit),
* quantities in *qty units* (``10**-qty_decimals`` base),
* balances, notionals and fees in the asset's minor units.

The notional of ``qty`` at ``price`` in quote minor units is ``price * qty * quote_mult``
with ``quote_mult = 10**(quote_decimals - price_decimals - qty_decimals)`` (exact by
construction, checked when the instrument is added); the base moved is ``qty * base_mult``.

Choices the sequencer author should know
----------------------------------------
* **Ids are engine counters.**  Order ids, trade ids and time priorities come from
  counters inside the state, so replaying the same commands yields the same ids.  A
  rejected command consumes nothing.  After a rebuild call :meth:`Engine.set_counters`.
* **Fees are always charged in the quote asset**: the buyer pays ``notional + fee``, the
  seller receives ``notional - fee``, both fees go to ``fee_account_id``.  Fees are rounded
  up *cumulatively per order*: after each fill an order has paid exactly
  ``ceil(sum(notional_i * bps_i) / 10_000)``, so many small fills can't cost more than
  one big one, and a buy never pays more fee than it reserved.
* **Reservations.**  A buy locks ``notional(limit, qty) + fee`` at the worst fee rate it
  can still pay: the maker rate for an order that rests (it can never take afterwards),
  the taker rate for IOC/FOK/market orders, the larger of the two for a GTC limit that
  crosses (or a pending stop) until it comes to rest.  A sell locks its base quantity.
  Each fill consumes what it costs and releases what is no longer needed (better price,
  maker instead of taker fee) at once, so an account's ``locked`` always equals the sum
  of ``reserved`` over its open orders.
* **Market orders** trade no worse than a protection price ``best opposite * (1 +/- band)``
  (``market_band_bps``, per engine).  A market buy gives either ``quantity`` (funds are
  reserved at the protection price, so it can never overdraw) or ``quote_quantity``, a
  notional budget (the taker fee on the budget is reserved on top).  A STOP_MARKET buy by
  quantity reserves at the cap ``stop_price * (1 + band)`` and never trades above it.
  Market orders behave as IOC (FOK is honoured for quantity orders); with an empty
  opposite side they expire at once.  ``min_notional`` applies to limit prices and quote
  budgets, not to market quantities (their price is unknown up front).
* **Stops** trigger on the last trade price (or :meth:`Engine.mark_price`): a buy stop
  when ``last >= stop``, a sell stop when ``last <= stop``.  Placing one that would trigger
  at once is rejected (``STOP_WOULD_TRIGGER``).  Triggered stops run one at a time,
  earliest placed first, re-checking after each, so cascades are deterministic.  A
  triggered stop gets a fresh time priority; post-only/FOK conditions that fail at trigger
  time expire it.
* **Statuses.**  Ended by the user: CANCELED.  Ended by the engine (IOC/market remainder,
  FOK/post-only failing at trigger, self-trade prevention, no liquidity): EXPIRED, with a
  ``reason``.  Rejected placements raise :class:`~tradegraph.errors.DomainError` and change
  nothing, so REJECTED is never produced here (a sequencer may store rejected requests
  with it).
* **clientOrderId** is unique per account for as long as the engine remembers it: a retry
  with an equal :class:`OrderRequest` returns the stored :class:`PlaceResult` (with
  ``replayed=True`` and no effects); any other request with that id is
  ``DUPLICATE_CLIENT_ORDER_ID``.  The sequencer prunes with
  :meth:`Engine.forget_client_order_id` after its retention period.
* **Effects.**  Each command returns its own effects in order: :class:`OrderUpdate`
  (every state change of every order it touched), :class:`Trade` (one ledger transaction
  each; :meth:`Trade.postings` expands it into double-entry :class:`Posting` rows, and
  deposits/withdrawals/credits emit postings directly; :func:`ledger_postings` does both),
  :class:`MarkPrice`, :class:`InstrumentStatusChanged`.  What is naturally per *batch*
  comes from :meth:`Engine.flush`, which the sequencer calls once per batch before its
  commit: one :class:`BookDelta` per changed symbol (absolute level sizes, 0 = removed,
  coalesced over the batch, Coinbase level2 style, with the gap-free ``book:SYM``
  sequence) and one :class:`BalanceUpdate` per touched (account, asset) with its final
  values.  So a cell touched by 50 commands in a batch is written once.  Calling
  ``flush()`` after every command gives per-command granularity.  Trades carry their
  gap-free ``trades:SYM`` sequence.

Performance notes: effects and results are ``NamedTuple`` s built with ``tuple.__new__``
(about half the cost of a dataclass here, and they map straight onto insert rows); plain
GTC limits and plain market orders take flat "happy path" lanes in :meth:`Engine.place`
that hand anything unusual, including every error, to the general path; the match loops
are specialised per side and keep the taker's and the level's running totals in locals.
The lanes find an account's cells and open-order index with one lookup in a per-market
cache (``_Market.members``) that the general path fills when it first accepts an order of
that account there.  ``bench/bench_engine.py`` measures all of it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

from tradegraph.errors import DomainError
from tradegraph.exchange.book import (
    BookSide,
    InstrumentStatus,
    Level,
    OrderStatus,
    OrderType,
    PostingReason,
    Side,
    STPMode,
    TimeInForce,
)
from tradegraph.exchange.values import InstrumentSpec, OrderRequest

__all__ = [
    "CLIENT_ORDER_ID_RE",
    "BalanceUpdate",
    "BookDelta",
    "BookSnapshot",
    "Effect",
    "Engine",
    "EngineCounters",
    "InstrumentSpec",
    "InstrumentStatusChanged",
    "MarkPrice",
    "OrderRequest",
    "OrderUpdate",
    "PlaceResult",
    "Posting",
    "Trade",
    "ledger_postings",
]

BPS: Final = 10_000
CLIENT_ORDER_ID_RE: Final = re.compile(r"[A-Za-z0-9._:/\-]{1,36}")

# Module-level aliases: a global load is cheaper than an enum attribute lookup (and, being
# ``Final``, a C static when compiled with mypyc rather than a module-dict lookup).
BUY: Final = Side.BUY
SELL: Final = Side.SELL
LIMIT: Final = OrderType.LIMIT
MARKET: Final = OrderType.MARKET
STOP_LIMIT: Final = OrderType.STOP_LIMIT
STOP_MARKET: Final = OrderType.STOP_MARKET
GTC: Final = TimeInForce.GTC
IOC: Final = TimeInForce.IOC
FOK: Final = TimeInForce.FOK
NEW: Final = OrderStatus.NEW
PARTIALLY_FILLED: Final = OrderStatus.PARTIALLY_FILLED
FILLED: Final = OrderStatus.FILLED
CANCELED: Final = OrderStatus.CANCELED
EXPIRED: Final = OrderStatus.EXPIRED
STP_NONE: Final = STPMode.NONE
EXPIRE_TAKER: Final = STPMode.EXPIRE_TAKER
EXPIRE_MAKER: Final = STPMode.EXPIRE_MAKER
EXPIRE_BOTH: Final = STPMode.EXPIRE_BOTH
_STP_MODES: Final = frozenset(STPMode)
_TIFS: Final = frozenset(TimeInForce)
_INF: Final = 1 << 127

_tnew: Final[Any] = tuple.__new__  # builds a NamedTuple without a Python-level __new__ call


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- effects


class OrderUpdate(NamedTuple):
    """State of an order after a change: the row to upsert and the ``myOrders`` event.

    ``fee_accrued`` (sum of notional*bps over fills) and ``reserved`` (still locked for
    it) let :meth:`Engine.restore_order` restore fee rounding and reservations exactly.
    ``limit_price`` is the effective limit: the order price, a market order's protection
    price, a pending STOP_MARKET buy's cap, 0 when none applies yet.  ``priority`` orders
    resting orders in time; ``reason`` says why an order ended.
    """

    order_id: int
    status: OrderStatus
    filled_qty: int
    remaining_qty: int
    quote_filled: int
    fee_paid: int
    fee_accrued: int
    reserved: int
    budget_left: int
    limit_price: int
    priority: int
    triggered: bool
    reason: str | None
    request: OrderRequest

    @property
    def account_id(self) -> int:
        return self.request.account_id

    @property
    def symbol(self) -> str:
        return self.request.symbol

    @property
    def side(self) -> Side:
        return self.request.side

    @property
    def client_order_id(self) -> str | None:
        return self.request.client_order_id

    @property
    def is_open(self) -> bool:
        return self.status == NEW or self.status == PARTIALLY_FILLED


class Posting(NamedTuple):
    """Double-entry ledger line: ``amount`` of ``asset`` moves between two accounts.

    ``None`` is the outside world (deposits come from it, withdrawals go to it), so per
    asset the sum over real accounts equals deposits + outside credits - withdrawals.
    """

    from_account_id: int | None
    to_account_id: int | None
    asset: str
    amount: int
    reason: PostingReason
    order_id: int | None = None
    trade_id: int | None = None
    ref: str | None = None


class Trade(NamedTuple):
    """One fill between a taker and a maker; a complete ledger transaction by itself.

    ``notional`` and both fees are quote minor units, ``base_amount`` base minor units.
    """

    trade_id: int
    symbol: str
    seq: int
    price: int
    qty: int
    notional: int
    base_amount: int
    taker_side: Side
    taker_order_id: int
    taker_account_id: int
    maker_order_id: int
    maker_account_id: int
    taker_fee: int
    maker_fee: int
    base_asset: str
    quote_asset: str
    fee_account_id: int

    @property
    def buyer_account_id(self) -> int:
        return self.taker_account_id if self.taker_side == BUY else self.maker_account_id

    @property
    def seller_account_id(self) -> int:
        return self.maker_account_id if self.taker_side == BUY else self.taker_account_id

    @property
    def buy_order_id(self) -> int:
        return self.taker_order_id if self.taker_side == BUY else self.maker_order_id

    @property
    def sell_order_id(self) -> int:
        return self.maker_order_id if self.taker_side == BUY else self.taker_order_id

    @property
    def buyer_fee(self) -> int:
        return self.taker_fee if self.taker_side == BUY else self.maker_fee

    @property
    def seller_fee(self) -> int:
        return self.maker_fee if self.taker_side == BUY else self.taker_fee

    def postings(self) -> list[Posting]:
        """The double-entry lines of this fill (zero fees are omitted)."""
        buyer, seller = self.buyer_account_id, self.seller_account_id
        bo, so, tid = self.buy_order_id, self.sell_order_id, self.trade_id
        trade = PostingReason.TRADE
        out = [
            Posting(buyer, seller, self.quote_asset, self.notional, trade, bo, tid),
            Posting(seller, buyer, self.base_asset, self.base_amount, trade, so, tid),
        ]
        fee, acct, quote = PostingReason.FEE, self.fee_account_id, self.quote_asset
        if self.buyer_fee:
            out.append(Posting(buyer, acct, quote, self.buyer_fee, fee, bo, tid))
        if self.seller_fee:
            out.append(Posting(seller, acct, quote, self.seller_fee, fee, so, tid))
        return out


class BalanceUpdate(NamedTuple):
    """Absolute balance of one (account, asset) after a command (also the balance view)."""

    account_id: int
    asset: str
    total: int
    locked: int

    @property
    def available(self) -> int:
        return self.total - self.locked


class BookDelta(NamedTuple):
    """Level changes of one symbol in one command, in order: ``(side, price, new size)``."""

    symbol: str
    seq: int
    changes: list[tuple[Side, int, int]]


class InstrumentStatusChanged(NamedTuple):
    symbol: str
    status: InstrumentStatus


class MarkPrice(NamedTuple):
    """A price set by :meth:`Engine.mark_price` (persist it so stops rebuild right)."""

    symbol: str
    price: int


Effect = (
    OrderUpdate | Trade | Posting | BalanceUpdate | BookDelta | InstrumentStatusChanged | MarkPrice
)


class PlaceResult(NamedTuple):
    """The order right after its own matching, and the trades it took as taker.

    ``replayed`` is true when a ``client_order_id`` retry returned the stored result.
    """

    order: OrderUpdate
    trades: list[Trade]
    replayed: bool = False


@dataclass(slots=True)
class BookSnapshot:
    """Top-of-book levels, best first, as of ``book:SYM`` sequence ``seq``."""

    symbol: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


@dataclass(slots=True)
class EngineCounters:
    """Everything a rebuild restores besides balances, open orders and last prices."""

    next_order_id: int
    next_trade_id: int
    next_priority: int
    topic_seqs: dict[str, int] = field(default_factory=dict)


def ledger_postings(effects: Iterable[Effect]) -> list[Posting]:
    """All ledger lines of a command's effects (trades expanded), in order."""
    out: list[Posting] = []
    for e in effects:
        if isinstance(e, Posting):
            out.append(e)
        elif isinstance(e, Trade):
            out.extend(e.postings())
    return out


# --------------------------------------------------------------------------- internals


class _Cell:
    """Balance of one (account, asset).  ``stamp`` dedupes BalanceUpdate per command."""

    __slots__ = ("account_id", "asset", "locked", "stamp", "total")

    def __init__(self, account_id: int, asset: str) -> None:
        self.account_id = account_id
        self.asset = asset
        self.total = 0
        self.locked = 0
        self.stamp = 0


class _Account:
    """Per account: balance cells by asset and open orders by id (one lookup for both)."""

    __slots__ = ("cells", "orders")

    def __init__(self) -> None:
        self.cells: dict[str, _Cell] = {}
        self.orders: dict[int, _Order] = {}  # open: resting or pending stop


class _Market:
    """Runtime state of one instrument (spec values copied into slots for speed)."""

    __slots__ = (
        "asks",
        "base",
        "bids",
        "bm",
        "book_seq",
        "fee_cell",
        "gtc_bps",
        "halted",
        "last",
        "last_restored",
        "lot",
        "maker_bps",
        "max_sell_stop",
        "members",
        "min_buy_stop",
        "min_notional",
        "min_qty",
        "qm",
        "quote",
        "spec",
        "stops",
        "symbol",
        "taker_bps",
        "tick",
        "trades_seq",
    )

    def __init__(self, spec: InstrumentSpec, fee_cell: _Cell) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.base = spec.base_asset
        self.quote = spec.quote_asset
        self.qm = spec.quote_mult
        self.bm = spec.base_mult
        self.tick = spec.tick
        self.lot = spec.lot
        self.min_qty = spec.min_qty
        self.min_notional = spec.min_notional
        self.maker_bps = spec.maker_fee_bps
        self.taker_bps = spec.taker_fee_bps
        self.gtc_bps = max(self.maker_bps, self.taker_bps)  # a resting buy may pay either
        self.halted = spec.status == InstrumentStatus.HALTED
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.fee_cell = fee_cell
        self.last: int | None = None
        self.book_seq = 0
        self.trades_seq = 0
        self.stops: list[_Order] = []  # pending stops in time priority
        self.min_buy_stop = _INF
        self.max_sell_stop = -_INF
        self.last_restored = 0
        # account id -> (its open orders, base cell, quote cell), filled in by the general
        # path (cells never go away): the happy-path lanes need one lookup instead of four
        self.members: dict[int, tuple[dict[int, _Order], _Cell, _Cell]] = {}

    def refresh_stop_bounds(self) -> None:
        self.min_buy_stop = min((o.stop for o in self.stops if o.is_buy), default=_INF)
        self.max_sell_stop = max((o.stop for o in self.stops if not o.is_buy), default=-_INF)


class _Order:
    """Mutable engine-side order; the static parameters stay on ``request``."""

    __slots__ = (
        "account_id",
        "base_cell",
        "budget",
        "fee_num",
        "fee_paid",
        "filled",
        "index",
        "is_buy",
        "limit",
        "live",
        "m",
        "order_id",
        "priority",
        "quote_cell",
        "quote_filled",
        "remaining",
        "request",
        "res_bps",
        "reserved",
        "status",
        "triggered",
    )

    def __init__(
        self,
        order_id: int,
        request: OrderRequest,
        m: _Market,
        is_buy: bool,
        limit: int,
        qty: int,
        budget: int,
        res_bps: int,
        reserved: int,
        priority: int,
        base_cell: _Cell,
        quote_cell: _Cell,
        index: dict[int, _Order],
    ) -> None:
        self.order_id = order_id
        self.account_id = request.account_id
        self.index = index  # the owner's open orders (``_Account.orders``)
        self.request = request
        self.m = m
        self.is_buy = is_buy
        self.limit = limit
        self.remaining = qty
        self.budget = budget  # unspent notional of a quote-quantity buy; -1 otherwise
        self.filled = 0
        self.quote_filled = 0
        self.fee_num = 0  # sum of notional * bps over fills
        self.fee_paid = 0  # ceil(fee_num / 10_000), paid so far
        self.res_bps = res_bps  # fee rate the reservation assumes for what is left
        self.reserved = reserved
        self.priority = priority
        self.base_cell = base_cell
        self.quote_cell = quote_cell
        self.status = NEW
        self.live = False  # resting in the book
        self.triggered = False

    @property
    def stop(self) -> int:
        """Stop price (0 for non-stop orders); only the stop paths read it."""
        return self.request.stop_price or 0


class _CoidEntry(NamedTuple):
    request: OrderRequest
    result: PlaceResult
    order_id: int


def _err(code: str, message: str, field: str | None = None) -> DomainError:
    return DomainError(message, code=code, field=field)


def _snap(o: _Order, reason: str | None = None) -> OrderUpdate:
    b = o.budget
    u: OrderUpdate = _tnew(
        OrderUpdate,
        (
            o.order_id,
            o.status,
            o.filled,
            o.remaining,
            o.quote_filled,
            o.fee_paid,
            o.fee_num,
            o.reserved,
            b if b > 0 else 0,
            o.limit,
            o.priority,
            o.triggered,
            reason,
            o.request,
        ),
    )
    return u


# --------------------------------------------------------------------------- engine


class Engine:
    """Single-writer exchange state; one sequencer owns it (not thread-safe by design).

    Every command returns ``(result, effects)``; a command that raises
    :class:`~tradegraph.errors.DomainError` has changed nothing.
    """

    def __init__(self, *, fee_account_id: int, market_band_bps: int = 500) -> None:
        if not 0 <= market_band_bps < BPS:
            raise ValueError("market_band_bps must be in 0..9999")
        self.fee_account_id = fee_account_id
        self.market_band_bps = market_band_bps
        self._assets: dict[str, int] = {}
        self._markets: dict[str, _Market] = {}
        self._accounts: dict[int, _Account] = {}
        # account id -> that account's open orders (``_Account.orders``): cancels skip a hop
        self._open_orders: dict[int, dict[int, _Order]] = {}
        self._coids: dict[tuple[int, str], _CoidEntry] = {}
        self._next_order_id = 1
        self._next_trade_id = 1
        self._next_priority = 1
        self._batch = 1  # cells touched since the last flush carry this stamp
        self._dirty: list[_Cell] = []
        self._fx: list[Effect] = []

    # ------------------------------------------------------------------ reference data

    def add_asset(self, code: str, decimals: int) -> None:
        """Register an asset (idempotent for the same decimals)."""
        if not code or not 0 <= decimals <= 36:
            raise _err("INVALID_ASSET", f"bad asset {code!r}/{decimals}", "asset")
        known = self._assets.get(code)
        if known is not None and known != decimals:
            raise _err("INVALID_ASSET", f"asset {code} already has {known} decimals", "asset")
        self._assets[code] = decimals

    def add_instrument(self, spec: InstrumentSpec) -> None:
        """Register an instrument, checking that price x qty is exact in the quote asset."""
        s = spec
        problems = []
        if s.symbol in self._markets:
            problems.append("symbol already exists")
        if s.base_asset == s.quote_asset:
            problems.append("base and quote must differ")
        if min(s.base_decimals, s.quote_decimals, s.price_decimals, s.qty_decimals) < 0:
            problems.append("decimals must be >= 0")
        if max(s.base_decimals, s.quote_decimals) > 36:
            problems.append("decimals must be <= 36")
        if s.quote_decimals < s.price_decimals + s.qty_decimals:
            problems.append("quote_decimals must be >= price_decimals + qty_decimals")
        if s.base_decimals < s.qty_decimals:
            problems.append("base_decimals must be >= qty_decimals")
        if s.tick <= 0 or s.lot <= 0:
            problems.append("tick and lot must be > 0")
        if s.min_qty < 0 or s.min_notional < 0:
            problems.append("min_qty and min_notional must be >= 0")
        if not (0 <= s.maker_fee_bps <= BPS and 0 <= s.taker_fee_bps <= BPS):
            problems.append("fees must be in 0..10000 bps")
        for code, dec in ((s.base_asset, s.base_decimals), (s.quote_asset, s.quote_decimals)):
            known = self._assets.get(code)
            if known is not None and known != dec:
                problems.append(f"asset {code} already has {known} decimals")
        if problems:
            raise _err("INVALID_INSTRUMENT", f"{s.symbol}: " + "; ".join(problems), "symbol")
        self._assets[s.base_asset] = s.base_decimals
        self._assets[s.quote_asset] = s.quote_decimals
        fee_cell = self._cell(self.fee_account_id, s.quote_asset)
        self._markets[s.symbol] = _Market(s, fee_cell)

    def instrument(self, symbol: str) -> InstrumentSpec:
        """Current spec of an instrument (``status`` reflects halts)."""
        m = self._market(symbol)
        status = InstrumentStatus.HALTED if m.halted else InstrumentStatus.TRADING
        if m.spec.status != status:
            m.spec = replace(m.spec, status=status)
        return m.spec

    def symbols(self) -> list[str]:
        """Registered instrument symbols, in registration order."""
        return list(self._markets)

    def asset_decimals(self, asset: str) -> int:
        """Decimals of a registered asset (for converting amounts at the edges)."""
        d = self._assets.get(asset)
        if d is None:
            raise _err("UNKNOWN_ASSET", f"unknown asset {asset!r}", "asset")
        return d

    # ------------------------------------------------------------------ plumbing

    def _market(self, symbol: str) -> _Market:
        m = self._markets.get(symbol)
        if m is None:
            raise _err("UNKNOWN_INSTRUMENT", f"unknown instrument {symbol!r}", "symbol")
        return m

    def _account(self, account_id: int) -> _Account:
        a = self._accounts.get(account_id)
        if a is None:
            a = self._accounts[account_id] = _Account()
            self._open_orders[account_id] = a.orders
        return a

    def _cell(self, account_id: int, asset: str) -> _Cell:
        cells = self._account(account_id).cells
        c = cells.get(asset)
        if c is None:
            c = cells[asset] = _Cell(account_id, asset)
        return c

    def _peek(self, account_id: int, asset: str) -> _Cell | None:
        a = self._accounts.get(account_id)
        return a.cells.get(asset) if a is not None else None

    def _begin(self) -> list[Effect]:
        fx: list[Effect] = []
        self._fx = fx
        return fx

    def _touch(self, c: _Cell) -> None:
        if c.stamp != self._batch:
            c.stamp = self._batch
            self._dirty.append(c)

    def flush(self) -> list[Effect]:
        """End of a batch: the book deltas and balance rows accumulated since the last call.

        One :class:`BookDelta` per symbol whose book changed (absolute sizes per changed
        level, coalesced over the batch, next ``book:SYM`` sequence), then one
        :class:`BalanceUpdate` per touched (account, asset) cell with its final values.
        The sequencer calls this once per batch before committing; calling it after every
        command gives per-command granularity.
        """
        fx: list[Effect] = []
        dirty = self._dirty
        for m in self._markets.values():
            bch = m.bids.changes
            ach = m.asks.changes
            if bch or ach:
                changes = [(BUY, p, sz) for p, sz in bch.items()]
                changes += [(SELL, p, sz) for p, sz in ach.items()]
                bch.clear()
                ach.clear()
                m.book_seq += 1
                fx.append(_tnew(BookDelta, (m.symbol, m.book_seq, changes)))
        fx += [_tnew(BalanceUpdate, (c.account_id, c.asset, c.total, c.locked)) for c in dirty]
        self._dirty = []
        self._batch += 1
        return fx

    # ------------------------------------------------------------------ balances

    def deposit(
        self, account_id: int, asset: str, amount: int, *, ref: str | None = None
    ) -> tuple[BalanceUpdate, list[Effect]]:
        """Money enters from outside (a posting from ``None``)."""
        self._check_amount(asset, amount)
        fx = self._begin()
        c = self._cell(account_id, asset)
        c.total += amount
        self._touch(c)
        fx.append(Posting(None, account_id, asset, amount, PostingReason.DEPOSIT, ref=ref))
        return self.balance(account_id, asset), fx

    def withdraw(
        self, account_id: int, asset: str, amount: int, *, ref: str | None = None
    ) -> tuple[BalanceUpdate, list[Effect]]:
        """Money leaves to the outside; never more than ``total - locked``."""
        self._check_amount(asset, amount)
        c = self._peek(account_id, asset)
        if c is None or c.total - c.locked < amount:
            raise _err("INSUFFICIENT_FUNDS", "amount exceeds the available balance", "amount")
        fx = self._begin()
        c.total -= amount
        self._touch(c)
        fx.append(Posting(account_id, None, asset, amount, PostingReason.WITHDRAWAL, ref=ref))
        return self.balance(account_id, asset), fx

    def credit(
        self,
        account_id: int,
        asset: str,
        amount: int,
        *,
        from_account_id: int | None = None,
        ref: str | None = None,
    ) -> tuple[BalanceUpdate, list[Effect]]:
        """Admin credit, from outside (``from_account_id=None``) or moved from another
        account (e.g. a treasury), which must have the amount available."""
        self._check_amount(asset, amount)
        if from_account_id is not None:
            if from_account_id == account_id:
                raise _err("INVALID_INPUT", "cannot credit an account from itself", "account")
            src = self._peek(from_account_id, asset)
            if src is None or src.total - src.locked < amount:
                raise _err("INSUFFICIENT_FUNDS", "source account lacks the amount", "amount")
        fx = self._begin()
        if from_account_id is not None:
            src = self._cell(from_account_id, asset)
            src.total -= amount
            self._touch(src)
        c = self._cell(account_id, asset)
        c.total += amount
        self._touch(c)
        fx.append(
            Posting(from_account_id, account_id, asset, amount, PostingReason.CREDIT, ref=ref)
        )
        return self.balance(account_id, asset), fx

    def _check_amount(self, asset: str, amount: int) -> None:
        if asset not in self._assets:
            raise _err("UNKNOWN_ASSET", f"unknown asset {asset!r}", "asset")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise _err("INVALID_AMOUNT", "amount must be a positive integer", "amount")

    def balance(self, account_id: int, asset: str) -> BalanceUpdate:
        """Current balance of one cell (zeros if it never existed)."""
        c = self._peek(account_id, asset)
        if c is None:
            return BalanceUpdate(account_id, asset, 0, 0)
        return BalanceUpdate(account_id, asset, c.total, c.locked)

    def balances(self, account_id: int | None = None) -> list[BalanceUpdate]:
        """All cells, or one account's, sorted by (account, asset)."""
        out = [
            BalanceUpdate(c.account_id, c.asset, c.total, c.locked)
            for acct, a in self._accounts.items()
            if account_id is None or acct == account_id
            for c in a.cells.values()
        ]
        out.sort(key=lambda v: (v.account_id, v.asset))
        return out

    # ------------------------------------------------------------------ instruments

    def halt(self, symbol: str) -> tuple[InstrumentSpec, list[Effect]]:
        """Stop accepting placements; cancels still work, stops don't trigger."""
        return self._set_status(symbol, True)

    def resume(self, symbol: str) -> tuple[InstrumentSpec, list[Effect]]:
        """Trade again; stops whose condition was met meanwhile trigger now."""
        return self._set_status(symbol, False)

    def _set_status(self, symbol: str, halted: bool) -> tuple[InstrumentSpec, list[Effect]]:
        m = self._market(symbol)
        fx = self._begin()
        if m.halted != halted:
            m.halted = halted
            status = InstrumentStatus.HALTED if halted else InstrumentStatus.TRADING
            fx.append(InstrumentStatusChanged(symbol, status))
            if not halted:
                self._check_stops(m)
        return self.instrument(symbol), fx

    def mark_price(self, symbol: str, price: int) -> tuple[list[int], list[Effect]]:
        """Set the last/mark price (e.g. from a feed) and trigger stops; returns the ids of
        the stops it triggered."""
        m = self._market(symbol)
        if not isinstance(price, int) or isinstance(price, bool) or price <= 0:
            raise _err("INVALID_PRICE", "price must be a positive integer", "price")
        fx = self._begin()
        m.last = price
        fx.append(MarkPrice(symbol, price))
        triggered = self._check_stops(m)
        return triggered, fx

    # ------------------------------------------------------------------ placing

    def place(self, req: OrderRequest) -> tuple[PlaceResult, list[Effect]]:
        """Validate, reserve, match, then rest or end the order; then run triggered stops.

        Plain GTC limits and plain market orders (nearly all traffic) take happy-path
        lanes that check everything in one go and hand anything unusual, including every
        error, to the general path (:meth:`_place`), the single source of truth for error
        codes.  The lanes are written flat on purpose: every call and attribute load shows
        in ``bench/bench_engine.py``.
        """
        m = self._markets.get(req.symbol)
        qty = req.quantity
        if (
            m is None
            or qty is None
            or qty <= 0
            or m.halted
            or qty % m.lot
            or qty < m.min_qty
            or req.stop_price is not None
            or req.quote_quantity is not None
            or req.client_order_id is not None
            or req.stp not in _STP_MODES
        ):
            return self._place(req)
        # Identity checks: a value that is merely equal (a plain str) takes the general path.
        otype = req.type
        if otype is not LIMIT or req.time_in_force is not GTC:
            if (
                otype is MARKET
                and not req.post_only
                and req.price is None
                and (req.time_in_force is GTC or req.time_in_force is IOC)
            ):
                return self._place_market(req, m, qty)
            return self._place(req)

        # ---- lane: plain GTC limit
        price = req.price
        if price is None or price <= 0 or price % m.tick:
            return self._place(req)
        side = req.side
        if side is BUY:
            is_buy = True
            own = m.bids
            okeys = m.asks.keys
            lim_key = -price
        elif side is SELL:
            is_buy = False
            own = m.asks
            okeys = m.bids.keys
            lim_key = price
        else:
            return self._place(req)
        n = price * qty * m.qm
        if n < m.min_notional:
            return self._place(req)
        crosses = okeys and okeys[-1] >= lim_key
        if crosses and req.post_only:
            return self._place(req)
        mem = m.members.get(req.account_id)
        if mem is None:  # first accepted order of this account here: the general path
            return self._place(req)
        index, bc, qc = mem
        if is_buy:  # resting can only ever pay the maker fee; taking may pay the taker fee
            res_bps = m.gtc_bps if crosses else m.maker_bps
            reserve = n - (-(n * res_bps) // BPS)
            c = qc
        else:
            res_bps = 0
            reserve = qty * m.bm
            c = bc
        if c.total - c.locked < reserve:
            return self._place(req)

        # ---- accepted
        oid = self._next_order_id
        self._next_order_id = oid + 1
        prio = self._next_priority
        self._next_priority = prio + 1
        o = _Order(oid, req, m, is_buy, price, qty, -1, res_bps, reserve, prio, bc, qc, index)
        c.locked += reserve
        if c.stamp != self._batch:
            c.stamp = self._batch
            self._dirty.append(c)
        if crosses:
            fx: list[Effect] = []
            self._fx = fx
            trades: list[Trade] = []
            outcome = self._match_buy(o, m, trades) if is_buy else self._match_sell(o, m, trades)
            if outcome == 1:
                snap = self._end(o, FILLED, None)
            elif outcome == 2:
                snap = self._end(o, EXPIRED, "STP")
            else:
                snap = self._rest(o, m)
            result: PlaceResult = _tnew(PlaceResult, (snap, trades, False))
            if m.stops:
                self._check_stops(m)
            return result, fx
        # rests without matching (an inlined _rest)
        lvl = own.levels.get(-lim_key)
        if lvl is None:
            lvl = own.level_for(price)
        lvl.orders.append(o)
        lvl.count += 1
        size = lvl.size = lvl.size + qty
        own.changes[price] = size
        o.live = True
        index[oid] = o
        snap = _tnew(
            OrderUpdate, (oid, NEW, 0, qty, 0, 0, 0, reserve, 0, price, prio, False, None, req)
        )
        return _tnew(PlaceResult, (snap, [], False)), [snap]

    def _place_market(
        self, req: OrderRequest, m: _Market, qty: int
    ) -> tuple[PlaceResult, list[Effect]]:
        """Happy-path lane for a plain market order by quantity (see :meth:`place`);
        :meth:`_protection`, ``_Order.__init__`` and :meth:`_end` are inlined."""
        side = req.side
        if side is BUY:
            is_buy = True
            opp = m.asks
        elif side is SELL:
            is_buy = False
            opp = m.bids
        else:
            return self._place(req)
        okeys = opp.keys
        if not okeys:  # nothing to trade against: the general path expires it
            return self._place(req)
        mem = m.members.get(req.account_id)
        if mem is None:
            return self._place(req)
        index, bc, qc = mem
        tick = m.tick
        best = opp.levels[okeys[-1]].price
        if is_buy:  # protection price: best opposite +/- the band, on tick
            limit = best * (BPS + self.market_band_bps) // BPS
            limit -= limit % tick
            res_bps = m.taker_bps
            n = limit * qty * m.qm
            reserve = n - (-(n * res_bps) // BPS)
            c = qc
        else:
            limit = -(-best * (BPS - self.market_band_bps) // BPS)
            r = limit % tick
            if r:
                limit += tick - r
            if limit <= tick:
                limit = tick
            res_bps = 0
            reserve = qty * m.bm
            c = bc
        if c.total - c.locked < reserve:
            return self._place(req)
        oid = self._next_order_id
        self._next_order_id = oid + 1
        prio = self._next_priority
        self._next_priority = prio + 1
        o = _Order(oid, req, m, is_buy, limit, qty, -1, res_bps, reserve, prio, bc, qc, index)
        c.locked += reserve
        batch = self._batch
        if c.stamp != batch:
            c.stamp = batch
            self._dirty.append(c)
        fx: list[Effect] = []
        self._fx = fx
        trades: list[Trade] = []
        outcome = self._match_buy(o, m, trades) if is_buy else self._match_sell(o, m, trades)
        if outcome == 1:
            status = FILLED
            reason = None
        else:
            status = EXPIRED
            reason = "STP" if outcome == 2 else "MARKET"
        o.status = status
        left = o.reserved
        if left:  # release what the order no longer needs
            o.reserved = 0
            c.locked -= left
            if c.stamp != batch:
                c.stamp = batch
                self._dirty.append(c)
        snap: OrderUpdate = _tnew(
            OrderUpdate,
            (oid, status, o.filled, o.remaining, o.quote_filled, o.fee_paid, o.fee_num, 0, 0,
             limit, prio, False, reason, req),
        )  # fmt: skip
        fx.append(snap)
        result: PlaceResult = _tnew(PlaceResult, (snap, trades, False))
        if m.stops:
            self._check_stops(m)
        return result, fx

    def _place(self, req: OrderRequest) -> tuple[PlaceResult, list[Effect]]:
        """General placement path: every order type, every check, every error code."""
        acct = req.account_id
        coid = req.client_order_id
        if coid is not None:
            replay = self._replay(req, acct, coid)
            if replay is not None:
                return replay, []
        m = self._markets.get(req.symbol)
        if m is None:
            raise _err("UNKNOWN_INSTRUMENT", f"unknown instrument {req.symbol!r}", "symbol")
        if m.halted:
            raise _err("INSTRUMENT_HALTED", f"{m.symbol} is halted", "symbol")
        side = req.side
        if side == BUY:
            is_buy = True
        elif side == SELL:
            is_buy = False
        else:
            raise _err("INVALID_ORDER", f"unknown side {side!r}", "side")
        qty = req.quantity
        price = req.price
        quote_qty = req.quote_quantity
        tif = req.time_in_force
        is_stop, is_market, tif = _check_shape(req, is_buy)
        if price is not None and price % m.tick:
            raise _err("INVALID_PRICE_TICK", f"price must be a multiple of {m.tick}", "price")
        if qty is not None:
            if qty % m.lot:
                raise _err(
                    "INVALID_QUANTITY_STEP", f"quantity must be a multiple of {m.lot}", "quantity"
                )
            if qty < m.min_qty:
                raise _err("BELOW_MIN_QUANTITY", f"quantity is below {m.min_qty}", "quantity")
        qm = m.qm
        if not is_market:
            if price * qty * qm < m.min_notional:  # type: ignore[operator]
                raise _err("BELOW_MIN_NOTIONAL", f"notional is below {m.min_notional}", "price")
        elif quote_qty is not None and quote_qty < m.min_notional:
            raise _err("BELOW_MIN_NOTIONAL", f"notional is below {m.min_notional}", "quoteQuantity")
        stop = 0
        if is_stop:
            stop = req.stop_price  # type: ignore[assignment]
            if stop % m.tick:
                raise _err(
                    "INVALID_PRICE_TICK", f"stopPrice must be a multiple of {m.tick}", "stopPrice"
                )
            last = m.last
            if last is not None and (last >= stop if is_buy else last <= stop):
                raise _err("STOP_WOULD_TRIGGER", "stopPrice would trigger immediately", "stopPrice")

        # Effective limit: the price, or for market orders the protection price.
        okeys = m.asks.keys if is_buy else m.bids.keys
        if not is_market:
            limit: int = price  # type: ignore[assignment]
        elif is_stop:  # STOP_MARKET: a buy by quantity reserves against its cap
            limit = 0
            if is_buy and quote_qty is None:
                p = stop * (BPS + self.market_band_bps) // BPS
                limit = p - p % m.tick
        else:
            limit = self._protection(m, is_buy) if okeys else 0
        lim_key = -limit if is_buy else limit
        crosses = okeys and okeys[-1] >= lim_key
        post_only = req.post_only
        if post_only and crosses and not is_stop:
            raise _err("POST_ONLY_WOULD_TAKE", "postOnly order would take liquidity", "postOnly")

        # Reservation: quote for buys (notional at the limit + worst fee), base for sells.
        budget = -1
        if is_buy:
            if quote_qty is not None:
                budget = n = quote_qty
                res_bps = m.taker_bps
            else:
                n = limit * qty * qm  # type: ignore[operator]
                if post_only or (tif == GTC and not is_market and not crosses and not is_stop):
                    res_bps = m.maker_bps  # it will rest: only the maker fee can apply
                elif tif == GTC and not is_market:
                    res_bps = m.gtc_bps  # may take first, then rest
                else:
                    res_bps = m.taker_bps
            reserve = n - (-(n * res_bps) // BPS)
        else:
            res_bps = 0
            reserve = qty * m.bm  # type: ignore[operator]
        a = self._accounts.get(acct)
        if a is None:
            bc = qc = None
        else:
            cells = a.cells
            bc = cells.get(m.base)
            qc = cells.get(m.quote)
        c = qc if is_buy else bc
        if reserve and (c is None or c.total - c.locked < reserve):
            raise _err("INSUFFICIENT_FUNDS", "insufficient available balance", "quantity")
        if (
            tif == FOK and not is_stop and not self._fillable(m, is_buy, limit, qty, acct, req.stp)  # type: ignore[arg-type]
        ):
            raise _err("FOK_NOT_FILLABLE", "order cannot be filled completely", "quantity")

        # ---- accepted: state changes from here on
        if a is None:
            a = self._account(acct)
        if bc is None:
            bc = a.cells[m.base] = _Cell(acct, m.base)
        if qc is None:
            qc = a.cells[m.quote] = _Cell(acct, m.quote)
        if acct not in m.members:
            m.members[acct] = (a.orders, bc, qc)
        oid = self._next_order_id
        self._next_order_id = oid + 1
        prio = self._next_priority
        self._next_priority = prio + 1
        o = _Order(
            oid, req, m, is_buy, limit, qty or 0, budget, res_bps, reserve, prio, bc, qc, a.orders
        )
        c = qc if is_buy else bc
        c.locked += reserve
        self._touch(c)
        fx: list[Effect] = []
        self._fx = fx
        trades: list[Trade] = []
        if is_stop:
            m.stops.append(o)
            if is_buy:
                if stop < m.min_buy_stop:
                    m.min_buy_stop = stop
            elif stop > m.max_sell_stop:
                m.max_sell_stop = stop
            self._index(o)
            snap = _snap(o)
            fx.append(snap)
        elif crosses:
            snap = self._run(o, m, trades, is_market, tif)
        elif is_market:
            snap = self._end(o, EXPIRED, "NO_LIQUIDITY")
        elif tif != GTC:  # IOC/FOK limit with nothing to take
            snap = self._end(o, EXPIRED, str(tif))
        else:
            snap = self._rest(o, m)
        result: PlaceResult = _tnew(PlaceResult, (snap, trades, False))
        if coid is not None:
            self._coids[(acct, coid)] = _CoidEntry(req, result, oid)
        if m.stops:
            self._check_stops(m)
        return result, fx

    def _replay(self, req: OrderRequest, acct: int, coid: str) -> PlaceResult | None:
        """clientOrderId check: the stored result for an identical retry, else ``None``."""
        if not isinstance(coid, str) or CLIENT_ORDER_ID_RE.fullmatch(coid) is None:
            raise _err(
                "INVALID_CLIENT_ORDER_ID",
                "clientOrderId must be 1-36 chars of [A-Za-z0-9._:/-]",
                "clientOrderId",
            )
        entry = self._coids.get((acct, coid))
        if entry is None:
            return None
        if entry.request != req:
            raise _err(
                "DUPLICATE_CLIENT_ORDER_ID",
                "clientOrderId was already used with different parameters",
                "clientOrderId",
            )
        r = entry.result
        return PlaceResult(r.order, r.trades, True)

    def _protection(self, m: _Market, is_buy: bool) -> int:
        """Worst price a market order may trade at: best opposite +/- the band, on tick."""
        tick = m.tick
        if is_buy:
            p = m.asks.levels[m.asks.keys[-1]].price * (BPS + self.market_band_bps) // BPS
            return p - p % tick
        p = -(-m.bids.levels[m.bids.keys[-1]].price * (BPS - self.market_band_bps) // BPS)
        r = p % tick
        if r:
            p += tick - r
        return p if p > tick else tick

    def _fillable(
        self, m: _Market, is_buy: bool, limit: int, qty: int, acct: int, stp: STPMode
    ) -> bool:
        """FOK dry run mirroring :meth:`_match`, self-trade prevention included."""
        opp = m.asks if is_buy else m.bids
        lim_key = -limit if is_buy else limit
        need = qty
        levels = opp.levels
        for key in reversed(opp.keys):
            if key < lim_key:
                return False
            lvl = levels[key]
            if stp == STP_NONE:
                need -= lvl.size
                if need <= 0:
                    return True
                continue
            for mk in lvl.orders:
                if not mk.live:
                    continue
                if mk.account_id == acct:
                    if stp == EXPIRE_MAKER:
                        continue
                    return False  # EXPIRE_TAKER / EXPIRE_BOTH end the taker here
                need -= mk.remaining
                if need <= 0:
                    return True
        return False

    def _run(
        self, o: _Order, m: _Market, trades: list[Trade], is_market: bool, tif: str
    ) -> OrderUpdate:
        """Match ``o`` as taker, then rest it (GTC limit) or end it; returns its update."""
        outcome = self._match(o, m, trades)
        if outcome == 1:
            return self._end(o, FILLED, None)
        if outcome == 2:
            return self._end(o, EXPIRED, "STP")
        if outcome == 3:
            return self._end(o, EXPIRED, "BUDGET_TOO_SMALL")
        if is_market:
            return self._end(o, EXPIRED, "MARKET")
        if tif != GTC:
            return self._end(o, EXPIRED, str(tif))
        return self._rest(o, m)

    def _rest(self, o: _Order, m: _Market) -> OrderUpdate:
        """Put a (possibly partly filled) order in the book.  From now on it can only pay
        the maker fee, so a buy's reservation drops to that rate."""
        if o.is_buy and o.res_bps != m.maker_bps:
            o.res_bps = m.maker_bps
            rest = o.limit * o.remaining * m.qm
            need = rest - (-(o.fee_num + rest * o.res_bps) // BPS) - o.fee_paid
            c = o.quote_cell
            c.locked -= o.reserved - need
            o.reserved = need
            self._touch(c)
        o.status = PARTIALLY_FILLED if o.filled else NEW
        side = m.bids if o.is_buy else m.asks
        lvl = side.level_for(o.limit)
        lvl.orders.append(o)
        lvl.count += 1
        lvl.size += o.remaining
        o.live = True
        side.changes[lvl.price] = lvl.size
        self._index(o)
        snap = _snap(o)
        self._fx.append(snap)
        return snap

    def _end(self, o: _Order, status: OrderStatus, reason: str | None) -> OrderUpdate:
        """Final state of an order that is not (or no longer) in the book: release funds."""
        o.status = status
        if o.reserved:
            c = o.quote_cell if o.is_buy else o.base_cell
            c.locked -= o.reserved
            o.reserved = 0
            self._touch(c)
        snap = _snap(o, reason)
        self._fx.append(snap)
        return snap

    def _index(self, o: _Order) -> None:
        o.index[o.order_id] = o

    def _unindex(self, o: _Order) -> None:
        del o.index[o.order_id]

    def _all_orders(self) -> list[_Order]:
        return [o for a in self._accounts.values() for o in a.orders.values()]

    # ------------------------------------------------------------------ matching

    def _match(self, o: _Order, m: _Market, trades: list[Trade]) -> int:
        """Take liquidity for ``o``.

        Returns 1 when ``o`` is filled (a quote budget counts as filled once it can't
        buy another lot), 2 when self-trade prevention ended it, 3 when a budget can't buy
        a single lot, 0 when its price limit or the liquidity ran out.
        The two sides are separate loops because this is the hottest code in the engine:
        the taker's state lives in locals and is settled once after the loop (nothing
        observes it in between, and the per-fill releases telescope to the same sum),
        while each maker is settled per fill since it stays in the book.
        """
        if o.is_buy:
            return self._match_buy(o, m, trades)
        return self._match_sell(o, m, trades)

    def _stp_expire_maker(self, mk: _Order, lvl: Level) -> None:
        """Self-trade prevention ended a resting maker at the front of its level."""
        lvl.orders.popleft()
        mk.live = False
        lvl.count -= 1
        lvl.size -= mk.remaining
        self._unindex(mk)
        self._end(mk, EXPIRED, "STP")

    def _match_buy(self, o: _Order, m: _Market, trades: list[Trade]) -> int:
        """Taker buys from the asks; makers are sellers (their reservation is base)."""
        asks = m.asks
        levels = asks.levels
        keys = asks.keys
        changes = asks.changes
        lim_key = -o.limit
        acct = o.account_id
        stp = o.request.stp
        check_stp = stp != STP_NONE
        qm = m.qm
        bm = m.bm
        lot = m.lot
        tbps = m.taker_bps
        mbps = m.maker_bps
        fx = self._fx
        batch = self._batch
        dirty = self._dirty
        sym = m.symbol
        base = m.base
        quote = m.quote
        fee_acct = self.fee_account_id
        tid = self._next_trade_id - 1  # last id used; ids and seqs live in locals here
        seq = m.trades_seq
        toid = o.order_id
        budget = o.budget
        use_budget = budget >= 0
        remaining = o.remaining
        fee_num = o.fee_num
        fee_paid = o.fee_paid
        filled = spent = maker_fees = traded = 0
        outcome = 0
        while keys:
            key = keys[-1]
            if key < lim_key:
                break
            lvl = levels[key]
            q = lvl.orders
            price = lvl.price
            pq = price * qm  # notional of one qty unit at this level
            # the level's aggregates live in locals until the level is done
            size = size0 = lvl.size
            count = lvl.count
            while count:
                mk = q[0]
                if not mk.live:
                    q.popleft()
                    continue
                if check_stp and mk.account_id == acct:
                    lvl.size = size
                    lvl.count = count
                    if stp == EXPIRE_TAKER:
                        outcome = 2
                        break
                    self._stp_expire_maker(mk, lvl)
                    size = lvl.size
                    count = lvl.count
                    if stp == EXPIRE_BOTH:
                        outcome = 2
                        break
                    continue
                mrem = mk.remaining
                if use_budget:
                    fq = budget // pq
                    fq -= fq % lot
                    if fq > mrem:
                        fq = mrem
                    if fq <= 0:
                        outcome = 3  # the budget can't buy another lot here
                        break
                    n = pq * fq
                    budget -= n
                else:
                    fq = remaining if remaining < mrem else mrem
                    remaining -= fq
                    n = pq * fq
                b = fq * bm
                # cumulative per-order fee rounding (module docstring)
                fee_num += n * tbps
                tf = -(-fee_num // BPS) - fee_paid
                fee_paid += tf
                fn = mk.fee_num + n * mbps
                mpaid = -(-fn // BPS)
                mf = mpaid - mk.fee_paid
                mk.fee_num = fn
                mk.fee_paid = mpaid
                filled += fq
                spent += n
                maker_fees += mf
                # maker (seller): deliver base out of its reservation, receive n - fee
                mrem -= fq
                mk.remaining = mrem
                mfilled = mk.filled = mk.filled + fq
                mquote = mk.quote_filled = mk.quote_filled + n
                mres = mk.reserved = mk.reserved - b
                c = mk.base_cell
                c.total -= b
                c.locked -= b
                if c.stamp != batch:
                    c.stamp = batch
                    dirty.append(c)
                c = mk.quote_cell
                c.total += n - mf
                if c.stamp != batch:
                    c.stamp = batch
                    dirty.append(c)
                tid += 1
                seq += 1
                traded = price
                moid = mk.order_id
                t: Trade = _tnew(
                    Trade,
                    (tid, sym, seq, price, fq, n, b, BUY, toid, acct, moid, mk.account_id,
                     tf, mf, base, quote, fee_acct),
                )  # fmt: skip
                fx.append(t)
                trades.append(t)
                size -= fq
                if mrem == 0:
                    q.popleft()
                    mk.live = False
                    count -= 1
                    del mk.index[moid]
                    status = mk.status = FILLED
                else:
                    status = mk.status = PARTIALLY_FILLED
                fx.append(
                    _tnew(
                        OrderUpdate,
                        (moid, status, mfilled, mrem, mquote, mpaid, fn, mres, 0, price,
                         mk.priority, mk.triggered, None, mk.request),
                    )
                )  # fmt: skip
                if remaining == 0 and not use_budget:
                    outcome = 1
                    break
            lvl.size = size
            lvl.count = count
            if size != size0:
                changes[price] = size
            if count == 0:
                del levels[key]
                keys.pop()
            if outcome:
                break
        self._next_trade_id = tid + 1
        m.trades_seq = seq
        if use_budget and outcome != 2 and (outcome == 3 or budget == 0):
            outcome = 1 if filled else 3
        if filled:
            m.last = traded
            # settle the taker once: pay notional + fee, release what the rest can't cost
            taker_fee = fee_paid - o.fee_paid
            o.filled += filled
            o.quote_filled += spent
            o.fee_num = fee_num
            o.fee_paid = fee_paid
            if use_budget:
                o.budget = rest = budget
            else:
                o.remaining = remaining
                rest = o.limit * remaining * qm
            need = rest - (-(fee_num + rest * o.res_bps) // BPS) - fee_paid
            c = o.quote_cell
            c.total -= spent + taker_fee
            c.locked -= o.reserved - need
            o.reserved = need
            o.base_cell.total += filled * bm
            m.fee_cell.total += maker_fees + taker_fee
            for c in (o.base_cell, o.quote_cell, m.fee_cell):
                if c.stamp != batch:
                    c.stamp = batch
                    dirty.append(c)
        return outcome

    def _match_sell(self, o: _Order, m: _Market, trades: list[Trade]) -> int:
        """Taker sells into the bids; makers are buyers (their reservation is quote)."""
        bids = m.bids
        levels = bids.levels
        keys = bids.keys
        changes = bids.changes
        lim_key = o.limit
        acct = o.account_id
        stp = o.request.stp
        check_stp = stp != STP_NONE
        qm = m.qm
        bm = m.bm
        tbps = m.taker_bps
        mbps = m.maker_bps
        fx = self._fx
        batch = self._batch
        dirty = self._dirty
        sym = m.symbol
        base = m.base
        quote = m.quote
        fee_acct = self.fee_account_id
        tid = self._next_trade_id - 1  # last id used; ids and seqs live in locals here
        seq = m.trades_seq
        toid = o.order_id
        remaining = o.remaining
        fee_num = o.fee_num
        fee_paid = o.fee_paid
        filled = proceeds = maker_fees = traded = 0
        outcome = 0
        while keys:
            key = keys[-1]
            if key < lim_key:
                break
            lvl = levels[key]
            q = lvl.orders
            price = lvl.price
            pq = price * qm  # notional of one qty unit at this level
            # the level's aggregates live in locals until the level is done
            size = size0 = lvl.size
            count = lvl.count
            while count:
                mk = q[0]
                if not mk.live:
                    q.popleft()
                    continue
                if check_stp and mk.account_id == acct:
                    lvl.size = size
                    lvl.count = count
                    if stp == EXPIRE_TAKER:
                        outcome = 2
                        break
                    self._stp_expire_maker(mk, lvl)
                    size = lvl.size
                    count = lvl.count
                    if stp == EXPIRE_BOTH:
                        outcome = 2
                        break
                    continue
                mrem = mk.remaining
                fq = remaining if remaining < mrem else mrem
                remaining -= fq
                n = pq * fq
                b = fq * bm
                fee_num += n * tbps
                tf = -(-fee_num // BPS) - fee_paid
                fee_paid += tf
                fn = mk.fee_num + n * mbps
                mpaid = -(-fn // BPS)
                mf = mpaid - mk.fee_paid
                mk.fee_num = fn
                mk.fee_paid = mpaid
                filled += fq
                proceeds += n
                maker_fees += mf
                # maker (buyer): pay n + fee from its reservation, release the surplus
                mrem -= fq
                mk.remaining = mrem
                mfilled = mk.filled = mk.filled + fq
                mquote = mk.quote_filled = mk.quote_filled + n
                rest = pq * mrem
                need = rest - (-(fn + rest * mk.res_bps) // BPS) - mpaid
                c = mk.quote_cell
                c.total -= n + mf
                c.locked -= mk.reserved - need
                mk.reserved = need
                if c.stamp != batch:
                    c.stamp = batch
                    dirty.append(c)
                c = mk.base_cell
                c.total += b
                if c.stamp != batch:
                    c.stamp = batch
                    dirty.append(c)
                tid += 1
                seq += 1
                traded = price
                moid = mk.order_id
                t: Trade = _tnew(
                    Trade,
                    (tid, sym, seq, price, fq, n, b, SELL, toid, acct, moid, mk.account_id,
                     tf, mf, base, quote, fee_acct),
                )  # fmt: skip
                fx.append(t)
                trades.append(t)
                size -= fq
                if mrem == 0:
                    q.popleft()
                    mk.live = False
                    count -= 1
                    del mk.index[moid]
                    status = mk.status = FILLED
                else:
                    status = mk.status = PARTIALLY_FILLED
                fx.append(
                    _tnew(
                        OrderUpdate,
                        (moid, status, mfilled, mrem, mquote, mpaid, fn, need, 0, price,
                         mk.priority, mk.triggered, None, mk.request),
                    )
                )  # fmt: skip
                if remaining == 0:
                    outcome = 1
                    break
            lvl.size = size
            lvl.count = count
            if size != size0:
                changes[price] = size
            if count == 0:
                del levels[key]
                keys.pop()
            if outcome:
                break
        self._next_trade_id = tid + 1
        m.trades_seq = seq
        if filled:
            m.last = traded
            # settle the taker once: deliver base from its reservation, receive n - fee
            taker_fee = fee_paid - o.fee_paid
            base_out = filled * bm
            o.filled += filled
            o.quote_filled += proceeds
            o.fee_num = fee_num
            o.fee_paid = fee_paid
            o.remaining = remaining
            o.reserved -= base_out
            c = o.base_cell
            c.total -= base_out
            c.locked -= base_out
            o.quote_cell.total += proceeds - taker_fee
            m.fee_cell.total += maker_fees + taker_fee
            for c in (o.base_cell, o.quote_cell, m.fee_cell):
                if c.stamp != batch:
                    c.stamp = batch
                    dirty.append(c)
        return outcome

    # ------------------------------------------------------------------ stops

    def _check_stops(self, m: _Market) -> list[int]:
        """Trigger every stop whose condition holds, earliest placed first, repeatedly."""
        triggered: list[int] = []
        while m.stops and m.last is not None and not m.halted:
            last = m.last
            if m.max_sell_stop < last < m.min_buy_stop:
                break
            pick = None
            for s in m.stops:
                if (last >= s.stop) if s.is_buy else (last <= s.stop):
                    pick = s
                    break
            if pick is None:  # pragma: no cover - the bounds are exact
                break
            m.stops.remove(pick)
            m.refresh_stop_bounds()
            triggered.append(pick.order_id)
            self._trigger(pick, m)
        return triggered

    def _trigger(self, o: _Order, m: _Market) -> None:
        self._unindex(o)
        o.triggered = True
        o.priority = self._next_priority
        self._next_priority += 1
        req = o.request
        is_market = req.type == STOP_MARKET
        tif = req.time_in_force
        if is_market and tif != FOK:
            tif = IOC
        is_buy = o.is_buy
        opp = m.asks if is_buy else m.bids
        if is_market:
            if not opp.keys:
                self._end(o, EXPIRED, "NO_LIQUIDITY")
                return
            p = self._protection(m, is_buy)
            if is_buy and o.budget < 0 and o.limit < p:
                p = o.limit  # never above the cap the reservation was made for
            o.limit = p
        lim_key = -o.limit if is_buy else o.limit
        crosses = bool(opp.keys) and opp.keys[-1] >= lim_key
        if req.post_only and crosses:
            self._end(o, EXPIRED, "POST_ONLY")
        elif tif == FOK and not self._fillable(
            m, is_buy, o.limit, o.remaining, o.account_id, req.stp
        ):
            self._end(o, EXPIRED, "FOK")
        elif crosses:
            self._run(o, m, [], is_market, tif)
        elif is_market:
            self._end(o, EXPIRED, "MARKET")
        elif tif != GTC:
            self._end(o, EXPIRED, str(tif))
        else:
            self._rest(o, m)

    # ------------------------------------------------------------------ cancelling

    def cancel(
        self, account_id: int, order_id: int | None = None, *, client_order_id: str | None = None
    ) -> tuple[OrderUpdate, list[Effect]]:
        """Cancel one open order (resting or pending stop) of ``account_id``."""
        if order_id is None and client_order_id is not None:
            entry = self._coids.get((account_id, client_order_id))
            order_id = entry.order_id if entry is not None else None
        orders = self._open_orders.get(account_id)
        if orders is None or order_id is None or (o := orders.get(order_id)) is None:
            raise _err("ORDER_NOT_FOUND", "no such open order", "id")
        if not o.live:  # a pending stop
            fx = self._begin()
            return self._remove_open(o, CANCELED, "CANCELED"), fx
        # Fast path (inlined _remove_open/_end): one level, one cell change.
        m = o.m
        price = o.limit
        if o.is_buy:
            own = m.bids
            lvl = own.levels[price]
            c = o.quote_cell
        else:
            own = m.asks
            lvl = own.levels[-price]
            c = o.base_cell
        o.live = False
        count = lvl.count = lvl.count - 1
        remaining = o.remaining
        size = lvl.size = lvl.size - remaining
        if count == 0:
            own.drop_level(lvl)
        elif len(lvl.orders) > 2 * count + 16:
            lvl.orders = deque([x for x in lvl.orders if x.live])
        oid = o.order_id
        del orders[oid]
        own.changes[price] = size
        c.locked -= o.reserved
        if c.stamp != self._batch:
            c.stamp = self._batch
            self._dirty.append(c)
        o.reserved = 0
        o.status = CANCELED
        snap: OrderUpdate = _tnew(
            OrderUpdate,
            (oid, CANCELED, o.filled, remaining, o.quote_filled, o.fee_paid, o.fee_num, 0, 0,
             price, o.priority, o.triggered, "CANCELED", o.request),
        )  # fmt: skip
        return snap, [snap]

    def cancel_all(
        self, account_id: int, symbol: str | None = None
    ) -> tuple[list[OrderUpdate], list[Effect]]:
        """Cancel every open order of the account (optionally one symbol), oldest first."""
        if symbol is not None:
            self._market(symbol)
        fx = self._begin()
        out: list[OrderUpdate] = []
        a = self._accounts.get(account_id)
        if a is not None:
            for o in sorted(a.orders.values(), key=_by_priority):
                if symbol is None or o.m.symbol == symbol:
                    out.append(self._remove_open(o, CANCELED, "CANCELED"))
        return out, fx

    def _remove_open(self, o: _Order, status: OrderStatus, reason: str) -> OrderUpdate:
        m = o.m
        if o.live:
            side = m.bids if o.is_buy else m.asks
            lvl = side.levels[o.limit * side.sign]
            o.live = False
            lvl.count -= 1
            lvl.size -= o.remaining
            side.changes[lvl.price] = lvl.size
            if lvl.count == 0:
                side.drop_level(lvl)
            elif len(lvl.orders) > 2 * lvl.count + 16:
                lvl.orders = deque([x for x in lvl.orders if x.live])
        else:
            m.stops.remove(o)
            m.refresh_stop_bounds()
        self._unindex(o)
        return self._end(o, status, reason)

    # ------------------------------------------------------------------ queries

    def depth(self, symbol: str, levels: int = 20) -> BookSnapshot:
        """Top-N snapshot; apply the deltas whose ``seq`` is greater on top of it."""
        m = self._market(symbol)
        return BookSnapshot(symbol, m.book_seq, m.bids.depth(levels), m.asks.depth(levels))

    def best_bid_ask(self, symbol: str) -> tuple[int | None, int | None]:
        """Top of book prices (``None`` for an empty side)."""
        m = self._market(symbol)
        return m.bids.best_price(), m.asks.best_price()

    def last_price(self, symbol: str) -> int | None:
        """Last trade or mark price, the one stops trigger on (persist it for rebuilds)."""
        return self._market(symbol).last

    def get_order(self, account_id: int, order_id: int) -> OrderUpdate | None:
        """Snapshot of an *open* order (resting or pending stop), else ``None``."""
        a = self._accounts.get(account_id)
        o = a.orders.get(order_id) if a is not None else None
        return _snap(o) if o is not None else None

    def open_orders(
        self, account_id: int | None = None, symbol: str | None = None
    ) -> list[OrderUpdate]:
        """Open orders in time priority, the order :meth:`restore_order` wants them in."""
        src: Iterable[_Order]
        if account_id is None:
            src = self._all_orders()
        else:
            a = self._accounts.get(account_id)
            src = a.orders.values() if a is not None else ()
        out = [_snap(o) for o in src if symbol is None or o.m.symbol == symbol]
        out.sort(key=lambda u: u.priority)
        return out

    def book_orders(self, symbol: str, side: Side) -> list[list[OrderUpdate]]:
        """Resting orders per level, best level first, each in time priority (L3 view)."""
        m = self._market(symbol)
        bs = m.bids if side == BUY else m.asks
        return [[_snap(o) for o in lvl.live_orders()] for lvl in bs.iter_levels()]

    # ------------------------------------------------------------------ rebuild

    def load_balance(self, account_id: int, asset: str, total: int, locked: int) -> None:
        """Set a balance cell from the database (rebuild only; no effects)."""
        if asset not in self._assets:
            raise _err("UNKNOWN_ASSET", f"unknown asset {asset!r}", "asset")
        if not 0 <= locked <= total:
            raise ValueError(f"bad balance {account_id}/{asset}: total={total} locked={locked}")
        c = self._cell(account_id, asset)
        c.total = total
        c.locked = locked

    def restore_order(self, state: OrderUpdate) -> None:
        """Put an open order back (rebuild only): no matching, no balance change.

        Call in ascending ``priority``.  Balances, with their ``locked``, are loaded
        separately; :meth:`check_invariants` verifies that both agree.
        """
        req = state.request
        m = self._market(req.symbol)
        if state.status not in (NEW, PARTIALLY_FILLED):
            raise ValueError(f"order {state.order_id} is not open ({state.status})")
        if state.order_id in self._account(req.account_id).orders:
            raise ValueError(f"order {state.order_id} restored twice")
        if state.priority <= m.last_restored:
            raise ValueError("restore_order must be called in ascending priority")
        m.last_restored = state.priority
        is_buy = req.side == BUY
        pending_stop = req.type in (STOP_LIMIT, STOP_MARKET) and not state.triggered
        a = self._account(req.account_id)
        bc = self._cell(req.account_id, m.base)
        qc = self._cell(req.account_id, m.quote)
        m.members.setdefault(req.account_id, (a.orders, bc, qc))
        o = _Order(
            state.order_id,
            req,
            m,
            is_buy,
            state.limit_price,
            state.remaining_qty,
            state.budget_left if req.quote_quantity is not None else -1,
            _reserve_bps(m, req, pending_stop),
            state.reserved,
            state.priority,
            bc,
            qc,
            a.orders,
        )
        o.filled = state.filled_qty
        o.quote_filled = state.quote_filled
        o.fee_paid = state.fee_paid
        o.fee_num = state.fee_accrued
        o.status = state.status
        o.triggered = state.triggered
        if pending_stop:
            m.stops.append(o)
            m.refresh_stop_bounds()
        else:
            side = m.bids if is_buy else m.asks
            lvl = side.level_for(o.limit)
            lvl.orders.append(o)
            lvl.count += 1
            lvl.size += o.remaining
            o.live = True
        self._index(o)
        coid = req.client_order_id
        if coid is not None:
            self._coids[(req.account_id, coid)] = _CoidEntry(
                req, PlaceResult(state, []), o.order_id
            )
        self._next_order_id = max(self._next_order_id, o.order_id + 1)
        self._next_priority = max(self._next_priority, o.priority + 1)

    def restore_last_price(self, symbol: str, price: int | None) -> None:
        """Set the last price without triggering anything (rebuild only)."""
        self._market(symbol).last = price

    def remember_client_order_id(self, request: OrderRequest, result: PlaceResult) -> None:
        """Re-register a closed order's clientOrderId so retries stay idempotent."""
        if request.client_order_id is None:
            raise ValueError("request has no client_order_id")
        self._coids[(request.account_id, request.client_order_id)] = _CoidEntry(
            request, result, result.order.order_id
        )

    def knows_client_order_id(self, account_id: int, client_order_id: str) -> bool:
        """Whether ``client_order_id`` is in the idempotency memory (open, or remembered)."""
        return (account_id, client_order_id) in self._coids

    def forget_client_order_id(self, account_id: int, client_order_id: str) -> None:
        """Drop an idempotency entry (the sequencer prunes after its retention period)."""
        self._coids.pop((account_id, client_order_id), None)

    def counters(self) -> EngineCounters:
        """Id counters and per-topic sequences, to persist with each batch."""
        topics: dict[str, int] = {}
        for sym, m in self._markets.items():
            topics[f"book:{sym}"] = m.book_seq
            topics[f"trades:{sym}"] = m.trades_seq
        return EngineCounters(self._next_order_id, self._next_trade_id, self._next_priority, topics)

    def set_counters(
        self,
        *,
        next_order_id: int | None = None,
        next_trade_id: int | None = None,
        next_priority: int | None = None,
        topic_seqs: Mapping[str, int] | None = None,
    ) -> None:
        """Restore id counters and per-topic sequences (``book:SYM``, ``trades:SYM``)."""
        if next_order_id is not None:
            self._next_order_id = next_order_id
        if next_trade_id is not None:
            self._next_trade_id = next_trade_id
        if next_priority is not None:
            self._next_priority = next_priority
        for topic, seq in (topic_seqs or {}).items():
            kind, _, sym = topic.partition(":")
            m = self._market(sym)
            if kind == "book":
                m.book_seq = seq
            elif kind == "trades":
                m.trades_seq = seq
            else:
                raise ValueError(f"unknown topic {topic!r}")

    # ------------------------------------------------------------------ self-check

    def check_invariants(self) -> list[str]:
        """Everything that must hold between commands; returns violations (empty = ok).

        O(state): for tests and for verifying a rebuild, not for every command.
        """
        problems: list[str] = []
        reserved: dict[tuple[int, str], int] = {}
        for o in self._all_orders():
            m = o.m
            if o.reserved < 0:
                problems.append(f"order {o.order_id} reserved {o.reserved} < 0")
            key = (o.account_id, m.quote if o.is_buy else m.base)
            reserved[key] = reserved.get(key, 0) + o.reserved
            if not o.is_buy and o.reserved != o.remaining * m.bm:
                problems.append(f"sell {o.order_id} reserves {o.reserved} for {o.remaining}")
            if o.live == (o.request.type in (STOP_LIMIT, STOP_MARKET) and not o.triggered):
                problems.append(f"order {o.order_id} live={o.live} disagrees with its type")
        cells_seen: set[tuple[int, str]] = set()
        for acct, a in self._accounts.items():
            for oid, o in a.orders.items():
                if o.order_id != oid or o.account_id != acct or o.index is not a.orders:
                    problems.append(f"order {o.order_id} is indexed wrongly")
            if self._open_orders.get(acct) is not a.orders:
                problems.append(f"account {acct}: open-order map is stale")
            for asset, c in a.cells.items():
                key = (acct, asset)
                cells_seen.add(key)
                if c.locked < 0 or c.locked > c.total:
                    problems.append(f"cell {key}: total={c.total} locked={c.locked}")
                if c.locked != reserved.get(key, 0):
                    problems.append(f"cell {key}: locked={c.locked} != {reserved.get(key, 0)}")
        problems.extend(f"reservation without cell {k}" for k in reserved if k not in cells_seen)
        for m in self._markets.values():
            for acct, (index, bc, qc) in m.members.items():
                owner = self._accounts.get(acct)
                if (
                    owner is None
                    or index is not owner.orders
                    or owner.cells.get(m.base) is not bc
                    or owner.cells.get(m.quote) is not qc
                ):
                    problems.append(f"{m.symbol}: cached cells of account {acct} are stale")
            bb, ba = m.bids.best_price(), m.asks.best_price()
            if bb is not None and ba is not None and bb >= ba:
                problems.append(f"{m.symbol} crossed: bid {bb} >= ask {ba}")
            for bs in (m.bids, m.asks):
                problems.extend(self._check_side(m, bs))
        return problems

    def _check_side(self, m: _Market, bs: BookSide) -> list[str]:
        problems: list[str] = []
        if bs.keys != sorted(bs.levels) or len(set(bs.keys)) != len(bs.keys):
            problems.append(f"{m.symbol} {bs.side} keys out of order")
        for lvl in bs.iter_levels():
            live = lvl.live_orders()
            if not live or lvl.count != len(live):
                problems.append(f"{m.symbol} level {lvl.price} count mismatch")
            if lvl.size != sum(o.remaining for o in live):
                problems.append(f"{m.symbol} level {lvl.price} size mismatch")
            prios = [o.priority for o in live]
            if prios != sorted(prios):
                problems.append(f"{m.symbol} level {lvl.price} breaks time priority")
            for o in live:
                if o.limit != lvl.price or o.index.get(o.order_id) is not o:
                    problems.append(f"order {o.order_id} misplaced")
                if o.remaining <= 0 or o.is_buy != bs.is_bid:
                    problems.append(f"order {o.order_id} rests with {o.remaining}")
        return problems


def _check_shape(req: OrderRequest, is_buy: bool) -> tuple[bool, bool, TimeInForce]:
    """Slow-path shape checks; returns ``(is_stop, is_market, effective time in force)``."""
    otype = req.type
    tif = req.time_in_force
    if otype == LIMIT:
        is_stop, is_market = False, False
    elif otype == MARKET:
        is_stop, is_market = False, True
    elif otype == STOP_LIMIT:
        is_stop, is_market = True, False
    elif otype == STOP_MARKET:
        is_stop, is_market = True, True
    else:
        raise _err("INVALID_ORDER", f"unknown order type {otype!r}", "type")
    if tif not in _TIFS:
        raise _err("INVALID_ORDER", f"unknown time in force {tif!r}", "timeInForce")
    qty = req.quantity
    if is_market:
        if req.price is not None:
            raise _err("INVALID_ORDER", "market orders take no price", "price")
        if req.post_only:
            raise _err("INVALID_ORDER", "postOnly needs a limit order", "postOnly")
        if req.quote_quantity is not None:
            if qty is not None:
                raise _err(
                    "INVALID_ORDER", "give quantity or quoteQuantity, not both", "quoteQuantity"
                )
            if not is_buy:
                raise _err("INVALID_ORDER", "quoteQuantity is for buy orders", "quoteQuantity")
            if req.quote_quantity <= 0:
                raise _err("INVALID_ORDER", "quoteQuantity must be positive", "quoteQuantity")
            if tif == FOK:
                raise _err("INVALID_ORDER", "FOK needs a quantity", "timeInForce")
        elif qty is None:
            raise _err("INVALID_ORDER", "quantity is required", "quantity")
        tif = FOK if tif == FOK else IOC
    else:
        if req.price is None or req.price <= 0:
            raise _err("INVALID_ORDER", "a limit order needs a positive price", "price")
        if req.quote_quantity is not None:
            raise _err("INVALID_ORDER", "quoteQuantity is for market buys", "quoteQuantity")
        if qty is None:
            raise _err("INVALID_ORDER", "quantity is required", "quantity")
        if req.post_only and tif != GTC:
            raise _err("INVALID_ORDER", "postOnly needs GTC", "postOnly")
    if qty is not None and qty <= 0:
        raise _err("INVALID_ORDER", "quantity must be positive", "quantity")
    if is_stop:
        if req.stop_price is None or req.stop_price <= 0:
            raise _err("INVALID_ORDER", "stop orders need a positive stopPrice", "stopPrice")
    elif req.stop_price is not None:
        raise _err("INVALID_ORDER", "stopPrice is only for stop orders", "stopPrice")
    if req.stp not in _STP_MODES:
        raise _err("INVALID_ORDER", f"unknown self-trade mode {req.stp!r}", "stp")
    return is_stop, is_market, tif


def _reserve_bps(m: _Market, req: OrderRequest, pending_stop: bool) -> int:
    """The fee rate an open buy's reservation assumes (mirrors :meth:`Engine.place`):
    a resting order can only pay the maker fee; a pending stop may still take."""
    if req.side != BUY:
        return 0
    if not pending_stop or req.post_only:
        return m.maker_bps
    if req.type == STOP_LIMIT and req.time_in_force == GTC:
        return m.gtc_bps
    return m.taker_bps


def _by_priority(o: _Order) -> int:
    return o.priority

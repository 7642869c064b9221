"""Order-book data structures of the exchange core (pure, no I/O); re-exports the enums.

A book side is a ``dict`` of price levels plus a sorted ``list`` of keys.  Keys are signed
so that the *best* level of either side is always ``keys[-1]``: bids use ``key = price``,
asks use ``key = -price``.  That makes "take the best level" a ``list.pop()`` (O(1)) and
lets the matching loop treat both sides with one comparison (``key >= limit_key``).

Levels hold a FIFO ``deque`` of orders (time priority) and keep their aggregated ``size``
and live ``count`` up to date incrementally, so depth snapshots and level deltas are cheap.
Cancels are lazy: the order is flagged dead and skipped when it reaches the front; a level
is dropped as soon as its live count reaches zero and compacted if dead orders pile up.

The matching itself lives in :mod:`tradegraph.exchange.engine`, which owns balances too.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from typing import TYPE_CHECKING

from tradegraph.exchange.values import (
    InstrumentStatus,
    OrderStatus,
    OrderType,
    PostingReason,
    Side,
    STPMode,
    TimeInForce,
)

if TYPE_CHECKING:  # a cycle at type-check time only; typed so mypyc can use native access
    from tradegraph.exchange.engine import _Order

__all__ = [
    "BookSide",
    "InstrumentStatus",
    "Level",
    "OrderStatus",
    "OrderType",
    "PostingReason",
    "STPMode",
    "Side",
    "TimeInForce",
]


class Level:
    """One price level: FIFO of orders (some possibly dead) and live aggregates."""

    __slots__ = ("count", "key", "orders", "price", "size")

    def __init__(self, price: int, key: int) -> None:
        self.price = price
        self.key = key
        self.orders: deque[_Order] = deque()
        self.size = 0  # sum of remaining qty of live orders
        self.count = 0  # number of live orders

    def live_orders(self) -> list[_Order]:
        """Live orders in time priority (dead, lazily-cancelled ones skipped)."""
        return [o for o in self.orders if o.live]


class BookSide:
    """One side of a book: ``levels[key]`` plus ascending ``keys`` (best at the end)."""

    __slots__ = ("changes", "is_bid", "keys", "levels", "side", "sign")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.side = Side.BUY if is_bid else Side.SELL
        self.sign = 1 if is_bid else -1
        self.levels: dict[int, Level] = {}
        self.keys: list[int] = []
        # price -> new absolute size since the engine's last flush (0 = level gone)
        self.changes: dict[int, int] = {}

    def best_price(self) -> int | None:
        """Best (highest bid / lowest ask) price, or ``None`` if the side is empty."""
        keys = self.keys
        return self.levels[keys[-1]].price if keys else None

    def level_for(self, price: int) -> Level:
        """Level at ``price``, created (and its key inserted in order) if missing."""
        key = price * self.sign
        lvl = self.levels.get(key)
        if lvl is None:
            lvl = Level(price, key)
            self.levels[key] = lvl
            insort(self.keys, key)
        return lvl

    def drop_level(self, lvl: Level) -> None:
        """Remove an emptied level (O(log n) search + list delete, usually near the end)."""
        key = lvl.key
        del self.levels[key]
        keys = self.keys
        if keys[-1] == key:
            keys.pop()
        else:
            del keys[bisect_left(keys, key)]

    def depth(self, n: int) -> list[tuple[int, int]]:
        """Top ``n`` levels as ``(price, size)``, best first."""
        levels = self.levels
        keys = self.keys
        out: list[tuple[int, int]] = []
        for key in reversed(keys[-n:] if n > 0 else []):
            lvl = levels[key]
            out.append((lvl.price, lvl.size))
        return out

    def iter_levels(self) -> list[Level]:
        """All levels, best first (for snapshots, checks and dry runs)."""
        levels = self.levels
        return [levels[k] for k in reversed(self.keys)]

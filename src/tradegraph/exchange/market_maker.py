"""A demo market maker: keeps the CLOB books quoted and the tape moving in ``make run``.

It trades through the same command path as users (no back door): every second it cancels
its quotes, re-quotes a ladder around a reference price and, now and then, takes the
opposite side so trades print. The reference follows a seeded random walk unless a feed
price is supplied (``reference`` callback, e.g. the market simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from decimal import Decimal

from tradegraph.errors import DomainError
from tradegraph.exchange.service import ExchangeService, OrderInput
from tradegraph.identity.principal import Principal

log = logging.getLogger("tradegraph.market_maker")

START_PRICES = {"BTC-USD": Decimal("65000"), "ETH-USD": Decimal("3200"), "SOL-USD": Decimal("150")}
SIZES = {"BTC-USD": Decimal("0.05"), "ETH-USD": Decimal("0.5"), "SOL-USD": Decimal("5")}


class MarketMaker:
    def __init__(
        self,
        exchange: ExchangeService,
        principal: Principal,
        account_id: int,
        *,
        seed: int = 42,
        levels: int = 5,
        spread_bps: int = 10,
        interval: float = 1.0,
        reference: Callable[[str], Decimal | None] | None = None,
    ) -> None:
        self.exchange = exchange
        self.principal = principal
        self.account_id = account_id
        self.rng = random.Random(seed)
        self.levels = levels
        self.spread_bps = spread_bps
        self.interval = interval
        self.reference = reference
        self.prices = dict(START_PRICES)
        self.cycles = 0
        self.errors = 0

    def _reference(self, symbol: str) -> Decimal:
        if self.reference is not None:
            price = self.reference(symbol)
            if price is not None:
                self.prices[symbol] = price
                return price
        step = Decimal(str(self.rng.gauss(0, 0.0008)))
        self.prices[symbol] = (self.prices[symbol] * (1 + step)).quantize(Decimal("0.01"))
        return self.prices[symbol]

    async def cycle(self) -> None:
        """One re-quote of every symbol (placeOrders: one command per symbol)."""
        for symbol in START_PRICES:
            mid = self._reference(symbol)
            size = SIZES[symbol]
            half = mid * self.spread_bps / Decimal(20_000)
            orders = []
            for level in range(self.levels):
                offset = half + mid * Decimal(level) * Decimal("0.0005")
                for side, price in (("BUY", mid - offset), ("SELL", mid + offset)):
                    orders.append(
                        OrderInput(
                            account_id=self.account_id,
                            symbol=symbol,
                            side=side,
                            type="LIMIT",
                            quantity=size,
                            price=price.quantize(Decimal("0.01")),
                            self_trade_prevention="NONE",
                        )
                    )
            if self.rng.random() < 0.5:
                orders.append(
                    OrderInput(
                        account_id=self.account_id,
                        symbol=symbol,
                        side=self.rng.choice(["BUY", "SELL"]),
                        type="MARKET",
                        quantity=size / 5,
                        self_trade_prevention="NONE",
                    )
                )
            await self.exchange.cancel_all(self.principal, self.account_id, symbol)
            await self.exchange.place_orders(self.principal, orders)
        self.cycles += 1

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.interval
        while not stop.is_set():
            try:
                await self.cycle()
                backoff = self.interval
            except DomainError as error:
                self.errors += 1
                log.warning("market maker cycle failed: %s", error.code)
                backoff = min(backoff * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)

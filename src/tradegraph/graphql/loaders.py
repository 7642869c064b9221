"""DataLoaders, one set per operation, so list fields batch their lookups.

A page of 100 orders asking for fills, instrument and account runs one query per kind,
not one per order (a test counts the statements).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from tradegraph.exchange import models as m
from tradegraph.exchange.service import InstrumentInfo
from tradegraph.graphql.context import Info
from tradegraph.graphql.extensions import operation_loaders

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _loader(
    info: Info, name: str, batch: Callable[[list[K]], Awaitable[Sequence[V]]]
) -> DataLoader[K, V]:
    loaders = operation_loaders()
    loader = loaders.get(name)
    if loader is None:
        loader = DataLoader(load_fn=batch)
        loaders[name] = loader
    return loader


def instrument_loader(info: Info) -> DataLoader[str, InstrumentInfo | None]:
    service = info.context.services.exchange

    async def batch(symbols: list[str]) -> list[InstrumentInfo | None]:
        # One refresh per operation, so last prices and statuses are current.
        await service.load_reference()
        out: list[InstrumentInfo | None] = []
        for s in symbols:
            try:
                out.append(await service.instrument(s))
            except Exception:
                out.append(None)
        return out

    return _loader(info, "instrument", batch)


def account_loader(info: Info) -> DataLoader[int, m.Account | None]:
    service = info.context.services.exchange
    principal = info.context.require_principal()

    async def batch(ids: list[int]) -> list[m.Account | None]:
        found = await service.accounts_by_id(principal, ids)
        return [found.get(i) for i in ids]

    return _loader(info, "account", batch)


def balances_loader(info: Info) -> DataLoader[int, list[m.Balance]]:
    service = info.context.services.exchange

    async def batch(ids: list[int]) -> list[list[m.Balance]]:
        found = await service.balances_for(ids)
        return [found[i] for i in ids]

    return _loader(info, "balances", batch)


def fills_loader(info: Info) -> DataLoader[int, list[m.Trade]]:
    service = info.context.services.exchange

    async def batch(ids: list[int]) -> list[list[m.Trade]]:
        found = await service.fills_for_orders(ids)
        return [found[i] for i in ids]

    return _loader(info, "fills", batch)


def order_loader(info: Info) -> DataLoader[int, m.Order | None]:
    service = info.context.services.exchange
    principal = info.context.require_principal()

    async def batch(ids: list[int]) -> list[m.Order | None]:
        found = await service.orders_by_id(principal, ids)
        return [found.get(i) for i in ids]

    return _loader(info, "order", batch)


def stats_loader(info: Info) -> DataLoader[str, dict[str, Any] | None]:
    service = info.context.services.exchange

    async def batch(symbols: list[str]) -> list[dict[str, Any] | None]:
        stats = await service.stats_24h(symbols)
        return [stats.get(s) for s in symbols]

    return _loader(info, "stats24h", batch)

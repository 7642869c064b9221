"""``/datafeed/*``: the TradingView UDF datafeed over the stored candles.

Thin HTTP glue: parse the query string, ask :class:`MarketDataService`, answer with the
payloads of :mod:`tradegraph.marketdata.udf` (numbers, not strings; ``s`` = ``ok`` /
``no_data`` with ``nextTime`` / ``error`` with ``errmsg``). Protocol errors are answered
with HTTP 200 and ``{"s":"error"}``, which is what the charting library reads; only the
per-IP rate limit answers 429. History includes the forming bar, like ``candles``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from tradegraph.errors import DomainError
from tradegraph.marketdata.candles import Bar
from tradegraph.marketdata.service import MAX_BARS, SymbolMeta, change_percent
from tradegraph.marketdata.store import WindowStats
from tradegraph.marketdata.udf import (
    UdfSymbol,
    config_payload,
    error_reply,
    history_reply,
    no_data_reply,
    parse_history_params,
    resolve_symbol,
    search_results,
    symbol_info,
    time_reply,
)

if TYPE_CHECKING:
    from tradegraph.services import Services

__all__ = ["QuoteData", "datafeed_routes", "quote_item", "udf_symbol"]

MAX_QUOTES: Final = 50
Handler = Callable[[Request], Awaitable[Response]]


def udf_symbol(meta: SymbolMeta) -> UdfSymbol:
    """An instrument as the datafeed describes it (exchange = venue)."""
    return UdfSymbol(
        symbol=meta.symbol,
        description=meta.description,
        type=meta.kind,
        exchange=meta.venue.value,
        price_decimals=meta.price_decimals,
        tick_size=meta.tick,
        volume_precision=meta.qty_decimals,
        currency=meta.quote,
    )


@dataclass(frozen=True, slots=True)
class QuoteData:
    """What a ``/quotes`` entry is built from (integer minor units)."""

    last: int | None
    bid: int | None
    ask: int | None
    window: WindowStats | None


def _num(minor: int | None, decimals: int) -> int | float | None:
    if minor is None:
        return None
    return minor if decimals == 0 else minor / 10**decimals


def quote_item(sym: UdfSymbol, data: QuoteData) -> dict[str, Any]:
    """One ``/quotes`` entry: ``{"s":"ok","n":"EXCHANGE:SYMBOL","v":{...}}``.

    ``lp`` is the last price, ``ch``/``chp`` the change against the 24 h open, the
    ``*_price`` fields the 24 h open/high/low; absent values are left out (the library
    treats missing fields as unknown).
    """
    pd = sym.price_decimals
    w = data.window
    last = data.last if data.last is not None else (w.close if w else None)
    values: dict[str, Any] = {
        "short_name": sym.symbol,
        "exchange": sym.exchange,
        "description": sym.description,
        "lp": _num(last, pd),
        "bid": _num(data.bid, pd),
        "ask": _num(data.ask, pd),
        "open_price": _num(w.open if w else None, pd),
        "high_price": _num(w.high if w else None, pd),
        "low_price": _num(w.low if w else None, pd),
        "volume": _num(w.volume if w else 0, sym.volume_precision),
    }
    if data.bid is not None and data.ask is not None:
        values["spread"] = _num(data.ask - data.bid, pd)
    if w is not None and last is not None:
        values["ch"] = _num(last - w.open, pd)
        chp = change_percent(w.open, last)
        if chp is not None:
            values["chp"] = float(chp) or 0.0  # no "-0.0"
    values = {k: v for k, v in values.items() if v is not None}
    return {"s": "ok", "n": sym.full_name, "v": values}


def _window(raw: dict[str, Any]) -> WindowStats:
    """The exchange's trade-based 24 h stats in the candle window shape."""
    return WindowStats(
        open=raw["open"],
        high=raw["high"],
        low=raw["low"],
        close=raw["last"],
        volume=raw["volume"],
        trades=raw["trades"],
        first_ts=0,
        last_ts=0,
    )


def datafeed_routes(services: Services) -> Mount:
    """The ``/datafeed`` mount of the app."""
    md = services.marketdata
    settings = services.settings

    async def symbols_list() -> list[UdfSymbol]:
        if not md.meta_by_symbol:
            await md.load_instruments()
        return [udf_symbol(m) for m in md.meta_by_symbol.values()]

    def limited(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            ip = request.client.host if request.client else "unknown"
            decision = await services.rate_limiter.hit(
                f"udf:ip:{ip}", settings.rate_limit_ip_per_minute, 60
            )
            if not decision.allowed:
                services.metrics.rate_limited.labels("ip").inc()
                retry = max(1, int(decision.retry_after))
                return JSONResponse(
                    error_reply(f"too many requests; retry in {retry} s"),
                    status_code=429,
                    headers={"Retry-After": str(retry)},
                )
            try:
                return await handler(request)
            except DomainError as exc:
                return JSONResponse(error_reply(exc.message))

        return wrapper

    async def config(_: Request) -> Response:
        return JSONResponse(config_payload(await symbols_list()))

    async def symbols(request: Request) -> Response:
        name = request.query_params.get("symbol", "")
        if not name.strip():
            return JSONResponse(error_reply("missing parameter 'symbol'"))
        return JSONResponse(symbol_info(resolve_symbol(await symbols_list(), name)))

    async def search(request: Request) -> Response:
        q = request.query_params
        raw_limit = q.get("limit") or ""
        try:
            limit = int(raw_limit) if raw_limit else None
        except ValueError:
            return JSONResponse(error_reply("parameter 'limit' must be an integer"))
        found = search_results(
            await symbols_list(),
            q.get("query", ""),
            type=q.get("type", ""),
            exchange=q.get("exchange", ""),
            limit=limit,
        )
        return JSONResponse(found)

    async def history(request: Request) -> Response:
        req = parse_history_params(request.query_params)
        sym = resolve_symbol(await symbols_list(), req.symbol)
        countback = min(req.countback, MAX_BARS) if req.countback else None
        from_ms, to_ms = req.from_s * 1000, req.to_s * 1000
        series = await md.series(
            sym.symbol, req.resolution, from_ms=from_ms, to_ms=to_ms, count_back=countback
        )
        bars: list[Bar] = series.bars()
        if not bars:
            # Nothing in range: tell the chart where older data ends (nextTime).
            if countback is None:
                prev = await md.store.latest_before(sym.symbol, req.resolution, from_ms)
                forming = md.forming(sym.symbol, req.resolution)
                if forming is not None and forming.ts < from_ms:
                    prev = max(prev or forming.ts, forming.ts)
                if prev is not None:
                    return JSONResponse(no_data_reply(prev // 1000))
            return JSONResponse(no_data_reply())
        return JSONResponse(
            history_reply(
                bars,
                req.from_s,
                req.to_s,
                countback,
                price_decimals=sym.price_decimals,
                volume_precision=sym.volume_precision,
                max_bars=MAX_BARS,
            )
        )

    async def time_(_: Request) -> Response:
        return PlainTextResponse(time_reply(md.now_ms()))

    async def quotes(request: Request) -> Response:
        names = [n.strip() for n in request.query_params.get("symbols", "").split(",")]
        names = [n for n in names if n]
        if not names:
            return JSONResponse(error_reply("missing parameter 'symbols'"))
        if len(names) > MAX_QUOTES:
            return JSONResponse(error_reply(f"at most {MAX_QUOTES} symbols per request"))
        known = await symbols_list()
        resolved: list[tuple[str, UdfSymbol | None]] = []
        for name in names:
            try:
                resolved.append((name, resolve_symbol(known, name)))
            except DomainError:
                resolved.append((name, None))
        wanted = {s.symbol: md.meta_by_symbol[s.symbol] for _, s in resolved if s is not None}
        sim = [s for s, m in wanted.items() if m.is_sim]
        clob = [s for s, m in wanted.items() if not m.is_sim]
        windows: dict[str, WindowStats] = dict(await md.stats_24h(sim)) if sim else {}
        if clob:
            for symbol, raw in (await services.exchange.stats_24h(clob)).items():
                windows[symbol] = _window(raw)
        items: list[dict[str, Any]] = []
        for name, sym in resolved:
            if sym is None:
                items.append({"s": "error", "n": name, "v": {}})
                continue
            meta = wanted[sym.symbol]
            if meta.is_sim:
                tick = md.last_tick(sym.symbol)
                data = QuoteData(
                    last=tick.price if tick else None,
                    bid=tick.bid if tick else None,
                    ask=tick.ask if tick else None,
                    window=windows.get(sym.symbol),
                )
            else:
                top = await services.exchange.order_book(sym.symbol, 1)
                bids, asks = top.get("bids") or [], top.get("asks") or []
                data = QuoteData(
                    last=top.get("last"),
                    bid=bids[0][0] if bids else None,
                    ask=asks[0][0] if asks else None,
                    window=windows.get(sym.symbol),
                )
            items.append(quote_item(sym, data))
        return JSONResponse({"s": "ok", "d": items})

    routes = [
        Route("/config", limited(config)),
        Route("/symbols", limited(symbols)),
        Route("/search", limited(search)),
        Route("/history", limited(history)),
        Route("/time", limited(time_)),
        Route("/quotes", limited(quotes)),
    ]
    return Mount("/datafeed", routes=routes)

"""GraphQL for market data: the ``candles`` query and subscription, SIM 24 h stats.

Translation only (the range rules live in ``MarketDataService.series``), plus one
performance device: :class:`CandlesFastPath`. graphql-core completes every field of
every object separately, which costs ~35 us per bar; a chart asking for 5,000 bars
would spend ~180 ms there. The fast path recognises an operation that is exactly one
``candles`` field selecting only leaf fields, runs the same service call and renders
the rows straight into the response shape, with the same scalar formatting
(fixed-point ``Decimal`` text, ``datetime.isoformat()``); anything else takes the regular path.
Parsing, validation, authentication, rate and cost limits have already run when it
kicks in (it hooks ``on_execute``), and a test checks both paths give identical JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Final

import numpy as np
import numpy.typing as npt
import orjson
import strawberry
from graphql import (
    ExecutionResult,
    FieldNode,
    GraphQLError,
    OperationType,
)
from graphql.execution.values import get_argument_values, get_variable_values
from starlette.websockets import WebSocket
from strawberry.extensions import SchemaExtension

from tradegraph.errors import DomainError
from tradegraph.graphql.context import Info
from tradegraph.graphql.documents import sole_root_field
from tradegraph.graphql.extensions import operation_loaders
from tradegraph.graphql.streams import track
from tradegraph.marketdata.candles import Bar, BarArrays, Resolution
from tradegraph.marketdata.service import (
    CandleSeries,
    MarketDataService,
    SymbolMeta,
    bar_from_message,
    topic_for,
)
from tradegraph.marketdata.ticks import datetime_to_ms
from tradegraph.money import from_minor
from tradegraph.pubsub import is_gap

__all__ = [
    "Candle",
    "CandlesFastPath",
    "MarketDataQuery",
    "MarketDataSubscription",
    "RawJSON",
    "decimal_text",
    "encode_response",
    "iso_ms",
    "sim_stats_loader",
]

strawberry.enum(
    Resolution,
    description="Bar size: M1..M30 minutes, H1/H4 hours, D1 (00:00 UTC), W1 (Monday 00:00 UTC).",
)


@strawberry.type(description="One OHLCV bar of an instrument at one resolution.")
class Candle:
    time: datetime = strawberry.field(
        description="Open time (UTC); the bar covers [time, time + resolution)."
    )
    open: Decimal = strawberry.field(description="First price in the bar.")
    high: Decimal = strawberry.field(description="Highest price.")
    low: Decimal = strawberry.field(description="Lowest price.")
    close: Decimal = strawberry.field(description="Last price (so far, while forming).")
    volume: Decimal = strawberry.field(
        description="Base quantity traded (feed tick volume on SIM instruments)."
    )
    trades: int = strawberry.field(description="Trades (feed ticks on SIM instruments).")
    closed: bool = strawberry.field(
        description="False while the bar is forming. A closed bar is final, except that a "
        "tick arriving within the grace window (2 s by default) may still correct it."
    )


def candle_of(meta: SymbolMeta, bar: Bar, closed: bool) -> Candle:
    """A :class:`Candle` from a bar (integer units) and the instrument's decimals."""
    pd, qd = meta.price_decimals, meta.qty_decimals
    return Candle(
        time=datetime.fromtimestamp(bar.ts / 1000, UTC),
        open=from_minor(bar.open, pd),
        high=from_minor(bar.high, pd),
        low=from_minor(bar.low, pd),
        close=from_minor(bar.close, pd),
        volume=from_minor(bar.volume, qd),
        trades=bar.trades,
        closed=closed,
    )


def _ms(value: datetime | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return datetime_to_ms(value)
    except DomainError:
        raise DomainError(
            f"{field} needs a timezone, e.g. 2024-01-01T00:00:00Z",
            code="INVALID_TIMESTAMP",
            field=field,
        ) from None


async def candle_series(
    service: MarketDataService,
    symbol: str,
    resolution: Resolution,
    from_: datetime | None,
    to: datetime | None,
    count_back: int | None,
) -> CandleSeries:
    """The ``candles`` arguments -> the service's range query (shared by both paths)."""
    return await service.series(
        symbol,
        resolution,
        from_ms=_ms(from_, "from"),
        to_ms=_ms(to, "to"),
        count_back=count_back,
    )


# ------------------------------------------------------------------ stats (SIM venues)


def sim_stats_loader(info: Info) -> Any:
    """24 h stats of SIM instruments from their M1 candles, batched per operation.

    Returns the raw shape of ``ExchangeService.stats_24h`` (SIM instruments have no
    trades, so ``quote_volume`` is 0 and ``trades`` counts feed ticks).
    """
    from strawberry.dataloader import DataLoader

    loaders = operation_loaders()
    loader = loaders.get("sim_stats24h")
    if loader is None:
        service = info.context.services.marketdata

        async def batch(symbols: list[str]) -> list[dict[str, Any] | None]:
            stats = await service.stats_24h(symbols)
            out: list[dict[str, Any] | None] = []
            for s in symbols:
                w = stats.get(s)
                out.append(
                    None
                    if w is None
                    else {
                        "open": w.open,
                        "high": w.high,
                        "low": w.low,
                        "last": w.close,
                        "volume": w.volume,
                        "quote_volume": 0,
                        "trades": w.trades,
                    }
                )
            return out

        loader = loaders["sim_stats24h"] = DataLoader(load_fn=batch)
    return loader


# ------------------------------------------------------------------------- query


@strawberry.type
class MarketDataQuery:
    @strawberry.field(
        description="OHLCV bars, oldest first: `from` inclusive, `to` exclusive; "
        "`countBack` (the last N bars before `to`) wins over `from`; without either, the "
        "latest 500. The forming bar is included (closed: false). At most 5,000 bars: "
        "the most recent of the range, so page backwards with `to` = the first bar's time."
    )
    async def candles(
        self,
        info: Info,
        symbol: Annotated[str, strawberry.argument(description="Instrument symbol.")],
        resolution: Annotated[Resolution, strawberry.argument(description="Bar size.")],
        from_: Annotated[
            datetime | None,
            strawberry.argument(name="from", description="Earliest bar open time, inclusive."),
        ] = None,
        to: Annotated[
            datetime | None,
            strawberry.argument(description="Bars opening before this time (exclusive)."),
        ] = None,
        count_back: Annotated[
            int | None,
            strawberry.argument(description="The last N bars before `to` (1 to 5,000)."),
        ] = None,
    ) -> list[Candle]:
        service = info.context.services.marketdata
        series = await candle_series(service, symbol, resolution, from_, to, count_back)
        meta, forming = series.meta, series.forming
        return [candle_of(meta, bar, bar is not forming) for bar in series.bars()]


# ------------------------------------------------------------------ subscription


class CandleStreamGap(DomainError):
    code = "STREAM_GAP"


@strawberry.type
class MarketDataSubscription:
    @strawberry.subscription(
        description="Live bars of one instrument and resolution: the forming bar first (if "
        "any), then its updates (throttled: two a second by default) and each bar as it closes "
        "(closed: true). Bars are keyed by time: a newer version replaces an older one."
    )
    async def candles(
        self,
        info: Info,
        symbol: Annotated[str, strawberry.argument(description="Instrument symbol.")],
        resolution: Annotated[Resolution, strawberry.argument(description="Bar size.")],
    ) -> AsyncGenerator[Candle, None]:
        service = info.context.services.marketdata
        meta = await service.meta(symbol)
        pubsub = info.context.services.pubsub
        async with pubsub.subscribe(topic_for(symbol, resolution)) as sub:
            # Subscribed first, then the current bar: nothing falls in between.
            current = service.forming(symbol, resolution)
            last_forming = -1
            if current is not None:
                last_forming = current.ts
                yield candle_of(meta, current, False)
            async for msg in track(info, sub):
                if is_gap(msg):
                    if msg.get("final"):
                        raise CandleStreamGap("you fell behind; resubscribe")
                    continue  # reconnected: the next update carries the whole bar
                bar = bar_from_message(msg["data"])
                if msg["type"] == "FORMING":
                    if bar.ts < last_forming:
                        continue  # an update overtaken by a newer bar
                    last_forming = bar.ts
                    yield candle_of(meta, bar, False)
                else:
                    yield candle_of(meta, bar, True)


# --------------------------------------------------------------------- fast path


def decimal_text(units: int, decimals: int) -> str:
    """The Decimal scalar's fixed-point wire text of ``units``, fast."""
    if decimals == 0:
        return str(units)
    digits = str(-units if units < 0 else units)
    n = len(digits)
    if n <= decimals:
        digits = "0" * (decimals - n + 1) + digits
    text = f"{digits[:-decimals]}.{digits[-decimals:]}"
    return "-" + text if units < 0 else text


_DAY_MS: Final = 86_400_000
_day_prefix: dict[int, str] = {}


def iso_ms(ts_ms: int) -> str:
    """``datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat()``, fast for whole seconds."""
    if ts_ms % 1000:
        return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat()
    day, ms = divmod(ts_ms, _DAY_MS)
    prefix = _day_prefix.get(day)
    if prefix is None:
        if len(_day_prefix) > 100_000:
            _day_prefix.clear()
        prefix = _day_prefix[day] = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%dT")
    seconds = ms // 1000
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{prefix}{h:02d}:{m:02d}:{s:02d}+00:00"


def _column(series: CandleSeries, cols: BarArrays, name: str) -> list[Any]:
    pd, qd = series.meta.price_decimals, series.meta.qty_decimals
    if name == "time":
        return [iso_ms(t) for t in cols.ts.tolist()]
    if name in _PRICE_INDEX:
        values = (cols.open, cols.high, cols.low, cols.close)[_PRICE_INDEX[name] - 1]
        return [decimal_text(x, pd) for x in values.tolist()]
    if name == "volume":
        return [decimal_text(x, qd) for x in cols.volume.tolist()]
    if name == "trades":
        return cols.trades.tolist()
    if name == "closed":
        closed = [True] * len(cols)
        if series.forming is not None and closed:
            closed[-1] = False
        return closed
    return ["Candle"] * len(cols)  # __typename


_PRICE_INDEX: Final = {"open": 1, "high": 2, "low": 3, "close": 4}
_LEAVES: Final = frozenset(
    {"time", "open", "high", "low", "close", "volume", "trades", "closed", "__typename"}
)


def render(series: CandleSeries, keys: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The ``candles`` list as graphql-core would serialize it, for the selected keys."""
    cols = series.columns()
    names = [k for k, _ in keys]
    columns = [_column(series, cols, name) for _, name in keys]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


class RawJSON:
    """JSON text to be spliced into the response as is (see :func:`encode_response`).

    Deliberately not a ``str``: anything but ``encode_response`` that meets one fails
    loudly instead of sending the text as a JSON string.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def encode_response(data: object) -> str:
    """The response as compact JSON text (orjson, see :mod:`tradegraph.wire`), with
    :class:`RawJSON` spliced in as is."""
    return orjson.dumps(data, default=_raw_fragment).decode()


def _raw_fragment(value: object) -> orjson.Fragment:
    if isinstance(value, RawJSON):
        return orjson.Fragment(value.text)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_HM: Final = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
_MINUTE_MS: Final = 60_000


def _day_text(day: int) -> str:
    prefix = _day_prefix.get(day)
    if prefix is None:
        if len(_day_prefix) > 100_000:
            _day_prefix.clear()
        prefix = _day_prefix[day] = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%dT")
    return prefix


def render_json(series: CandleSeries, keys: Sequence[tuple[str, str]]) -> RawJSON | None:
    """The ``candles`` list as JSON text, byte for byte what :func:`render` + ``json.dumps``
    give, at a fraction of the cost: integer splits in numpy, one ``%`` format per bar.

    None where the shortcut would not be exact (more than 6 decimals, where ``Decimal``
    may print ``1E-7``; negative values; bars not on whole minutes): use :func:`render`.
    """
    pd, qd = series.meta.price_decimals, series.meta.qty_decimals
    if pd > 6 or qd > 6:
        return None
    bars = series.columns()
    count = len(bars)
    if not count:
        return RawJSON("[]")
    ts, o, h, lo, c, v, n = (
        bars.ts,
        bars.open,
        bars.high,
        bars.low,
        bars.close,
        bars.volume,
        bars.trades,
    )
    if int(min(o.min(), h.min(), lo.min(), c.min(), v.min())) < 0 or bool(np.any(ts % _MINUTE_MS)):
        return None
    pieces: list[str] = []
    cols: list[list[Any]] = []
    day, ms_of_day = np.divmod(ts, _DAY_MS)

    def number(arr: npt.NDArray[np.int64], decimals: int) -> str:
        if decimals == 0:
            cols.append(arr.tolist())
            return '"%d"'
        whole, frac = np.divmod(arr, 10**decimals)
        cols.append(whole.tolist())
        cols.append(frac.tolist())
        return f'"%d.%0{decimals}d"'

    for key, name in keys:
        label = json.dumps(key).replace("%", "%%")
        if name == "time":
            cols.append([_day_text(d) for d in day.tolist()])
            cols.append([_HM[m] for m in (ms_of_day // _MINUTE_MS).tolist()])
            value = '"%s%s:00+00:00"'
        elif name in _PRICE_INDEX:
            value = number((o, h, lo, c)[_PRICE_INDEX[name] - 1], pd)
        elif name == "volume":
            value = number(v, qd)
        elif name == "trades":
            cols.append(n.tolist())
            value = "%d"
        elif name == "closed":
            closed = ["true"] * count
            if series.forming is not None:
                closed[-1] = "false"
            cols.append(closed)
            value = "%s"
        else:
            value = '"Candle"'
        pieces.append(f"{label}:{value}")
    template = "{" + ",".join(pieces) + "}"
    if not cols:
        return RawJSON("[" + ",".join([template] * count) + "]")
    return RawJSON("[" + ",".join([template % args for args in zip(*cols, strict=True)]) + "]")


class _Plan:
    """A recognised ``{ candles(...) { leaf fields } }`` operation, arguments coerced."""

    def __init__(self, response_key: str, args: dict[str, Any], keys: list[tuple[str, str]]):
        self.response_key = response_key
        self.args = args
        self.keys = keys

    async def run(self, service: MarketDataService) -> ExecutionResult:
        resolution = self.args["resolution"]
        if not isinstance(resolution, Resolution):
            resolution = Resolution(resolution)
        series = await candle_series(
            service,
            self.args["symbol"],
            resolution,
            self.args.get("from"),
            self.args.get("to"),
            self.args.get("countBack"),
        )
        rendered: RawJSON | list[dict[str, Any]] | None = render_json(series, self.keys)
        if rendered is None:
            rendered = render(series, self.keys)
        return ExecutionResult(data={self.response_key: rendered})


def plan_candles(
    schema: Any, document: Any, operation_name: str | None, variables: Any
) -> _Plan | None:
    """A :class:`_Plan` when the operation is exactly one plain ``candles`` query field."""
    found = sole_root_field(document, operation_name, OperationType.QUERY)
    if found is None:
        return None
    op, node = found
    if node.name.value != "candles" or node.selection_set is None:
        return None
    keys: list[tuple[str, str]] = []
    for sel in node.selection_set.selections:
        if (
            not isinstance(sel, FieldNode)
            or sel.directives
            or sel.arguments
            or sel.selection_set is not None
            or sel.name.value not in _LEAVES
        ):
            return None
        keys.append(((sel.alias or sel.name).value, sel.name.value))
    query_type = schema.query_type
    if query_type is None or "candles" not in query_type.fields:
        return None
    coerced = get_variable_values(schema, op.variable_definitions or (), variables or {})
    if isinstance(coerced, list):
        return None  # bad variables: the regular path reports them
    try:
        args = get_argument_values(query_type.fields["candles"], node, coerced)
    except GraphQLError:
        return None
    return _Plan((node.alias or node.name).value, args, keys)


class CandlesFastPath(SchemaExtension):
    """Answers a plain ``candles`` query without graphql-core's per-field completion."""

    async def on_execute(self) -> AsyncIterator[None]:
        ec = self.execution_context
        ctx = ec.context
        if (
            ec.result is None
            and ctx is not None
            and ec.graphql_document is not None
            and not isinstance(ctx.request, WebSocket)  # RawJSON needs the HTTP encoder
        ):
            plan = plan_candles(
                ec.schema._schema, ec.graphql_document, ec.operation_name, ec.variables
            )
            if plan is not None:
                # On a DomainError the regular path raises it again and shapes the error.
                with contextlib.suppress(DomainError):
                    ec.result = await plan.run(ctx.services.marketdata)
        yield

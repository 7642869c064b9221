"""Pure helpers for the TradingView UDF datafeed (``/datafeed/*``).

The HTTP routes live elsewhere and only parse query strings, load bars and serialize
what these functions return, so the protocol rules (resolution strings, the shape of
every payload, the ``from``/``to``/``countback`` range rule, ``no_data``/``nextTime``)
are unit-tested here once.

UDF speaks unix *seconds* and plain JSON numbers; bars inside TradeGraph use epoch ms
and integer minor units (see :mod:`tradegraph.marketdata.candles`), converted here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tradegraph.errors import DomainError, NotFound
from tradegraph.marketdata.candles import Bar, Resolution

__all__ = [
    "SUPPORTED_RESOLUTIONS",
    "HistoryRequest",
    "UdfSymbol",
    "config_payload",
    "error_reply",
    "format_resolution",
    "history_reply",
    "no_data_reply",
    "ok_history_reply",
    "parse_history_params",
    "parse_resolution",
    "resolve_symbol",
    "search_results",
    "select_bars",
    "symbol_info",
    "time_reply",
]

Json = dict[str, Any]

_TO_UDF: Final[dict[Resolution, str]] = {
    Resolution.M1: "1",
    Resolution.M5: "5",
    Resolution.M15: "15",
    Resolution.M30: "30",
    Resolution.H1: "60",
    Resolution.H4: "240",
    Resolution.D1: "1D",
    Resolution.W1: "1W",
}
# Clients spell daily/weekly both "1D" and "D" (library versions differ).
_FROM_UDF: Final[dict[str, Resolution]] = {
    **{v: k for k, v in _TO_UDF.items()},
    "D": Resolution.D1,
    "W": Resolution.W1,
}
SUPPORTED_RESOLUTIONS: Final[tuple[str, ...]] = tuple(_TO_UDF.values())
_INTRADAY: Final = ["1", "5", "15", "30", "60", "240"]
DEFAULT_SEARCH_LIMIT: Final = 30
MAX_SEARCH_LIMIT: Final = 100


def parse_resolution(value: str) -> Resolution:
    """Map a UDF resolution string (``1 5 15 30 60 240 1D 1W``; ``D``/``W`` too)."""
    res = _FROM_UDF.get(value.strip().upper())
    if res is None:
        raise DomainError(
            f"unsupported resolution {value!r}; supported: {', '.join(SUPPORTED_RESOLUTIONS)}",
            code="INVALID_RESOLUTION",
            field="resolution",
        )
    return res


def format_resolution(resolution: Resolution) -> str:
    """The UDF string for ``resolution``."""
    return _TO_UDF[resolution]


@dataclass(frozen=True, slots=True)
class UdfSymbol:
    """What the datafeed needs to know about one instrument.

    ``tick_size`` is in minor units (UDF ``minmov``); ``price_decimals`` gives
    ``pricescale``; ``volume_precision`` is the instrument's quantity decimals, used to
    turn integer bar volumes into numbers.
    """

    symbol: str
    description: str
    type: str
    exchange: str
    price_decimals: int
    tick_size: int = 1
    volume_precision: int = 0
    currency: str | None = None

    @property
    def full_name(self) -> str:
        """``EXCHANGE:SYMBOL``, TradingView's own symbology."""
        return f"{self.exchange}:{self.symbol}"


def config_payload(symbols: Iterable[UdfSymbol] = ()) -> Json:
    """The ``/config`` reply: what the datafeed supports, exchanges and symbol types."""
    syms = list(symbols)
    exchanges = sorted({s.exchange for s in syms})
    types = sorted({s.type for s in syms})
    return {
        "supports_search": True,
        "supports_group_request": False,
        "supported_resolutions": list(SUPPORTED_RESOLUTIONS),
        "supports_marks": False,
        "supports_timescale_marks": False,
        "supports_time": True,
        "exchanges": [{"value": "", "name": "All Exchanges", "desc": ""}]
        + [{"value": e, "name": e, "desc": e} for e in exchanges],
        "symbols_types": [{"name": "All types", "value": ""}]
        + [{"name": t, "value": t} for t in types],
    }


def symbol_info(sym: UdfSymbol) -> Json:
    """The ``/symbols?symbol=`` reply (TradingView ``LibrarySymbolInfo``)."""
    info: Json = {
        "name": sym.symbol,
        "ticker": sym.symbol,
        "full_name": sym.full_name,
        "description": sym.description,
        "type": sym.type,
        "session": "24x7",
        "timezone": "Etc/UTC",
        "exchange": sym.exchange,
        "listed_exchange": sym.exchange,
        "format": "price",
        "minmov": sym.tick_size,
        "pricescale": 10**sym.price_decimals,
        "has_intraday": True,
        "intraday_multipliers": list(_INTRADAY),
        "has_daily": True,
        "daily_multipliers": ["1"],
        "has_weekly_and_monthly": True,
        "weekly_multipliers": ["1"],
        "has_empty_bars": False,  # no bar for an interval without trades
        "supported_resolutions": list(SUPPORTED_RESOLUTIONS),
        "volume_precision": sym.volume_precision,
        "visible_plots_set": "ohlcv",
        "data_status": "streaming",
    }
    if sym.currency:
        info["currency_code"] = sym.currency
    return info


def resolve_symbol(symbols: Iterable[UdfSymbol], name: str) -> UdfSymbol:
    """Find a symbol by ``SYMBOL`` or ``EXCHANGE:SYMBOL`` (case-insensitive)."""
    wanted = name.strip().upper()
    exchange, _, bare = wanted.rpartition(":")
    for sym in symbols:
        if sym.symbol.upper() == bare and (not exchange or sym.exchange.upper() == exchange):
            return sym
    raise NotFound(f"unknown symbol {name!r}", field="symbol")


def search_results(
    symbols: Iterable[UdfSymbol],
    query: str,
    type: str = "",
    exchange: str = "",
    limit: int | None = DEFAULT_SEARCH_LIMIT,
) -> list[Json]:
    """The ``/search`` reply: exact matches first, then prefix, then substring matches.

    The query matches the symbol, ``EXCHANGE:SYMBOL`` or the description,
    case-insensitively; empty ``type``/``exchange`` mean any. ``limit`` is capped so a
    client cannot ask for the whole universe.
    """
    q = query.strip().upper()
    n = DEFAULT_SEARCH_LIMIT if not limit or limit < 0 else min(limit, MAX_SEARCH_LIMIT)
    ranked: list[tuple[int, str, UdfSymbol]] = []
    for sym in symbols:
        if type and sym.type != type:
            continue
        if exchange and sym.exchange.upper() != exchange.upper():
            continue
        name = sym.symbol.upper()
        if q in ("", name, sym.full_name.upper()):
            rank = 0
        elif name.startswith(q):
            rank = 1
        elif q in name or q in sym.full_name.upper() or q in sym.description.upper():
            rank = 2
        else:
            continue
        ranked.append((rank, name, sym))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [
        {
            "symbol": sym.symbol,
            "full_name": sym.full_name,
            "description": sym.description,
            "exchange": sym.exchange,
            "ticker": sym.symbol,
            "type": sym.type,
        }
        for _, _, sym in ranked[:n]
    ]


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """A validated ``/history`` query (times in unix seconds)."""

    symbol: str
    resolution: Resolution
    from_s: int
    to_s: int
    countback: int | None = None


def _int_param(params: Mapping[str, str], name: str, *, required: bool) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise DomainError(f"missing parameter {name!r}", field=name)
        return None
    try:
        return int(raw)
    except ValueError:
        raise DomainError(f"parameter {name!r} must be an integer", field=name) from None


def parse_history_params(params: Mapping[str, str]) -> HistoryRequest:
    """Validate the query string of ``/history`` (``firstDataRequest`` is ignored)."""
    symbol = (params.get("symbol") or "").strip()
    if not symbol:
        raise DomainError("missing parameter 'symbol'", field="symbol")
    resolution = parse_resolution(params.get("resolution") or "")
    from_s = _int_param(params, "from", required=True)
    to_s = _int_param(params, "to", required=True)
    countback = _int_param(params, "countback", required=False)
    assert from_s is not None and to_s is not None
    _check_range(from_s, to_s, countback)
    return HistoryRequest(symbol, resolution, from_s, to_s, countback or None)


def _check_range(from_s: int, to_s: int, countback: int | None) -> None:
    if countback is not None and countback < 0:
        raise DomainError("countback must be >= 0", field="countback")
    if from_s > to_s:
        raise DomainError("from must not be after to", field="from")


def _bar_ts(bar: Bar) -> int:
    return bar.ts


def select_bars(
    bars: Sequence[Bar],
    from_s: int,
    to_s: int,
    countback: int | None = None,
    *,
    max_bars: int | None = None,
) -> list[Bar]:
    """The UDF range rule over bars sorted by time.

    Bars whose open time ``t`` satisfies ``from <= t < to`` (unix seconds). With a
    ``countback`` (0 counts as absent, as the library never sends it), ``from`` is
    ignored: the last ``countback`` bars with ``t < to``. ``max_bars`` caps the reply,
    keeping the most recent bars, so one request cannot pull unbounded history.
    """
    _check_range(from_s, to_s, countback)
    hi = bisect.bisect_left(bars, to_s * 1000, key=_bar_ts)
    if countback:
        lo = max(0, hi - countback)
    else:
        lo = bisect.bisect_left(bars, from_s * 1000, 0, hi, key=_bar_ts)
    if max_bars is not None:
        lo = max(lo, hi - max_bars)
    return list(bars[lo:hi])


def _number(minor: int, decimals: int) -> int | float:
    # int / int true division is correctly rounded, so 108500 / 10**5 -> 1.085 exactly
    # as it prints; integers stay integers when there are no decimals.
    return minor if decimals == 0 else minor / 10**decimals


def ok_history_reply(bars: Sequence[Bar], price_decimals: int, volume_precision: int = 0) -> Json:
    """``{"s":"ok", t/o/h/l/c/v}`` with plain numbers and ``t`` in unix seconds."""
    pd, vd = price_decimals, volume_precision
    return {
        "s": "ok",
        "t": [b.ts // 1000 for b in bars],
        "o": [_number(b.open, pd) for b in bars],
        "h": [_number(b.high, pd) for b in bars],
        "l": [_number(b.low, pd) for b in bars],
        "c": [_number(b.close, pd) for b in bars],
        "v": [_number(b.volume, vd) for b in bars],
    }


def no_data_reply(next_time: int | None = None) -> Json:
    """``{"s":"no_data"}``, with ``nextTime`` (unix seconds) when older data exists."""
    reply: Json = {"s": "no_data"}
    if next_time is not None:
        reply["nextTime"] = next_time
    return reply


def error_reply(message: str) -> Json:
    """``{"s":"error","errmsg":...}``: what every failed datafeed request answers."""
    return {"s": "error", "errmsg": message}


def history_reply(
    bars: Sequence[Bar],
    from_s: int,
    to_s: int,
    countback: int | None = None,
    *,
    price_decimals: int,
    volume_precision: int = 0,
    max_bars: int | None = None,
) -> Json:
    """The whole ``/history`` answer from bars sorted by time.

    An empty selection answers ``no_data`` with ``nextTime`` = the time of the latest
    bar before ``from`` (so the chart can jump over a gap), omitted when there is none;
    a bad range answers ``error`` rather than raising.
    """
    try:
        selected = select_bars(bars, from_s, to_s, countback, max_bars=max_bars)
    except DomainError as exc:
        return error_reply(exc.message)
    if selected:
        return ok_history_reply(selected, price_decimals, volume_precision)
    idx = bisect.bisect_left(bars, from_s * 1000, key=_bar_ts)
    return no_data_reply(bars[idx - 1].ts // 1000 if idx else None)


def time_reply(now_ms: int) -> str:
    """The ``/time`` reply: bare unix seconds as text."""
    return str(now_ms // 1000)

"""A placed order's payload builds its Order and fills only when they are read."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tradegraph import models as m
from tradegraph.exchange.service import InstrumentInfo
from tradegraph.graphql.exchange import PlaceOrderPayload, _Placed

BTC_USD = InstrumentInfo(m.Instrument(symbol="BTC-USD", price_decimals=2, qty_decimals=4), 8, 2)


def result(**extra: Any) -> dict[str, Any]:
    order = {
        "id": 7,
        "account_id": 3,
        "symbol": "BTC-USD",
        "side": "BUY",
        "type": "LIMIT",
        "time_in_force": "GTC",
        "status": "PARTIALLY_FILLED",
        "price": 5_000_000,
        "stop_price": None,
        "quantity": 20_000,
        "quote_quantity": None,
        "post_only": False,
        "client_order_id": "k-1",
        "filled_qty": 5_000,
        "remaining_qty": 15_000,
        "quote_filled": 2_499_950,
        "fee_paid": 2_500,
        "reason": None,
    }
    return {"order": order, **extra}


def test_nothing_is_built_until_read_and_then_once() -> None:
    trade = {
        "id": 11, "symbol": "BTC-USD", "price": 4_999_900, "qty": 5_000,
        "notional": 2_499_950, "taker_fee": 2_500, "ts": "2026-11-21T10:00:00+00:00",
    }  # fmt: skip
    placed = _Placed(BTC_USD, result(trades=[trade]), datetime(2026, 11, 21, tzinfo=UTC))
    payload = PlaceOrderPayload(placed=placed)
    assert payload.errors == []
    assert placed._order is None and placed._fills is None  # errors alone built nothing

    order = payload.order()
    assert order is not None and payload.order() is order
    assert (order.price, order.quantity, order.filled_quantity) == (
        Decimal("50000.00"), Decimal("2.0000"), Decimal("0.5000")
    )  # fmt: skip
    assert order.average_price == Decimal("49999.00")
    assert placed._fills is None
    (fill,) = payload.fills()
    assert payload.fills()[0] is fill
    assert (fill.price, fill.quantity, fill.fee) == (
        Decimal("49999.00"), Decimal("0.5000"), Decimal("25.00")
    )  # fmt: skip


def test_a_refused_order_has_no_order_and_no_fills() -> None:
    payload = PlaceOrderPayload(errors=[])
    assert payload.order() is None and payload.fills() == []

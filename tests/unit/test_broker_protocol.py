"""Broker-neutral types and errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradegraph.brokers.protocol import (
    BrokerAuthError,
    BrokerProvider,
    BrokerRejected,
    BrokerUnavailable,
    OrderRequest,
    OrderSide,
    OrderType,
    decimal_str,
    optional_decimal,
    to_decimal,
)
from tradegraph.errors import DomainError, Unavailable


def test_error_codes_are_stable() -> None:
    assert BrokerUnavailable("x").code == "BROKER_UNAVAILABLE"
    assert BrokerAuthError("x").code == "BROKER_AUTH_FAILED"
    assert BrokerRejected("x").code == "BROKER_REJECTED"
    unavailable = BrokerUnavailable("x", provider=BrokerProvider.DERIV, broker_code="RateLimit")
    assert isinstance(unavailable, DomainError)
    assert isinstance(unavailable, Unavailable)  # generic handlers of Unavailable still work
    assert unavailable.broker_code == "RateLimit"
    assert BrokerRejected("x", field="price").field == "price"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quantity": Decimal(0)}, "quantity"),
        ({"quantity": Decimal("NaN")}, "quantity"),
        ({"order_type": OrderType.LIMIT}, "price"),
        ({"order_type": OrderType.LIMIT, "price": Decimal(-1)}, "price"),
        ({"price": Decimal(1)}, "price"),
        ({"order_type": OrderType.STOP_MARKET}, "stopPrice"),
        ({"stop_price": Decimal(1)}, "stopPrice"),
        ({"symbol": ""}, "symbol"),
    ],
)
def test_order_request_validation(kwargs: dict, field: str) -> None:
    args = {"symbol": "BTC-USDT", "side": OrderSide.BUY, "quantity": Decimal(1)} | kwargs
    with pytest.raises(DomainError) as info:
        OrderRequest(**args)
    assert info.value.field == field


def test_valid_order_requests() -> None:
    OrderRequest("X", OrderSide.SELL, Decimal("0.1"), OrderType.LIMIT, price=Decimal(5))
    OrderRequest(
        "X",
        OrderSide.BUY,
        Decimal(1),
        OrderType.STOP_LIMIT,
        price=Decimal(5),
        stop_price=Decimal(4),
    )


def test_decimal_parsing_is_exact_and_strict() -> None:
    p = BrokerProvider.BINGX
    assert to_decimal("0.1", provider=p, what="x") == Decimal("0.1")
    assert to_decimal(0.1, provider=p, what="x") == Decimal("0.1")  # not 0.1000000000000000055
    assert to_decimal(3, provider=p, what="x") == Decimal(3)
    for bad in ("abc", None, True, "NaN", "Infinity", [1]):
        with pytest.raises(BrokerUnavailable):
            to_decimal(bad, provider=p, what="x")
    assert optional_decimal("", provider=p, what="x") is None
    assert optional_decimal(None, provider=p, what="x") is None


def test_decimal_str_never_uses_exponents() -> None:
    assert decimal_str(Decimal("1E+2")) == "100"
    assert decimal_str(Decimal("0.00100")) == "0.001"
    assert decimal_str(Decimal("12.50")) == "12.5"
    assert decimal_str(Decimal("1E-8")) == "0.00000001"
    assert decimal_str(Decimal(0)) == "0"

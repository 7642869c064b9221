"""BingX request signing."""

from __future__ import annotations

from tradegraph.brokers.adapters.bingx import bingx_signature, bingx_signed_params

SECRET = "mysecret"
# Fixed vector: HMAC-SHA256("mysecret",
#   "quantity=0.01&side=BUY&symbol=BTC-USDT&timestamp=1700000000000"), lowercase hex.
VECTOR = "71b2c6bb4fd4d891af470d9ca6abdee8a8c702f716363469fc0d77326b7b7803"


def test_signature_vector() -> None:
    params = {"symbol": "BTC-USDT", "side": "BUY", "quantity": "0.01", "timestamp": "1700000000000"}
    assert bingx_signature(params, SECRET) == VECTOR


def test_signature_does_not_depend_on_insertion_order_but_on_every_value() -> None:
    a = {"b": "2", "a": "1", "timestamp": "5"}
    b = {"timestamp": "5", "a": "1", "b": "2"}
    assert bingx_signature(a, SECRET) == bingx_signature(b, SECRET)
    assert bingx_signature({**a, "b": "3"}, SECRET) != bingx_signature(a, SECRET)
    assert bingx_signature(a, "other") != bingx_signature(a, SECRET)


def test_signed_params_are_sorted_with_timestamp_and_signature_last() -> None:
    signed = bingx_signed_params(
        {"symbol": "BTC-USDT", "side": "BUY", "quantity": "0.01"}, SECRET, 1_700_000_000_000
    )
    keys = [k for k, _ in signed]
    assert keys == ["quantity", "side", "symbol", "timestamp", "signature"]
    assert signed[-1] == ("signature", VECTOR)

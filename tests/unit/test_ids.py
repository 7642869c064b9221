"""Relay global ids at the API edge."""

from __future__ import annotations

import pytest

from tradegraph.errors import DomainError
from tradegraph.graphql.ids import _parse_id, decode_id, encode_id


def test_global_and_raw_ids_decode_to_the_raw_id() -> None:
    assert decode_id(encode_id("Account", "42"), "Account") == "42"
    assert decode_id("42", "Account") == "42"  # a raw id is accepted as it is


def test_an_id_of_another_type_is_refused_every_time() -> None:
    order_id = encode_id("Order", "7")
    for _ in range(2):  # the second answer comes from the cache: still refused
        with pytest.raises(DomainError) as refused:
            decode_id(order_id, "Account", field="accountId")
        assert (refused.value.code, refused.value.field) == ("INVALID_ID", "accountId")


def test_long_input_is_decoded_but_not_cached() -> None:
    _parse_id.cache_clear()
    long_id = encode_id("Account", "9" * 200)
    assert decode_id(long_id, "Account") == "9" * 200
    assert decode_id("x" * 500, "Account") == "x" * 500
    assert _parse_id.cache_info().currsize == 0
    decode_id(encode_id("Account", "1"), "Account")
    assert _parse_id.cache_info().currsize == 1

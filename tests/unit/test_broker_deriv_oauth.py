"""Deriv legacy OAuth: authorize URL and the acctN/tokenN/curN redirect."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from tradegraph.brokers.adapters.deriv import (
    DerivOAuthAccount,
    _json_number,
    deriv_authorize_url,
    parse_deriv_redirect,
)
from tradegraph.brokers.protocol import BrokerAuthError
from tradegraph.errors import DomainError


def test_authorize_url() -> None:
    assert deriv_authorize_url("1089") == "https://oauth.deriv.com/oauth2/authorize?app_id=1089"
    query = parse_qs(urlsplit(deriv_authorize_url("1089", language="EN")).query)
    assert query == {"app_id": ["1089"], "l": ["EN"]}
    with pytest.raises(ValueError):
        deriv_authorize_url("1089&evil=1")


def test_one_account() -> None:
    got = parse_deriv_redirect("acct1=CR799393&token1=a1-f7pnteezo4jzhpxclctizt27hyeot&cur1=usd")
    assert got == [("CR799393", "a1-f7pnteezo4jzhpxclctizt27hyeot", "USD")]
    account, token, currency = got[0]  # unpacks as a tuple
    assert (account, currency) == ("CR799393", "USD")
    assert token.startswith("a1-")


def test_two_accounts_from_a_full_callback_url() -> None:
    got = parse_deriv_redirect(
        "https://app.example/deriv/callback?acct1=CR799393&token1=a1-aaa111&cur1=usd"
        "&acct2=VRTC1859315&token2=a1-bbb222&cur2=usd"
    )
    assert got == [
        DerivOAuthAccount("CR799393", "a1-aaa111", "USD"),
        DerivOAuthAccount("VRTC1859315", "a1-bbb222", "USD"),
    ]


def test_mapping_input_and_missing_currency() -> None:
    got = parse_deriv_redirect({"acct1": ["CR1"], "token1": ["a1-x1"], "cur1": [""]})
    assert got == [DerivOAuthAccount("CR1", "a1-x1", None)]


def test_numbering_stops_at_the_first_gap() -> None:
    got = parse_deriv_redirect("acct1=CR1&token1=a1-x1&cur1=usd&acct3=CR3&token3=a1-x3")
    assert [a.account for a in got] == ["CR1"]


def test_missing_token_is_an_error_naming_the_field() -> None:
    with pytest.raises(BrokerAuthError) as info:
        parse_deriv_redirect("acct1=CR1&token1=a1-x1&acct2=CR2&cur2=usd")
    assert info.value.field == "token2"
    assert info.value.code == "BROKER_AUTH_FAILED"


@pytest.mark.parametrize("query", ["", "error=access_denied", "acct1=&token1=a1-x"])
def test_no_accounts(query: str) -> None:
    with pytest.raises(BrokerAuthError):
        parse_deriv_redirect(query)


def test_malformed_values_are_rejected_without_echoing_them() -> None:
    with pytest.raises(BrokerAuthError) as info:
        parse_deriv_redirect("acct1=CR1&token1=<script>secret</script>")
    assert "secret" not in info.value.message
    with pytest.raises(BrokerAuthError):
        parse_deriv_redirect("acct1=../x&token1=a1-x")


def test_repr_hides_the_token() -> None:
    account = DerivOAuthAccount("CR1", "a1-supersecret", "USD")
    assert "supersecret" not in repr(account)
    assert "supersecret" not in repr([account])


def test_amounts_go_out_as_exact_json_numbers() -> None:
    assert _json_number(Decimal("10"), "stake") == 10
    assert _json_number(Decimal("10.15"), "stake") == 10.15
    with pytest.raises(DomainError):
        _json_number(Decimal("0.12345678901234567890"), "stake")

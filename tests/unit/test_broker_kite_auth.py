"""Kite Connect login helpers: URL, redirect, checksum and access-token expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from tradegraph.brokers.adapters.kite import (
    IST,
    kite_checksum,
    kite_login_url,
    kite_token_expiry,
    parse_kite_redirect,
)
from tradegraph.brokers.protocol import BrokerAuthError


def test_login_url_carries_version_key_and_our_state() -> None:
    url = kite_login_url("abc123", redirect_params={"state": "s1"})
    parts = urlsplit(url)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://kite.zerodha.com/connect/login"
    )
    query = parse_qs(parts.query)
    assert query == {"v": ["3"], "api_key": ["abc123"], "redirect_params": ["state=s1"]}


def test_checksum_is_sha256_of_key_token_secret_in_that_order() -> None:
    # Fixed vector: sha256("abc123" + "req456" + "xyz789").
    expected = "a5b28bcf470d33795ad74c7683b5db30ac3dddb4c3bc0d97444886d937131aca"
    assert kite_checksum("abc123", "req456", "xyz789") == expected
    assert kite_checksum("req456", "abc123", "xyz789") != expected


def test_parse_redirect() -> None:
    got = parse_kite_redirect(
        "https://app.example/cb?action=login&type=login&status=success&request_token=Rt42&state=s1"
    )
    assert got.request_token == "Rt42"
    assert dict(got.params) == {"state": "s1"}
    assert "Rt42" not in repr(got)
    with pytest.raises(BrokerAuthError):
        parse_kite_redirect("status=cancelled&request_token=Rt42")
    with pytest.raises(BrokerAuthError):
        parse_kite_redirect({"status": "success"})
    with pytest.raises(BrokerAuthError):
        parse_kite_redirect({"request_token": "../../etc"})


def ist(*args: int) -> datetime:
    return datetime(*args, tzinfo=IST)


@pytest.mark.parametrize(
    ("login", "expires"),
    [
        # Before 06:00 IST: dies the same morning at 06:00 IST.
        (ist(2024, 3, 10, 5, 59, 59), ist(2024, 3, 10, 6, 0)),
        (ist(2024, 3, 10, 0, 0), ist(2024, 3, 10, 6, 0)),
        # At or after 06:00 IST: dies at 06:00 IST the next day.
        (ist(2024, 3, 10, 6, 0), ist(2024, 3, 11, 6, 0)),
        (ist(2024, 3, 10, 6, 0, 1), ist(2024, 3, 11, 6, 0)),
        (ist(2024, 3, 10, 23, 59), ist(2024, 3, 11, 6, 0)),
        # Month and year ends.
        (ist(2024, 2, 29, 9, 15), ist(2024, 3, 1, 6, 0)),
        (ist(2024, 12, 31, 15, 30), ist(2025, 1, 1, 6, 0)),
    ],
)
def test_token_expiry_around_the_0600_ist_boundary(login: datetime, expires: datetime) -> None:
    got = kite_token_expiry(login)
    assert got == expires
    assert got.utcoffset() == timedelta(0)  # returned in UTC
    assert got.tzinfo is UTC


def test_token_expiry_uses_the_indian_date_not_the_utc_one() -> None:
    # 20:00 UTC on the 15th is 01:30 IST on the 16th: before the cutoff of the 16th.
    assert kite_token_expiry(datetime(2024, 1, 15, 20, 0, tzinfo=UTC)) == datetime(
        2024, 1, 16, 0, 30, tzinfo=UTC
    )
    # 00:29 UTC is 05:59 IST (same day), 00:30 UTC is 06:00 IST.
    assert kite_token_expiry(datetime(2024, 1, 16, 0, 29, tzinfo=UTC)) == datetime(
        2024, 1, 16, 0, 30, tzinfo=UTC
    )
    assert kite_token_expiry(datetime(2024, 1, 16, 0, 30, tzinfo=UTC)) == datetime(
        2024, 1, 17, 0, 30, tzinfo=UTC
    )
    # Any input zone works: 19:00 at UTC-5 on the 15th is 05:30 IST on the 16th.
    new_york = timezone(timedelta(hours=-5))
    assert kite_token_expiry(datetime(2024, 1, 15, 19, 0, tzinfo=new_york)) == datetime(
        2024, 1, 16, 0, 30, tzinfo=UTC
    )


def test_token_expiry_refuses_naive_times() -> None:
    with pytest.raises(ValueError):
        kite_token_expiry(datetime(2024, 1, 1, 12, 0))

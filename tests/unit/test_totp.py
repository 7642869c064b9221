"""TOTP against RFC 4226 / RFC 6238 vectors, drift and replay rules."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from tradegraph.security import totp

RFC_SECRET = b"12345678901234567890"
RFC_SECRET_B32 = base64.b32encode(RFC_SECRET).decode()

# RFC 6238 Appendix B, SHA1 rows: (unix time, counter T, 8-digit TOTP)
RFC6238_SHA1 = [
    (59, 0x1, "94287082"),
    (1111111109, 0x23523EC, "07081804"),
    (1111111111, 0x23523ED, "14050471"),
    (1234567890, 0x273EF07, "89005924"),
    (2000000000, 0x3F940AA, "69279037"),
    (20000000000, 0x27BC86AA, "65353130"),
]

# RFC 4226 Appendix D
RFC4226 = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("unix", "step", "expected"), RFC6238_SHA1)
def test_rfc6238_sha1_vectors(unix: int, step: int, expected: str) -> None:
    assert totp.time_step(unix) == step
    assert totp.code_at(RFC_SECRET, unix, digits=8) == expected
    assert totp.code_at(RFC_SECRET_B32, unix, digits=8) == expected
    assert totp.verify(RFC_SECRET_B32, expected, unix, None, digits=8) == step


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(RFC4226)))
def test_rfc4226_hotp_vectors(counter: int, expected: str) -> None:
    assert totp.hotp(RFC_SECRET, counter) == expected


def test_datetime_and_float_agree() -> None:
    dt = datetime.fromtimestamp(1111111109, UTC)
    assert totp.code_at(RFC_SECRET, dt, digits=8) == "07081804"
    with pytest.raises(ValueError, match="timezone"):
        totp.code_at(RFC_SECRET, datetime(2025, 1, 1))


def test_one_step_of_drift_either_side_only() -> None:
    secret = totp.new_secret()
    step = totp.time_step(NOW)
    for offset in (-1, 0, 1):
        code = totp.code_at(secret, NOW + 30 * offset)
        assert totp.verify(secret, code, NOW, None) == step + offset
    for offset in (-2, 2):
        code = totp.code_at(secret, NOW + 30 * offset)
        assert totp.verify(secret, code, NOW, None) is None


def test_a_code_is_never_accepted_twice() -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, NOW)
    used = totp.verify(secret, code, NOW, None)
    assert used == totp.time_step(NOW)
    # Same code again, a few seconds later (still inside the window): refused.
    assert totp.verify(secret, code, NOW + 5, used) is None
    # An older (previous-step) code is refused too, even though it is within drift.
    assert totp.verify(secret, totp.code_at(secret, NOW - 30), NOW, used) is None
    # The next step's code is fine.
    nxt = totp.code_at(secret, NOW + 30)
    assert totp.verify(secret, nxt, NOW + 30, used) == used + 1


def test_wrong_and_malformed_codes() -> None:
    secret = RFC_SECRET_B32
    code = totp.code_at(secret, NOW)
    window = {totp.code_at(secret, NOW + 30 * k) for k in (-1, 0, 1)}
    wrong = next(
        c for c in (f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 5)) if c not in window
    )
    assert totp.verify(secret, wrong, NOW, None) is None
    for bad in ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", None, 123456]:
        assert totp.verify(secret, bad, NOW, None) is None
    assert totp.verify(secret, f"{code[:3]} {code[3:]}", NOW, None) == totp.time_step(NOW)


def test_wrong_secret_does_not_verify() -> None:
    code = totp.code_at(totp.new_secret(), NOW)
    assert totp.verify(totp.new_secret(), code, NOW, None) is None


def test_new_secret_is_base32_160_bits_and_unique() -> None:
    secrets_ = {totp.new_secret() for _ in range(50)}
    assert len(secrets_) == 50
    s = secrets_.pop()
    assert len(base64.b32decode(s + "=" * (-len(s) % 8))) == 20
    assert s == s.upper() and "=" not in s
    with pytest.raises(ValueError):
        totp.new_secret(8)


def test_secret_parsing_is_lenient_about_case_spaces_padding() -> None:
    code = totp.code_at(RFC_SECRET_B32, 59, digits=8)
    spaced = " ".join(RFC_SECRET_B32.lower()[i : i + 4] for i in range(0, 32, 4))
    assert totp.code_at(spaced, 59, digits=8) == code
    with pytest.raises(ValueError, match="base32"):
        totp.code_at("not base32!!", 59)


def test_provisioning_uri_is_properly_encoded() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "alice+test@example.com", "TradeGraph Demo")
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth"
    assert parts.netloc == "totp"
    assert parts.path == "/TradeGraph%20Demo:alice%2Btest%40example.com"
    assert "+" not in parts.query  # spaces must be %20, not '+'
    query = parse_qs(parts.query)
    assert query == {
        "secret": [secret],
        "issuer": ["TradeGraph Demo"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }


def test_provisioning_uri_validation() -> None:
    secret = totp.new_secret()
    with pytest.raises(ValueError):
        totp.provisioning_uri(secret, "a:b", "TradeGraph")
    with pytest.raises(ValueError):
        totp.provisioning_uri(secret, "alice", "Trade:Graph")
    with pytest.raises(ValueError):
        totp.provisioning_uri(secret, "", "TradeGraph")
    with pytest.raises(ValueError):
        totp.provisioning_uri("!!!", "alice", "TradeGraph")


def test_hotp_argument_checks() -> None:
    with pytest.raises(ValueError):
        totp.hotp(RFC_SECRET, -1)
    with pytest.raises(ValueError):
        totp.hotp(RFC_SECRET, 0, digits=4)

"""Access-token JWTs and opaque tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tradegraph.errors import Unauthenticated
from tradegraph.security.tokens import (
    ACCESS_TOKEN_TTL,
    API_TOKEN_PREFIX,
    REFRESH_TOKEN_PREFIX,
    decode_access_token,
    hash_token,
    issue_access_token,
    new_opaque_token,
    token_matches_hash,
    tokens_equal,
)

SECRET = b"0123456789abcdef0123456789abcdef-test"
ISS = "https://tradegraph.test"
AUD = "tradegraph-api"
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def _issue(**overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "secret": SECRET,
        "issuer": ISS,
        "audience": AUD,
        "subject": "user-42",
        "role": "TRADER",
        "now": T0,
    }
    kwargs.update(overrides)
    return issue_access_token(**kwargs).token


def _decode(token: str, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {"secret": SECRET, "issuer": ISS, "audience": AUD, "now": T0}
    kwargs.update(overrides)
    return decode_access_token(token, **kwargs)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _forge(header: dict[str, Any], claims: dict[str, Any], *, key: bytes = SECRET) -> str:
    """Hand-built HS-family JWT so tests control every byte."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(
        header.get("alg", ""), hashlib.sha256
    )
    sig = _b64(hmac.new(key, signing_input.encode(), digest).digest())
    return f"{signing_input}.{sig}"


def _claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-42",
        "iat": int(T0.timestamp()),
        "exp": int((T0 + ACCESS_TOKEN_TTL).timestamp()),
        "jti": "abc123",
        "role": "TRADER",
        "ver": 0,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


HS256 = {"alg": "HS256", "typ": "at+jwt"}


def test_round_trip_carries_all_claims() -> None:
    issued = issue_access_token(
        secret=SECRET,
        issuer=ISS,
        audience=AUD,
        subject="user-42",
        role="ADMIN",
        token_version=7,
        session_id="fam-1",
        now=T0,
        extra={"amr": ["pwd", "otp"]},
    )
    claims = _decode(issued.token)
    assert claims == issued.claims
    assert claims.subject == "user-42"
    assert claims.role == "ADMIN"
    assert claims.token_version == 7
    assert claims.session_id == "fam-1"
    assert claims.extra == {"amr": ["pwd", "otp"]}
    assert re.fullmatch(r"[0-9a-f]{32}", claims.jti)
    assert claims.issued_at == T0
    assert claims.expires_at - claims.issued_at == timedelta(minutes=15)
    header = json.loads(base64.urlsafe_b64decode(issued.token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "at+jwt"}


def test_each_token_has_unique_jti() -> None:
    assert _decode(_issue()).jti != _decode(_issue()).jti


def test_str_secret_equivalent_to_bytes() -> None:
    token = _issue(secret=SECRET.decode())
    assert _decode(token).subject == "user-42"


def test_expiry_with_small_leeway() -> None:
    token = _issue()
    exp = T0 + ACCESS_TOKEN_TTL
    assert _decode(token, now=exp + timedelta(seconds=29)).subject == "user-42"
    with pytest.raises(Unauthenticated, match="expired"):
        _decode(token, now=exp + timedelta(seconds=31))
    with pytest.raises(Unauthenticated, match="expired"):
        _decode(token, now=exp, leeway_seconds=0)


def test_custom_ttl() -> None:
    token = _issue(ttl=timedelta(seconds=60))
    with pytest.raises(Unauthenticated, match="expired"):
        _decode(token, now=T0 + timedelta(seconds=120))


def test_issued_in_the_future_is_refused_beyond_leeway() -> None:
    token = _issue(now=T0 + timedelta(seconds=10))
    assert _decode(token).subject == "user-42"  # small clock skew tolerated
    token = _issue(now=T0 + timedelta(minutes=5))
    with pytest.raises(Unauthenticated, match="iat"):
        _decode(token)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"issuer": "https://evil.test"}, "another issuer"),
        ({"audience": "other-api"}, "another audience"),
        ({"secret": b"another-secret-that-is-long-enough!!"}, "signature"),
    ],
)
def test_wrong_issuer_audience_or_key(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(Unauthenticated, match=match) as info:
        _decode(_issue(), **overrides)
    assert info.value.code == "UNAUTHENTICATED"


def test_alg_none_is_rejected() -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    with pytest.raises(Unauthenticated, match="algorithm is not allowed"):
        _decode(f"{header}.{payload}.")
    with pytest.raises(Unauthenticated, match="Malformed"):
        _decode(f"{header}.{payload}")


@pytest.mark.parametrize("alg", ["HS512", "RS256", "ES256", "HS384"])
def test_other_algorithms_are_rejected_even_with_valid_hmac(alg: str) -> None:
    token = _forge({"alg": alg, "typ": "at+jwt"}, _claims())
    with pytest.raises(Unauthenticated, match="algorithm is not allowed"):
        _decode(token)


def test_forged_hs256_with_right_key_is_accepted_sanity() -> None:
    # Guards the forging helper itself: otherwise the rejections below prove nothing.
    assert _decode(_forge(HS256, _claims())).jti == "abc123"


@pytest.mark.parametrize("missing", ["jti", "iat", "exp", "sub", "iss", "aud"])
def test_missing_required_claim(missing: str) -> None:
    with pytest.raises(Unauthenticated, match=missing):
        _decode(_forge(HS256, _claims(**{missing: None})))


@pytest.mark.parametrize(
    "bad",
    [{"role": None}, {"role": ""}, {"ver": "1"}, {"ver": True}, {"sid": 5}, {"sub": 42}],
)
def test_invalid_custom_claims(bad: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated):
        _decode(_forge(HS256, _claims(**bad)))


def test_wrong_type_header_is_rejected() -> None:
    for header in ({"alg": "HS256", "typ": "JWT"}, {"alg": "HS256"}):
        with pytest.raises(Unauthenticated, match="not an access token"):
            _decode(_forge(header, _claims()))


def test_tampered_payload_fails_signature() -> None:
    header, _payload, sig = _issue().split(".")
    evil = _b64(json.dumps(_claims(role="ADMIN")).encode())
    with pytest.raises(Unauthenticated, match="signature"):
        _decode(f"{header}.{evil}.{sig}")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "....", "x" * 9000, None])
def test_garbage_tokens(garbage: Any) -> None:
    with pytest.raises(Unauthenticated):
        _decode(garbage)


def test_error_does_not_echo_token() -> None:
    token = _issue()
    with pytest.raises(Unauthenticated) as info:
        _decode(token, audience="x")
    assert token not in str(info.value)
    assert token.split(".")[2] not in repr(info.value)


def test_issue_validation() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _issue(secret=b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        _decode(_issue(), secret="short")
    with pytest.raises(ValueError, match="override"):
        _issue(extra={"role": "ADMIN"})
    with pytest.raises(ValueError, match="timezone"):
        _issue(now=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        _issue(subject="")
    with pytest.raises(ValueError):
        _issue(ttl=timedelta(0))


def test_issued_token_repr_redacts_token() -> None:
    issued = issue_access_token(
        secret=SECRET, issuer=ISS, audience=AUD, subject="u", role="TRADER", now=T0
    )
    assert issued.token not in repr(issued)
    assert "redacted" in repr(issued)


def test_opaque_tokens() -> None:
    seen = set()
    for prefix in (REFRESH_TOKEN_PREFIX, API_TOKEN_PREFIX):
        for _ in range(50):
            token = new_opaque_token(prefix)
            body = token[len(prefix) :]
            assert token.startswith(prefix)
            assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", body)  # >= 32 bytes of entropy
            seen.add(token)
    assert len(seen) == 100
    assert len(new_opaque_token("tgr_", 48)) == 4 + 64


@pytest.mark.parametrize("prefix", ["", "tgr", "TGR_", "t g_", "tgr-", "averyveryverylongprefix_"])
def test_opaque_token_rejects_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError):
        new_opaque_token(prefix)


def test_opaque_token_rejects_short_entropy() -> None:
    with pytest.raises(ValueError):
        new_opaque_token("tgr_", 16)


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    token = new_opaque_token("tgr_")
    digest = hash_token(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and token not in digest


def test_constant_time_helpers() -> None:
    token = new_opaque_token("tgp_")
    assert tokens_equal(token, token)
    assert tokens_equal(token.encode(), token)
    assert not tokens_equal(token, token[:-1])
    assert not tokens_equal(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    stored = hash_token(token)
    assert token_matches_hash(token, stored)
    assert token_matches_hash(token, stored.upper())
    assert not token_matches_hash(token + "x", stored)

"""Access tokens (short-lived JWT, HS256) and opaque tokens (refresh / API tokens).

Why: access tokens are checked on every request without a database hit, so they are short
(15 minutes) and carry what authorization needs (subject, role, token version, session
family). The algorithm is pinned to HS256 so a forged header ("none", RS256 with the HMAC
secret as a public key...) can never pick how the signature is checked. Refresh and API
tokens are opaque random strings stored only as SHA-256 hashes: a database leak does not
leak usable tokens, and 256 random bits need no salt or slow hash.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import OctKey

from tradegraph.errors import Unauthenticated

__all__ = [
    "ACCESS_TOKEN_ALGORITHM",
    "ACCESS_TOKEN_TTL",
    "ACCESS_TOKEN_TYPE",
    "API_TOKEN_PREFIX",
    "DEFAULT_LEEWAY_SECONDS",
    "MIN_SECRET_BYTES",
    "REFRESH_TOKEN_PREFIX",
    "AccessClaims",
    "IssuedAccessToken",
    "decode_access_token",
    "hash_token",
    "issue_access_token",
    "new_opaque_token",
    "token_matches_hash",
    "tokens_equal",
]

ACCESS_TOKEN_ALGORITHM = "HS256"
#: JWT ``typ`` header (RFC 9068) so another JWT signed with the same secret is not accepted.
ACCESS_TOKEN_TYPE = "at+jwt"
ACCESS_TOKEN_TTL = timedelta(minutes=15)
DEFAULT_LEEWAY_SECONDS = 30
MIN_SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 8192

REFRESH_TOKEN_PREFIX = "tgr_"
API_TOKEN_PREFIX = "tgp_"
MIN_OPAQUE_TOKEN_BYTES = 32

_REGISTERED = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti", "sub", "role", "ver", "sid"})
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}_$")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified content of an access token."""

    subject: str
    role: str
    token_version: int
    session_id: str | None
    jti: str
    issued_at: datetime
    expires_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    """A freshly signed token plus what the caller reports back (e.g. ``expiresAt``)."""

    token: str
    claims: AccessClaims

    def __repr__(self) -> str:  # the token is a bearer credential: keep it out of logs
        return f"IssuedAccessToken(token='<redacted>', claims={self.claims!r})"


@functools.lru_cache(maxsize=8)
def _key(secret: bytes | str) -> OctKey:
    # Cached: importing a key parses and probes formats, and this runs on every request.
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
    return OctKey.import_key(raw)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def issue_access_token(
    *,
    secret: bytes | str,
    issuer: str,
    audience: str,
    subject: str,
    role: str,
    token_version: int = 0,
    session_id: str | None = None,
    ttl: timedelta = ACCESS_TOKEN_TTL,
    now: datetime | None = None,
    extra: Mapping[str, Any] | None = None,
) -> IssuedAccessToken:
    """Sign an HS256 access token.

    ``token_version`` is the user's counter bumped on password change / "log out
    everywhere" (tokens with an older version are refused by the identity layer);
    ``session_id`` is the refresh-token family, so revoking a family can be checked too.
    """
    if not subject:
        raise ValueError("subject is required")
    if not role:
        raise ValueError("role is required")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    extra = dict(extra or {})
    clash = _REGISTERED.intersection(extra)
    if clash:
        raise ValueError(f"extra claims may not override {sorted(clash)}")
    issued = _utc(now).replace(microsecond=0)
    expires = issued + ttl
    jti = uuid.uuid4().hex
    claims: dict[str, Any] = {
        **extra,
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": jti,
        "role": role,
        "ver": int(token_version),
    }
    if session_id is not None:
        claims["sid"] = session_id
    header = {"alg": ACCESS_TOKEN_ALGORITHM, "typ": ACCESS_TOKEN_TYPE}
    token = jwt.encode(header, claims, _key(secret), algorithms=[ACCESS_TOKEN_ALGORITHM])
    return IssuedAccessToken(
        token=token,
        claims=AccessClaims(
            subject=subject,
            role=role,
            token_version=int(token_version),
            session_id=session_id,
            jti=jti,
            issued_at=issued,
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            extra=extra,
        ),
    )


def decode_access_token(
    token: str,
    *,
    secret: bytes | str,
    issuer: str,
    audience: str,
    now: datetime | None = None,
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
) -> AccessClaims:
    """Verify signature, algorithm, type, iss, aud, exp, iat and jti; else ``Unauthenticated``.

    Messages say what is wrong (expired, bad signature, wrong audience...) but never echo
    the token.
    """
    key = _key(secret)
    header = _unverified_header(token)
    # Checked before any cryptography so the header can never choose the algorithm.
    if header.get("alg") != ACCESS_TOKEN_ALGORITHM:
        raise Unauthenticated(
            f"Access token algorithm is not allowed ({ACCESS_TOKEN_ALGORITHM} only)."
        )
    if header.get("typ") != ACCESS_TOKEN_TYPE:
        raise Unauthenticated("Token is not an access token.")
    try:
        decoded = jwt.decode(token, key, algorithms=[ACCESS_TOKEN_ALGORITHM])
    except BadSignatureError:
        raise Unauthenticated("Access token signature is invalid.") from None
    except (JoseError, ValueError, TypeError):
        raise Unauthenticated("Malformed access token.") from None
    if decoded.header.get("alg") != ACCESS_TOKEN_ALGORITHM:  # belt and braces
        raise Unauthenticated("Access token algorithm is not allowed.")

    registry = jwt.JWTClaimsRegistry(
        now=int(_utc(now).timestamp()),
        leeway=leeway_seconds,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )
    claims = decoded.claims
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise Unauthenticated("Access token has expired.") from None
    except MissingClaimError as exc:
        raise Unauthenticated(f"Access token is missing the '{exc.claim}' claim.") from None
    except InvalidClaimError as exc:
        if exc.claim == "iss":
            raise Unauthenticated("Access token was issued by another issuer.") from None
        if exc.claim == "aud":
            raise Unauthenticated("Access token is for another audience.") from None
        raise Unauthenticated(
            f"Access token has an invalid '{exc.claim}' claim: {exc.description}"
        ) from None
    except JoseError:
        raise Unauthenticated("Access token claims are invalid.") from None

    role = claims.get("role")
    version = claims.get("ver", 0)
    sid = claims.get("sid")
    if not isinstance(role, str) or not role:
        raise Unauthenticated("Access token has no role.")
    if not isinstance(version, int) or isinstance(version, bool):
        raise Unauthenticated("Access token has an invalid token version.")
    if sid is not None and not isinstance(sid, str):
        raise Unauthenticated("Access token has an invalid session id.")
    return AccessClaims(
        subject=claims["sub"],
        role=role,
        token_version=version,
        session_id=sid,
        jti=claims["jti"],
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        extra={k: v for k, v in claims.items() if k not in _REGISTERED},
    )


def _unverified_header(token: object) -> dict[str, Any]:
    """The JOSE header of a compact JWS, only to reject it early; never trusted beyond that."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("Malformed access token.")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise Unauthenticated("Malformed access token.")
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (ValueError, TypeError):
        raise Unauthenticated("Malformed access token.") from None
    if not isinstance(header, dict):
        raise Unauthenticated("Malformed access token.")
    return header


def new_opaque_token(prefix: str, nbytes: int = MIN_OPAQUE_TOKEN_BYTES) -> str:
    """Return ``prefix`` + urlsafe random text (e.g. ``tgr_...`` refresh, ``tgp_...`` API).

    The prefix makes a leaked token recognisable (secret scanners, support) and lets the
    auth layer tell token kinds apart without a lookup.
    """
    if not _PREFIX_RE.match(prefix):
        raise ValueError("prefix must be lowercase letters/digits ending in '_', e.g. 'tgr_'")
    if nbytes < MIN_OPAQUE_TOKEN_BYTES:
        raise ValueError(f"opaque tokens need at least {MIN_OPAQUE_TOKEN_BYTES} random bytes")
    return prefix + secrets.token_urlsafe(nbytes)


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: what the database stores and looks tokens up by."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_equal(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality for secrets (timing must not reveal the matching prefix)."""
    a_bytes = a.encode("utf-8") if isinstance(a, str) else a
    b_bytes = b.encode("utf-8") if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def token_matches_hash(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented token against its stored SHA-256 hex."""
    return tokens_equal(hash_token(token), stored_hash.lower())

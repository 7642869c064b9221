"""TOTP second factor (RFC 6238 over RFC 4226 HOTP, HMAC-SHA1).

Why hand-written: it is ~40 lines of hmac/struct, and owning it lets ``verify`` enforce the
two rules that matter and that libraries leave to the caller: one step of clock drift either
side, and a code (time step) is never accepted twice - the caller stores the returned step
and passes it back as ``last_used_step``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from datetime import datetime
from urllib.parse import quote, urlencode

__all__ = [
    "DEFAULT_DIGITS",
    "DEFAULT_STEP_SECONDS",
    "code_at",
    "hotp",
    "new_secret",
    "provisioning_uri",
    "time_step",
    "verify",
]

DEFAULT_DIGITS = 6
DEFAULT_STEP_SECONDS = 30
SECRET_BYTES = 20  # 160 bits, the RFC 4226 recommended length for HMAC-SHA1


def new_secret(nbytes: int = SECRET_BYTES) -> str:
    """A fresh random base32 secret (no padding), as authenticator apps expect."""
    if nbytes < 16:
        raise ValueError("TOTP secrets need at least 128 bits")
    return base64.b32encode(secrets.token_bytes(nbytes)).decode("ascii").rstrip("=")


def _secret_bytes(secret: str | bytes) -> bytes:
    """Raw key bytes; a str is base32 (case/space/padding-insensitive)."""
    if isinstance(secret, bytes):
        return secret
    cleaned = secret.replace(" ", "").replace("-", "").upper().rstrip("=")
    cleaned += "=" * (-len(cleaned) % 8)
    try:
        key = base64.b32decode(cleaned)
    except (binascii.Error, ValueError):
        raise ValueError("TOTP secret is not valid base32") from None
    if not key:
        raise ValueError("TOTP secret is empty")
    return key


def hotp(key: bytes, counter: int, digits: int = DEFAULT_DIGITS) -> str:
    """RFC 4226 HOTP value for ``counter``, zero-padded to ``digits``."""
    if not 6 <= digits <= 10:
        raise ValueError("digits must be between 6 and 10")
    if counter < 0:
        raise ValueError("counter must be non-negative")
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    (truncated,) = struct.unpack(">I", mac[offset : offset + 4])
    return str((truncated & 0x7FFFFFFF) % (10**digits)).zfill(digits)


def _timestamp(now: datetime | float) -> float:
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.timestamp()
    return float(now)


def time_step(now: datetime | float, step_seconds: int = DEFAULT_STEP_SECONDS) -> int:
    """The RFC 6238 counter T = floor(unix_time / step) (T0 = 0)."""
    return int(_timestamp(now) // step_seconds)


def code_at(
    secret: str | bytes,
    now: datetime | float,
    *,
    digits: int = DEFAULT_DIGITS,
    step_seconds: int = DEFAULT_STEP_SECONDS,
) -> str:
    """The TOTP code valid at ``now`` (for tests, enrolment checks and fake devices)."""
    return hotp(_secret_bytes(secret), time_step(now, step_seconds), digits)


def verify(
    secret: str | bytes,
    code: str,
    now: datetime | float,
    last_used_step: int | None,
    *,
    digits: int = DEFAULT_DIGITS,
    step_seconds: int = DEFAULT_STEP_SECONDS,
    drift_steps: int = 1,
) -> int | None:
    """Return the matched time step, or None.

    Accepts the current step and ``drift_steps`` either side, but never a step
    ``<= last_used_step``: the caller must persist the returned step (atomically with the
    login) so the same code - or an older one - cannot be replayed.
    """
    if not isinstance(code, str):
        return None
    candidate = code.replace(" ", "").strip()
    if len(candidate) != digits or not candidate.isascii() or not candidate.isdigit():
        return None
    key = _secret_bytes(secret)
    current = time_step(now, step_seconds)
    matched: int | None = None
    # Compare every window step (no early exit) so timing does not reveal which one matched.
    for counter in range(current - drift_steps, current + drift_steps + 1):
        if counter < 0:
            continue
        ok = hmac.compare_digest(hotp(key, counter, digits), candidate)
        if ok and (last_used_step is None or counter > last_used_step):
            matched = counter if matched is None else max(matched, counter)
    return matched


def provisioning_uri(
    secret: str,
    account_name: str,
    issuer: str,
    *,
    digits: int = DEFAULT_DIGITS,
    step_seconds: int = DEFAULT_STEP_SECONDS,
) -> str:
    """``otpauth://totp/Issuer:account?secret=...&issuer=...`` (Key URI Format), for QR codes.

    Label parts and parameters are percent-encoded (spaces as %20, '@' as %40); a colon is
    refused in either name because it is the label's issuer separator.
    """
    if not account_name or not issuer:
        raise ValueError("account_name and issuer are required")
    if ":" in account_name or ":" in issuer:
        raise ValueError("account_name and issuer may not contain ':'")
    _secret_bytes(secret)  # validate
    label = f"{quote(issuer, safe='')}:{quote(account_name, safe='')}"
    params = {
        "secret": secret.replace(" ", "").upper().rstrip("="),
        "issuer": issuer,
        "algorithm": "SHA1",
        "digits": str(digits),
        "period": str(step_seconds),
    }
    return f"otpauth://totp/{label}?{urlencode(params, quote_via=quote)}"

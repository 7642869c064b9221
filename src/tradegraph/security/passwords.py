"""Password hashing (argon2id) and the password policy.

Why argon2id with m>=19 MiB, t>=2, p=1: it is the OWASP minimum for memory-hard hashing, so
a leaked table costs an attacker real memory per guess. Passwords are NFKC-normalised before
hashing and policy checks so the same password typed on different keyboards/OSes (composed
vs decomposed accents) verifies the same way.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import argon2
from argon2.exceptions import Argon2Error

from tradegraph.errors import DomainError

__all__ = [
    "DEFAULT_PARAMS",
    "MAX_PASSWORD_LENGTH",
    "MINIMUM_PARAMS",
    "MIN_PASSWORD_LENGTH",
    "Argon2Params",
    "PasswordHasher",
    "check_password_policy",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id cost parameters; memory_cost is in KiB."""

    memory_cost: int = 19_456
    time_cost: int = 2
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16

    def meets(self, floor: Argon2Params) -> bool:
        """True when every cost is at least the floor's (used to guard production config)."""
        return (
            self.memory_cost >= floor.memory_cost
            and self.time_cost >= floor.time_cost
            and self.parallelism >= floor.parallelism
        )


#: The OWASP floor the defaults must never go below.
MINIMUM_PARAMS = Argon2Params(memory_cost=19_456, time_cost=2, parallelism=1)
DEFAULT_PARAMS = Argon2Params()


def _normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


class PasswordHasher:
    """argon2id hasher built from explicit parameters (tests pass cheap ones)."""

    def __init__(self, params: Argon2Params = DEFAULT_PARAMS) -> None:
        self.params = params
        self._hasher = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost,
            parallelism=params.parallelism,
            hash_len=params.hash_len,
            salt_len=params.salt_len,
            type=argon2.Type.ID,
        )

    def __repr__(self) -> str:
        return f"PasswordHasher({self.params!r})"

    @cached_property
    def _dummy_hash(self) -> str:
        # Verified against when the account does not exist, so "unknown email" takes as long
        # as "wrong password" and login timing does not reveal which emails are registered.
        return self._hasher.hash("tradegraph-dummy-password-for-timing")

    def hash(self, password: str) -> str:
        """Return an encoded argon2id hash (salt and parameters embedded)."""
        if not isinstance(password, str):
            raise TypeError("password must be a str")
        return self._hasher.hash(_normalize(password))

    def verify(self, password: str, stored_hash: str | None) -> bool:
        """Constant-time check; False (never an exception) for a wrong password or bad hash.

        Pass ``stored_hash=None`` for an unknown account: a dummy hash is verified so the
        call costs the same time, and the result is always False.
        """
        if not isinstance(password, str):
            return False
        if stored_hash is None or not isinstance(stored_hash, str):
            self._burn(password)
            return False
        try:
            return self._hasher.verify(stored_hash, _normalize(password))
        except (Argon2Error, ValueError, TypeError):
            # VerifyMismatchError, InvalidHashError (a ValueError), unsupported parameters...
            return False

    def _burn(self, password: str) -> None:
        with contextlib.suppress(Argon2Error):
            self._hasher.verify(self._dummy_hash, _normalize(password))

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters (rehash after a good login)."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (Argon2Error, ValueError, TypeError):
            return True


_default_hasher = PasswordHasher(DEFAULT_PARAMS)


def hash_password(password: str, *, hasher: PasswordHasher | None = None) -> str:
    """Hash with the default (production-strength) hasher unless one is given."""
    return (hasher or _default_hasher).hash(password)


def verify_password(
    password: str, stored_hash: str | None, *, hasher: PasswordHasher | None = None
) -> bool:
    """Return True if ``password`` matches ``stored_hash``; never raises on garbage input."""
    return (hasher or _default_hasher).verify(password, stored_hash)


def needs_rehash(stored_hash: str, *, hasher: PasswordHasher | None = None) -> bool:
    """True when ``stored_hash`` does not use the hasher's current parameters."""
    return (hasher or _default_hasher).needs_rehash(stored_hash)


def _weak(message: str) -> DomainError:
    return DomainError(message, code="WEAK_PASSWORD", field="password")


def check_password_policy(password: str, *, user_inputs: Iterable[str | None] = ()) -> None:
    """Raise ``DomainError(code="WEAK_PASSWORD", field="password")`` if the password is weak.

    Length is the rule that matters (NIST 800-63B); composition rules are deliberately
    absent. ``user_inputs`` (email, display name) may not be reused as the password.
    """
    if not isinstance(password, str):
        raise _weak("Password must be a string.")
    normalized = _normalize(password)
    if len(normalized) < MIN_PASSWORD_LENGTH:
        raise _weak(f"Password must be at least {MIN_PASSWORD_LENGTH} characters long.")
    if len(normalized) > MAX_PASSWORD_LENGTH:
        raise _weak(f"Password must be at most {MAX_PASSWORD_LENGTH} characters long.")
    if len(set(normalized)) == 1:
        raise _weak("Password must not be a single repeated character.")
    folded = normalized.casefold()
    for value in user_inputs:
        if not value:
            continue
        candidates = {_normalize(value).casefold()}
        if "@" in value:
            candidates.add(_normalize(value.split("@", 1)[0]).casefold())
        if folded in candidates:
            raise _weak("Password must not be your email or name.")

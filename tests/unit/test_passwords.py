"""Password hashing and policy."""

from __future__ import annotations

import unicodedata

import argon2
import pytest

from tradegraph.errors import DomainError
from tradegraph.security import passwords
from tradegraph.security.passwords import (
    DEFAULT_PARAMS,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    MINIMUM_PARAMS,
    Argon2Params,
    PasswordHasher,
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)

CHEAP = PasswordHasher(Argon2Params(memory_cost=8, time_cost=1, parallelism=1))
GOOD = "correct horse battery staple"


def test_defaults_meet_owasp_minimum_and_produce_argon2id() -> None:
    assert MINIMUM_PARAMS.memory_cost >= 19_456
    assert MINIMUM_PARAMS.time_cost >= 2
    assert MINIMUM_PARAMS.parallelism >= 1
    assert DEFAULT_PARAMS.meets(MINIMUM_PARAMS)
    # The one real-cost hash in this file: what hash_password actually emits.
    encoded = hash_password(GOOD)
    params = argon2.extract_parameters(encoded)
    assert encoded.startswith("$argon2id$")
    assert params.type is argon2.Type.ID
    assert params.memory_cost >= 19_456
    assert params.time_cost >= 2
    assert params.parallelism >= 1
    assert not needs_rehash(encoded)


def test_meets_detects_weak_params() -> None:
    assert not Argon2Params(memory_cost=19_455).meets(MINIMUM_PARAMS)
    assert not Argon2Params(time_cost=1).meets(MINIMUM_PARAMS)
    assert Argon2Params(memory_cost=65_536, time_cost=3).meets(MINIMUM_PARAMS)


def test_round_trip_and_wrong_password() -> None:
    encoded = hash_password(GOOD, hasher=CHEAP)
    assert verify_password(GOOD, encoded, hasher=CHEAP)
    assert not verify_password(GOOD + "!", encoded, hasher=CHEAP)
    assert not verify_password("", encoded, hasher=CHEAP)


def test_salted_so_same_password_hashes_differ() -> None:
    a, b = CHEAP.hash(GOOD), CHEAP.hash(GOOD)
    assert a != b
    assert CHEAP.verify(GOOD, a) and CHEAP.verify(GOOD, b)


def test_verify_never_raises_on_garbage_hash() -> None:
    garbage: list[object] = [
        "",
        "not a hash",
        "$argon2id$",
        "$argon2id$v=19$m=8,t=1,p=1$!!!$!!!",
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "$argon2id$v=19$m=8,t=1,p=1$YWFhYWFhYWFhYWFhYWFhYQ$" + "A" * 43,
        "\x00\xff",
        "ünïcödé",
        None,
        12345,
    ]
    for bad in garbage:
        assert CHEAP.verify(GOOD, bad) is False
    assert CHEAP.verify(None, CHEAP.hash(GOOD)) is False


def test_unknown_account_still_spends_a_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = PasswordHasher(Argon2Params(memory_cost=8, time_cost=1, parallelism=1))
    calls: list[str] = []
    real = hasher._hasher

    class Spy:
        def verify(self, stored: str, password: str) -> bool:
            calls.append(stored)
            return real.verify(stored, password)

        def hash(self, password: str) -> str:
            return real.hash(password)

    monkeypatch.setattr(hasher, "_hasher", Spy())
    assert hasher.verify(GOOD, None) is False
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")
    # Even the dummy password itself does not log anyone in.
    assert hasher.verify("tradegraph-dummy-password-for-timing", None) is False


def test_unicode_normalisation_makes_composed_and_decomposed_equal() -> None:
    composed = unicodedata.normalize("NFC", "Přílišžluťoučký kůň")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert CHEAP.verify(decomposed, CHEAP.hash(composed))


def test_needs_rehash() -> None:
    cheap_hash = CHEAP.hash(GOOD)
    assert needs_rehash(cheap_hash)  # default (strong) params differ
    assert not CHEAP.needs_rehash(cheap_hash)
    assert needs_rehash("garbage")
    assert CHEAP.needs_rehash("")


def test_repr_has_params_only() -> None:
    assert "memory_cost=8" in repr(CHEAP)


def test_hash_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        CHEAP.hash(b"bytes")


def _weak(password: object, **kwargs: object) -> DomainError:
    with pytest.raises(DomainError) as info:
        check_password_policy(password, **kwargs)
    err = info.value
    assert err.code == "WEAK_PASSWORD"
    assert err.field == "password"
    return err


def test_policy_length_bounds() -> None:
    check_password_policy("a1" * 6)  # exactly 12
    check_password_policy("ab" * (MAX_PASSWORD_LENGTH // 2))  # exactly 256
    assert "12" in _weak("a1" * 5 + "x").message  # 11
    assert "256" in _weak("ab" * 128 + "c").message  # 257
    assert MIN_PASSWORD_LENGTH == 12 and MAX_PASSWORD_LENGTH == 256


def test_policy_rejects_trivial_and_personal_passwords() -> None:
    _weak("a" * 20)
    _weak(12345678901234)
    _weak("Alice.Smith@Example.com", user_inputs=["alice.smith@example.com"])
    _weak("alicesmith1990", user_inputs=["AliceSmith1990@example.com"])
    _weak("Alice Wonderland", user_inputs=[None, "alice wonderland"])
    check_password_policy("alicesmith1990!", user_inputs=["alicesmith1990@example.com", None])


def test_module_default_hasher_is_strong() -> None:
    assert passwords._default_hasher.params.meets(MINIMUM_PARAMS)

"""PrincipalCache: bounded lifetime, per-user forgetting, size bound."""

from __future__ import annotations

from tradegraph.identity.models import AccessLevel, Role, UserStatus
from tradegraph.identity.principal import Principal
from tradegraph.identity.principal_cache import PrincipalCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def principal(user_id: str) -> Principal:
    return Principal(
        user_id=user_id,
        role=Role.TRADER,
        status=UserStatus.ACTIVE,
        access_level=AccessLevel.FULL,
    )


def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    cache = PrincipalCache(2.0, clock=clock)
    cache.put("t1", principal("u1"))
    clock.now += 1.9
    assert cache.get("t1") == principal("u1")
    clock.now += 0.2
    assert cache.get("t1") is None
    assert len(cache) == 0


def test_an_entry_never_outlives_its_token() -> None:
    clock = FakeClock()
    cache = PrincipalCache(10.0, clock=clock)
    cache.put("t1", principal("u1"), valid_for=0.5)
    clock.now += 0.6
    assert cache.get("t1") is None
    cache.put("expired", principal("u1"), valid_for=-1)
    assert cache.get("expired") is None


def test_forget_user_drops_every_token_of_that_user_only() -> None:
    cache = PrincipalCache(60.0, clock=FakeClock())
    cache.put("a1", principal("alice"))
    cache.put("a2", principal("alice"))
    cache.put("b1", principal("bob"))
    cache.forget_user("alice")
    assert cache.get("a1") is None and cache.get("a2") is None
    assert cache.get("b1") == principal("bob")


def test_size_is_bounded_and_expired_entries_go_first() -> None:
    clock = FakeClock()
    cache = PrincipalCache(5.0, max_entries=3, clock=clock)
    cache.put("old", principal("u0"), valid_for=1)
    cache.put("t1", principal("u1"))
    cache.put("t2", principal("u2"))
    clock.now += 2
    cache.put("t3", principal("u3"))  # full: the expired entry makes room
    assert len(cache) == 3
    assert cache.get("t1") is not None and cache.get("t3") is not None
    cache.put("t4", principal("u4"))  # full of live entries: start over
    assert len(cache) == 1
    assert cache.get("t4") is not None


def test_zero_ttl_disables_the_cache() -> None:
    cache = PrincipalCache(0)
    cache.put("t1", principal("u1"))
    assert cache.get("t1") is None
    assert not cache.enabled

"""LeaderLock: one leader per key on PostgreSQL (handover, loss, fencing) and on SQLite."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import PG_ADMIN_DSN, PG_HOST, require_service
from tradegraph.db import Database
from tradegraph.jobs.leader import LeaderLock, LeadershipLost, lock_key


def fast_lock(url: str, key: int, **overrides: Any) -> LeaderLock:
    options: dict[str, Any] = {"poll_interval": 0.02, "check_interval": 0.2, "check_timeout": 1}
    options.update(overrides)
    return LeaderLock(url, key, **options)


async def still_pending(task: asyncio.Task[Any], for_seconds: float = 0.3) -> bool:
    """True if ``task`` does not finish within ``for_seconds`` (it is not cancelled)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), for_seconds)
    except TimeoutError:
        return True
    return False


@pytest.fixture
def key() -> int:
    return random.randint(1, 2**62)  # unique per test: parallel runs never collide


@pytest.fixture
def pg_up() -> None:
    require_service("pg")  # sync: it runs its own event loop for the probe


@pytest.fixture
async def admin(pg_up: None) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    yield conn
    await conn.close()


async def holder_pids(admin: asyncpg.Connection, key: int) -> list[int]:
    unsigned = key & (2**64 - 1)
    rows = await admin.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
        " AND classid = $1 AND objid = $2 AND granted",
        unsigned >> 32,
        unsigned & 0xFFFFFFFF,
    )
    return [row["pid"] for row in rows]


@pytest.mark.pg
async def test_only_one_instance_leads_and_release_hands_over(
    admin: asyncpg.Connection, key: int
) -> None:
    a = fast_lock(PG_ADMIN_DSN, key)
    b = fast_lock(PG_ADMIN_DSN, key)
    try:
        assert await a.acquire(wait=False) is True
        assert await b.acquire(wait=False) is False
        assert a.is_leader and not b.is_leader
        assert await holder_pids(admin, key) == [a.backend_pid]
        assert await a.acquire(wait=False) is True  # already leading: no-op

        waiting = asyncio.create_task(b.acquire(wait=True))
        assert await still_pending(waiting)  # polls while a leads
        await a.release()
        assert await asyncio.wait_for(waiting, 5) is True
        assert b.is_leader and not a.is_leader
        assert not a.lost.is_set()  # a release is not a loss
        assert await holder_pids(admin, key) == [b.backend_pid]
    finally:
        await a.release()
        await b.release()
    assert await holder_pids(admin, key) == []


@pytest.mark.pg
async def test_killed_lock_session_loses_leadership_and_the_other_takes_over(
    admin: asyncpg.Connection, key: int
) -> None:
    calls: list[str] = []
    a = fast_lock(PG_ADMIN_DSN, key, on_lost=lambda: calls.append("lost"))
    b = fast_lock(PG_ADMIN_DSN, key)
    try:
        assert await a.acquire(wait=False)
        takeover = asyncio.create_task(b.acquire(wait=True))
        assert await still_pending(takeover, 0.1)

        assert await admin.fetchval("SELECT pg_terminate_backend($1)", a.backend_pid)
        await asyncio.wait_for(a.lost.wait(), 5)
        assert not a.is_leader and calls == ["lost"]
        assert await asyncio.wait_for(takeover, 5) is True
        assert b.is_leader

        await b.release()
        assert await a.acquire(wait=False) is True  # a lost leadership can be won again
        assert not a.lost.is_set()
    finally:
        await a.release()
        await b.release()


@pytest.mark.pg
async def test_silent_loss_is_caught_by_the_health_check(
    admin: asyncpg.Connection, key: int
) -> None:
    a = fast_lock(PG_ADMIN_DSN, key, check_interval=0.05)
    try:
        assert await a.acquire(wait=False)
        conn = a._conn
        assert conn is not None
        conn.remove_termination_listener(a._on_terminated)  # as if no FIN ever came
        await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", a.backend_pid)
        await asyncio.wait_for(a.lost.wait(), 5)
        assert not a.is_leader
    finally:
        await a.release()


@pytest.mark.pg
async def test_fence_blocks_a_successor_until_the_old_commit_ends(
    admin: asyncpg.Connection, key: int
) -> None:
    db = Database(f"postgresql+asyncpg://postgres@{PG_HOST}/postgres")
    a = fast_lock(db.url, key, check_interval=60)  # only the fence may notice the loss
    b = fast_lock(db.url, key)
    try:
        assert await a.acquire(wait=False)
        async with db.session() as session:
            await a.fence(session)  # still leading: passes
            await session.commit()

        old_commit = db.session()
        session = await old_commit.__aenter__()
        try:
            await a.fence(session)  # the old leader is mid-commit...
            conn = a._conn
            assert conn is not None
            conn.remove_termination_listener(a._on_terminated)
            # ...when its lock session dies unnoticed (a partition, say).
            await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", a.backend_pid)
            assert a.is_leader  # a does not know yet

            successor = asyncio.create_task(b.acquire(wait=True))
            assert await still_pending(successor)  # won the lock, waits at the barrier
            assert len(await holder_pids(admin, key)) == 1
            await session.commit()
        finally:
            await old_commit.__aexit__(None, None, None)
        assert await asyncio.wait_for(successor, 5) is True

        async with db.session() as late:
            with pytest.raises(LeadershipLost):
                await a.fence(late)  # any later commit of the old leader is refused
        assert a.lost.is_set() and not a.is_leader
        async with db.session() as fine:
            await b.fence(fine)
    finally:
        await a.release()
        await b.release()
        await db.dispose()


@pytest.mark.pg
async def test_string_keys_and_the_context_manager(admin: asyncpg.Connection) -> None:
    name = f"test-leader-{random.getrandbits(64)}"
    async with LeaderLock(PG_ADMIN_DSN, name, poll_interval=0.02) as lock:
        assert lock.is_leader
        assert await holder_pids(admin, lock_key(name)) == [lock.backend_pid]
    assert not lock.is_leader
    assert await holder_pids(admin, lock_key(name)) == []


async def test_unreachable_database_raises_when_not_waiting(key: int) -> None:
    lock = LeaderLock("postgresql://postgres@127.0.0.1:1/postgres", key, connect_timeout=1)
    with pytest.raises(OSError):
        await lock.acquire(wait=False)
    assert not lock.is_leader

    waiting = asyncio.create_task(lock.acquire(wait=True))  # retries with backoff
    assert await still_pending(waiting, 0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert lock._conn is None


async def test_sqlite_lock_is_process_local_with_the_same_interface(
    tmp_path: Path, key: int
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    a = fast_lock(url, key)
    b = fast_lock(url, key)
    other_db = fast_lock(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", key)
    assert await a.acquire(wait=False) is True
    assert await b.acquire(wait=False) is False
    assert await other_db.acquire(wait=False) is True  # another database, another lock
    await a.fence(None)  # no SQL runs on SQLite
    with pytest.raises(LeadershipLost):
        await b.fence(None)

    waiting = asyncio.create_task(b.acquire(wait=True))
    assert await still_pending(waiting, 0.1)
    await a.release()
    assert await asyncio.wait_for(waiting, 2) is True
    assert b.is_leader and not a.is_leader and a.backend_pid is None
    await b.release()
    await other_db.release()


def test_lock_keys() -> None:
    assert lock_key(42) == 42
    assert lock_key("tradegraph:sequencer") == lock_key("tradegraph:sequencer")
    assert lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("anything") < 2**63
    with pytest.raises(ValueError):
        lock_key(2**63)

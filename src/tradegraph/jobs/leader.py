"""Leader election: only the holder of one PostgreSQL advisory lock runs the sequencer.

The lock is *session-level* (``pg_try_advisory_lock``) on a dedicated asyncpg connection
kept for the lock's whole life, so it vanishes exactly when that session does: on
:meth:`LeaderLock.release`, when the process dies, or when the connection is cut. Loss
is noticed from the connection's termination callback and from a periodic ``SELECT 1``
(a silent network partition sends no FIN); the holder is told through
:attr:`LeaderLock.lost` and the optional ``on_lost`` callback and must stop at once. The
server side runs with TCP keepalives, so a leader that vanished from the network frees
the lock within about half a minute instead of the kernel's two hours.

**Fencing.** Noticing a loss is asynchronous: an old leader may be mid-commit while a new
one starts. :meth:`LeaderLock.fence` closes that window. The sequencer calls it inside
each commit transaction; it takes a *shared* transaction lock on a companion key and
checks that this process's lock session still holds the leader lock. A new leader, right
after winning, takes the companion key *exclusively* once, which waits for every fenced
transaction still running. So an old leader's commit either lands before the new leader
reads the database, or fails with :class:`LeadershipLost`.

On SQLite (embedded mode: one process by definition) the lock is process-local with the
same interface, so two engines in one process still exclude each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tradegraph.db import Database, asyncpg_transaction

__all__ = ["DEFAULT_KEY", "LeaderLock", "LeadershipLost", "lock_key"]

logger = logging.getLogger(__name__)

DEFAULT_KEY: Final = "tradegraph:sequencer"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# One statement, in this order: take the companion key shared for the transaction, then
# ask whether the leader lock (a bigint key: high half in classid, low half in objid,
# objsubid 1) is still granted to the leader's backend. The order matters (see the module
# docstring) and CASE is how PostgreSQL lets a query fix it: the uncorrelated EXISTS is
# an InitPlan, evaluated when its branch is first reached.
_FENCE_SQL: Final = (
    "SELECT CASE WHEN pg_advisory_xact_lock_shared($1::int4, $2::int4) IS NOT NULL"
    " THEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
    " AND classid = $3::oid AND objid = $4::oid AND objsubid = 1"
    " AND granted AND pid = $5::int4) END"
)

_local_holders: weakref.WeakValueDictionary[tuple[str, int], LeaderLock] = (
    weakref.WeakValueDictionary()
)


class LeadershipLost(Exception):
    """This process does not (or no longer) hold the leader lock: stop writing."""


def lock_key(name: int | str) -> int:
    """The signed 64-bit advisory lock key for ``name`` (a string is hashed stably)."""
    if isinstance(name, int):
        if not _INT64_MIN <= name <= _INT64_MAX:
            raise ValueError("an advisory lock key must fit in a signed 64-bit integer")
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _int32(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


def _asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy) -> ``postgresql://...`` (asyncpg)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class LeaderLock:
    """One named leadership, contended by every engine process.

    ``database`` is a :class:`~tradegraph.db.Database` or a database URL; ``key`` an
    int64 or a name. ``acquire`` then ``release``; watch :attr:`lost` (or pass
    ``on_lost``) while leading. A lost leadership can be acquired again.
    """

    def __init__(
        self,
        database: Database | str,
        key: int | str = DEFAULT_KEY,
        *,
        on_lost: Callable[[], Any] | None = None,
        poll_interval: float = 1.0,
        check_interval: float = 2.0,
        check_timeout: float = 2.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = database.url if isinstance(database, Database) else database
        self.key = lock_key(key)
        unsigned = self.key & (2**64 - 1)
        self._classid, self._objid = unsigned >> 32, unsigned & 0xFFFFFFFF
        self._fence_key = (_int32(self._classid), _int32(self._objid))  # (int4, int4) space
        self.lost = asyncio.Event()
        """Set when leadership is lost involuntarily (not by :meth:`release`)."""
        self._on_lost = on_lost
        self._poll_interval = poll_interval
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._connect_timeout = connect_timeout
        self._local = self.url.startswith("sqlite")
        self._dsn = "" if self._local else _asyncpg_dsn(self.url)
        self._conn: asyncpg.Connection | None = None
        self._pid: int | None = None
        self._leader = False
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL: the server process holding the lock (None when not leading)."""
        return self._pid if self._leader else None

    async def __aenter__(self) -> LeaderLock:
        await self.acquire(wait=True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def acquire(self, wait: bool = True) -> bool:
        """Become the leader. True on success (or if already leading).

        ``wait=False`` tries once: False when someone else leads; a database error is
        raised, since "cannot tell" is not "someone else leads". ``wait=True`` polls
        every ``poll_interval`` (reconnecting with backoff through database errors)
        until it wins; bound it with ``asyncio.timeout`` (cancelling is safe: a lock the
        server granted in that instant is dropped with the session).
        """
        if self._leader:
            return True
        try:
            return await self._acquire(wait)
        except BaseException:
            if not self._leader:
                await self._close_connection()
            raise

    async def _acquire(self, wait: bool) -> bool:
        attempt = 0
        while True:
            try:
                if await self._try_once():
                    return True
                delay = self._poll_interval
                attempt = 0
            except Exception as exc:
                await self._close_connection()
                if not wait:
                    raise
                logger.warning("leader: cannot reach the database: %r", exc)
                delay = min(self._poll_interval * 5, 0.1 * 2 ** min(attempt, 10))
                delay = delay / 2 + random.uniform(0, delay / 2)
                attempt += 1
            if not wait:
                await self._close_connection()
                return False
            await asyncio.sleep(delay)

    async def release(self) -> None:
        """Give leadership up (a waiting contender takes over). Idempotent."""
        await self._stop_watchdog()
        was_leader, self._leader = self._leader, False
        if self._local:
            if _local_holders.get((self.url, self.key)) is self:
                del _local_holders[(self.url, self.key)]
            return
        conn = self._conn
        try:
            if was_leader and conn is not None and not conn.is_closed():
                try:
                    async with asyncio.timeout(self._check_timeout):
                        await conn.fetchval("SELECT pg_advisory_unlock($1)", self.key)
                except Exception as exc:  # closing the session below frees it anyway
                    logger.debug("leader: explicit unlock failed: %r", exc)
        finally:
            # Even when cancelled mid-unlock: closing the session is what frees the lock.
            await self._close_connection()

    async def fence(self, session: AsyncSession | AsyncConnection) -> None:
        """Inside a commit transaction: raise :class:`LeadershipLost` unless still leading.

        Holds a shared companion lock until that transaction ends, so a successor waits
        for this commit before reading (see the module docstring). One small query, sent
        on the asyncpg connection itself: it runs in every engine commit.
        """
        if not self._leader:
            raise LeadershipLost("not the leader")
        if self._local:
            if _local_holders.get((self.url, self.key)) is not self:
                raise LeadershipLost("the process-local leader lock is held by another")
            return
        hi, lo = self._fence_key
        driver = await asyncpg_transaction(session)
        holds = await driver.fetchval(_FENCE_SQL, hi, lo, self._classid, self._objid, self._pid)
        if not holds:
            self._lose("the lock session no longer holds the leader lock")
            raise LeadershipLost("the leader lock is gone: another engine may be leading")

    # ------------------------------------------------------------------ internals

    async def _try_once(self) -> bool:
        if self._local:
            holder = _local_holders.get((self.url, self.key))
            if holder is not None and holder is not self and holder._leader:
                return False
            _local_holders[(self.url, self.key)] = self
            self._won()
            return True
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                server_settings={
                    "application_name": "tradegraph-leader",
                    # The server notices a vanished leader and frees its lock in ~30 s.
                    "tcp_keepalives_idle": "10",
                    "tcp_keepalives_interval": "5",
                    "tcp_keepalives_count": "4",
                },
            )
            conn.add_termination_listener(self._on_terminated)
            self._conn = conn
        try:
            async with asyncio.timeout(self._check_timeout):
                got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key)
            if not got:
                return False
            # Wait for fenced commits of a previous leader before anyone reads state.
            hi, lo = self._fence_key
            await conn.execute("SELECT pg_advisory_lock($1, $2)", hi, lo)
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", hi, lo)
            self._pid = conn.get_server_pid()
        except BaseException:
            # Cancelled or failed after the server may have granted the lock: only
            # ending the session makes sure we do not hold it without knowing.
            await self._close_connection()
            raise
        self._won()
        self._watchdog = asyncio.create_task(self._watch(conn), name="leader-watchdog")
        return True

    def _won(self) -> None:
        self._leader = True
        self.lost.clear()
        logger.info(
            "leader: acquired %s (key %d)", "local lock" if self._local else "lock", self.key
        )

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lose("the lock connection was closed by the server or the network")

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Probe the lock session; a partition sends no FIN, only silence."""
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                async with asyncio.timeout(self._check_timeout):
                    await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lose(f"health check of the lock session failed: {exc!r}")
                return

    def _lose(self, reason: str) -> None:
        if not self._leader:
            return
        self._leader = False
        logger.error("leader: leadership lost: %s", reason)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # make sure the server frees the lock, now
        self.lost.set()
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                logger.exception("leader: on_lost callback failed")

    async def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._pid = None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=self._check_timeout)
        except BaseException as exc:  # cancelled or failed: drop the socket regardless
            conn.terminate()
            if not isinstance(exc, Exception):
                raise

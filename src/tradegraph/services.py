"""The service container: everything ``create_app`` wires together from ``Settings``.

One instance per app; nothing here is a module global, so tests can run several apps
(SQLite + memory, PostgreSQL + Redis) in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from tradegraph.audit.service import AuditLog
from tradegraph.brokers.gatekeeper import run_gatekeeper_forever
from tradegraph.brokers.service import BrokerService
from tradegraph.bus import InProcessBus, RedisStreamsBus
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.events import EventPublisher
from tradegraph.exchange.runtime import ExchangeRuntime
from tradegraph.exchange.service import ExchangeService
from tradegraph.identity.principal_cache import follow_user_changes
from tradegraph.identity.service import IdentityService
from tradegraph.jobs.leader import LeaderLock
from tradegraph.marketdata.service import MarketDataService
from tradegraph.metrics import Metrics
from tradegraph.notifications.service import NotificationService
from tradegraph.pubsub import PubSub
from tradegraph.security.passwords import Argon2Params, PasswordHasher
from tradegraph.security.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from tradegraph.security.vault import Keyring

log = logging.getLogger("tradegraph")


def load_keyring(settings: Settings) -> Keyring:
    """The vault keyring: from ``TRADEGRAPH_VAULT_KEYS``, else a 0600 key file in data_dir."""
    if settings.vault_keys:
        return Keyring.from_config(settings.vault_keys)
    if settings.is_production:
        raise RuntimeError("TRADEGRAPH_VAULT_KEYS must be set in production")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Keyring.load_or_create(settings.data_dir / "vault.keys")


class Services:
    """Long-lived collaborators of one running app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.db = Database(
            settings.resolved_database_url, echo=settings.db_echo, pool_size=settings.db_pool_size
        )
        self.redis: Redis | None = (
            Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
            if settings.redis_url
            else None
        )
        self.rate_limiter: RateLimiter = (
            RedisRateLimiter(self.redis, prefix=f"{settings.redis_prefix}:rl:")
            if self.redis is not None
            else MemoryRateLimiter()
        )
        self.pubsub = PubSub(settings.pubsub_url, prefix=f"{settings.redis_prefix}:")
        self.keyring = load_keyring(settings)
        self.audit = AuditLog(self.db)
        self.events = EventPublisher(self.pubsub, self.redis, prefix=f"{settings.redis_prefix}:")
        self.notifications = NotificationService(self.db, self.events, self.pubsub)
        self.hasher = PasswordHasher(
            Argon2Params(
                memory_cost=settings.argon2_memory_kib,
                time_cost=settings.argon2_time_cost,
                parallelism=settings.argon2_parallelism,
            )
        )
        self.identity = IdentityService(
            db=self.db,
            settings=settings,
            hasher=self.hasher,
            keyring=self.keyring,
            rate_limiter=self.rate_limiter,
            audit=self.audit,
            notifications=self.notifications,
            pubsub=self.pubsub,
        )
        self.brokers = BrokerService(
            settings=settings,
            db=self.db,
            audit=self.audit,
            keyring=self.keyring,
            metrics=self.metrics,
            on_user_changed=self.identity.user_changed,
        )
        self._build_exchange()
        self.marketdata = MarketDataService(
            settings, self.db, self.pubsub, self.bus, registry=self.metrics.registry
        )

    def _build_exchange(self) -> None:
        settings = self.settings
        embedded = settings.engine_mode == "embedded"
        if embedded:
            self.bus: InProcessBus | RedisStreamsBus = InProcessBus(
                default_timeout=settings.engine_request_timeout_seconds,
                wire_check=settings.bus_wire_check,
            )
        else:
            if self.redis is None:
                raise RuntimeError("engine_mode=remote needs TRADEGRAPH_REDIS_URL")
            self.bus = RedisStreamsBus(
                settings.redis_url or "",
                role="worker",
                prefix=f"{settings.redis_prefix}:bus:",
                default_timeout=settings.engine_request_timeout_seconds,
            )
        self.exchange = ExchangeService(
            self.db, self.bus, request_timeout=settings.engine_request_timeout_seconds
        )
        self.exchange_runtime = ExchangeRuntime(
            self.db,
            self.pubsub,
            self.bus,
            demo_faucet=settings.demo_faucet,
            embedded=embedded,
            metrics=self.metrics,
        )

    async def start(self) -> None:
        await self.pubsub.connect()
        await self.brokers.start()  # the fake brokers, in sandbox mode only
        await self.exchange_runtime.start()
        await self.marketdata.start()  # simulator, feeds, candles, SIM marks
        self._stop_jobs = asyncio.Event()
        self._jobs: list[asyncio.Task[None]] = []
        self._user_changes = asyncio.create_task(
            follow_user_changes(self.identity.principals, self.pubsub, self._stop_jobs)
        )
        if self.settings.market_maker:
            await self._start_market_maker()
        if self.settings.background_jobs:
            self._jobs.append(
                asyncio.create_task(self._leader_job("gatekeeper", run_gatekeeper_forever))
            )

    async def _leader_job(
        self, name: str, job: Callable[[Services, asyncio.Event], Awaitable[None]]
    ) -> None:
        """Run ``job`` in exactly one process: the holder of its leader lock.

        Every API worker starts this; the others wait for the lock, so when the holder
        dies another worker takes the job over.
        """
        lock = LeaderLock(self.db, f"{self.settings.redis_prefix}:job:{name}")
        acquire = asyncio.ensure_future(lock.acquire(wait=True))
        stopper = asyncio.ensure_future(self._stop_jobs.wait())
        try:
            await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not acquire.done() or acquire.exception() is not None:
                return
            stop = asyncio.Event()
            lost = asyncio.ensure_future(lock.lost.wait())
            runner = asyncio.ensure_future(job(self, stop))
            await asyncio.wait({runner, stopper, lost}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await runner
            lost.cancel()
        except Exception:
            log.exception("background job %s failed", name)
        finally:
            acquire.cancel()
            stopper.cancel()
            await lock.release()

    async def _start_market_maker(self) -> None:
        """Quote the demo books from the seeded market-maker account (``make run``)."""
        from tradegraph.demo import MARKET_MAKER_EMAIL, principal_for, spot_account
        from tradegraph.exchange.market_maker import MarketMaker

        bot = await self.identity.get_user_by_email(MARKET_MAKER_EMAIL)
        if bot is None:
            log.warning("market maker not started: run `tradegraph seed-demo` first")
            return
        account = await spot_account(self, bot)
        self.market_maker = MarketMaker(self.exchange, principal_for(bot), account.id)
        self._jobs.append(asyncio.create_task(self.market_maker.run(self._stop_jobs)))

    async def stop(self) -> None:
        if getattr(self, "_stop_jobs", None) is not None:
            self._stop_jobs.set()
            for task in self._jobs:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
            self._jobs = []
            self._user_changes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._user_changes
        await self.brokers.stop()
        await self.marketdata.stop()  # flushes closed bars; before the bus closes
        await self.exchange_runtime.stop()
        await self.pubsub.disconnect()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.dispose()

    async def readiness(self) -> dict[str, bool]:
        """Each dependency's health, for ``/readyz``."""
        checks = {"database": await self.db.ping()}
        if self.redis is not None:
            try:
                checks["redis"] = bool(await self.redis.ping())
            except Exception:
                checks["redis"] = False
        checks["pubsub"] = await self.pubsub.ping()
        return checks

"""Test fixtures: two legs (SQLite + memory, PostgreSQL + Redis), real apps, real servers.

In CI (``CI=true``) the PostgreSQL and Redis legs are mandatory: an unreachable service
fails the run instead of skipping. Locally they run when the services answer, and one line
says so when they do not.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tradegraph.app import create_app
from tradegraph.config import Settings
from tradegraph.services import Services

CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _pg_available() -> bool:
    import asyncpg

    async def check() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    return asyncio.run(check())


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    except Exception:
        return False


_status: dict[str, bool] = {}


def service_up(name: str) -> bool:
    if name not in _status:
        _status[name] = _pg_available() if name == "pg" else _redis_available()
    return _status[name]


def require_service(name: str) -> None:
    """Skip (locally) or fail (in CI) when a mandatory service is down."""
    if service_up(name):
        return
    message = f"{name} is not reachable"
    if CI:
        pytest.fail(f"{message}: the {name} leg is mandatory in CI", pytrace=False)
    pytest.skip(message)


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for name in ("pg", "redis"):
        up = service_up(name)
        if not up:
            verdict = "FAIL (mandatory in CI)" if CI else "tests of this leg are SKIPPED"
            lines.append(f"tradegraph: {name} not reachable: {verdict}")
        else:
            lines.append(f"tradegraph: {name} reachable, its leg runs")
    return lines


# --------------------------------------------------------------------------- databases


def _migrate(url: str) -> None:
    asyncio.run(_migrate_async(url))


async def _migrate_async(url: str, *, migrate: bool = True) -> None:
    """Migrate (optionally) and insert the exchange's reference data."""
    from tradegraph.db import Database
    from tradegraph.exchange.reference import ensure_reference
    from tradegraph.migrate import upgrade

    db = Database(url)
    try:
        if migrate:
            await upgrade(db)
        await ensure_reference(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (much faster than migrating each)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    _migrate(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One migrated PostgreSQL database for the session; tables are emptied per test."""
    require_service("pg")
    import asyncpg

    name = f"tg_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+asyncpg://postgres@{PG_HOST}/{name}"
    _migrate(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _truncate_pg(url: str) -> None:
    import asyncpg

    from tradegraph.models import Base

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)

    async def run() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    asyncio.run(run())


# ------------------------------------------------------------------------------- legs


@dataclass
class Leg:
    name: str
    database_url: str
    redis_url: str | None


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=[pytest.mark.pg, pytest.mark.redis])])
def leg(request: pytest.FixtureRequest, tmp_path: Path) -> Leg:
    """Each test using this runs twice: SQLite + memory, and PostgreSQL + Redis."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "tradegraph.db"
        shutil.copy(template, path)
        return Leg("sqlite", f"sqlite+aiosqlite:///{path}", None)
    require_service("pg")
    require_service("redis")
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    asyncio.run(_migrate_async(url, migrate=False))
    return Leg("pg", url, REDIS_URL)


def make_settings(tmp_path: Path, leg: Leg, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path,
        "database_url": leg.database_url,
        "redis_url": leg.redis_url,
        "redis_prefix": f"tgtest-{uuid.uuid4().hex[:8]}",
        "jwt_secret": "test-secret-" + "x" * 40,
        "argon2_memory_kib": 1024,
        "argon2_time_cost": 1,
        "log_json": False,
        "background_jobs": False,
        "gc_tuning": False,
        "bus_wire_check": True,  # payloads must survive the Redis transport unchanged
        "market_simulator": False,  # no background ticks unless a test asks
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(tmp_path, leg)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    svc = Services(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the real ASGI app in-process."""
    app = create_app(services.settings, services=services)
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def live_server(services: Services) -> AsyncIterator[str]:
    """A real uvicorn server on a free port (for websockets); yields its base URL."""
    app = create_app(services.settings, services=services)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)

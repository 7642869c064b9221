"""/healthz, /readyz, /metrics, the audit chain and the migrations, on both legs."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.helpers import gql, register
from tradegraph.db import Database
from tradegraph.migrate import downgrade, upgrade


async def test_health_and_readiness(client, leg):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"] is True and checks["pubsub"] is True
    if leg.name == "pg":
        assert checks["redis"] is True


async def test_readiness_fails_when_database_is_unreachable(client, services):
    healthy = services.db
    services.db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        ready = await client.get("/readyz")
    finally:
        await services.db.dispose()
        services.db = healthy
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] is False


async def test_metrics_count_operations_errors_and_latency(client):
    await gql(client, "query Clock { serverTime }")
    await gql(client, "query Broken { nope }")
    body = (await client.get("/metrics")).text
    assert 'tradegraph_graphql_operations_total{operation="Clock",type="query"} 1.0' in body
    assert 'tradegraph_graphql_operation_seconds_count{operation="Clock"} 1.0' in body
    assert (
        'tradegraph_graphql_errors_total{code="GRAPHQL_VALIDATION_FAILED",operation="Broken"}'
        in body
    )
    assert "tradegraph_websocket_connections 0.0" in body
    assert "tradegraph_active_subscriptions 0.0" in body


async def test_audit_chain_verifies_and_names_first_tampered_row(client, services, leg):
    await register(client)
    await gql(
        client,
        'mutation { login(input: {email: "alice@example.com", password: "wrong wrong wrong"})'
        " { errors { code } } }",
    )
    result = await services.audit.verify()
    assert result.ok and result.rows >= 2
    entries = await _audit_actions(services)
    assert "user.login_failed" in entries
    # The database itself refuses edits ...
    async with services.db.engine.connect() as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(text("UPDATE audit_log SET ip = 'x' WHERE seq = 1"))
    # ... and an edit that bypasses the trigger is caught by the chain.
    async with services.db.engine.begin() as conn:
        if leg.name == "pg":
            await conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            await conn.execute(text("UPDATE audit_log SET ip = '6.6.6.6' WHERE seq = 2"))
            await conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        else:
            await conn.execute(text("DROP TRIGGER audit_log_no_update"))
            await conn.execute(text("UPDATE audit_log SET ip = '6.6.6.6' WHERE seq = 2"))
    broken = await services.audit.verify()
    assert not broken.ok
    assert broken.first_broken_seq == 2
    assert broken.rows == 1


async def _audit_actions(services) -> list[str]:
    from sqlalchemy import select

    from tradegraph.audit.models import AuditEntry

    async with services.db.session() as s:
        return [e.action for e in await s.scalars(select(AuditEntry))]


async def test_migrations_match_models_and_downgrade(leg, tmp_path):
    """Autogenerate finds nothing to do, and the chain goes down and up again cleanly."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from tradegraph.models import Base

    db = Database(leg.database_url)
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
        assert diff == []
        if leg.name != "sqlite":  # the big command log column is lz4 where the server has it
            async with db.engine.connect() as conn:
                supported, method = (
                    await conn.execute(
                        text(
                            "SELECT (SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                            "        WHERE name = 'default_toast_compression'),"
                            "       (SELECT attcompression::text FROM pg_attribute"
                            "        WHERE attrelid = 'engine_commands'::regclass"
                            "          AND attname = 'result')"
                        )
                    )
                ).one()
            assert method == ("l" if supported else "")
        if leg.name == "sqlite":
            await downgrade(db, "base")
            await upgrade(db)
            async with db.engine.connect() as conn:
                tables = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
            assert "users" in tables and "audit_log" in tables
    finally:
        await db.dispose()

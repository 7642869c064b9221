"""``tradegraph rotate-keys``: two keyrings, an interrupted run, a rerun, the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from tests.conftest import Leg, _migrate, make_settings
from tests.helpers import register
from tests.integration.test_brokers_linking import REDIRECT, link_bingx, link_deriv
from tradegraph.brokers.common import CredentialVault
from tradegraph.brokers.models import BrokerLink, LinkMethod
from tradegraph.brokers.rotation import ENCRYPTED_COLUMNS, EncryptedColumn, rotate_keys
from tradegraph.cli import cli
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.errors import DomainError
from tradegraph.identity.models import User
from tradegraph.security.vault import Keyring, aad_for
from tradegraph.services import Services


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(tmp_path, leg, broker_sandbox=True, broker_redirect_uris=REDIRECT)


async def encrypted_values(db: Database) -> dict[tuple[str, str], str]:
    """Every (table, row id) -> ciphertext of every registered encrypted column."""
    out: dict[tuple[str, str], str] = {}
    async with db.session() as session:
        for spec in ENCRYPTED_COLUMNS:
            rows = await session.execute(
                text(
                    f"SELECT {spec.pk}, {spec.column} FROM {spec.table} "
                    f"WHERE {spec.column} IS NOT NULL"
                )
            )
            for pk, value in rows:
                out[(spec.table, str(pk))] = value
    return out


def field_of(table: str) -> str:
    return next(s.aad_field for s in ENCRYPTED_COLUMNS if s.table == table)


def plaintexts(keyring: Keyring, values: dict[tuple[str, str], str]) -> dict[Any, bytes]:
    return {
        key: keyring.decrypt(token, aad_for(key[0], key[1], field_of(key[0])))
        for key, token in values.items()
    }


class Interrupted(Exception):
    pass


async def test_rotation_is_resumable_idempotent_and_loses_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    principal = await services.identity.principal_from_header(f"Bearer {alice['accessToken']}")
    assert principal is not None
    await services.identity.begin_totp_setup(principal)  # users.totp_secret_enc
    await link_deriv(client, alice["accessToken"])  # two broker_links rows
    assert (await link_bingx(client, alice["accessToken"]))["errors"] == []  # a third

    old = services.keyring
    before = await encrypted_values(services.db)
    assert len(before) == 4
    originals = plaintexts(old, before)
    assert all(old.key_id(v) == old.primary_kid for v in before.values())

    new = old.with_new_primary(kid="k2026")
    batches = 0

    async def interrupt(spec: EncryptedColumn, batch: int) -> None:
        nonlocal batches
        batches += 1
        if spec.table == "broker_links" and batch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await rotate_keys(services.db, new, batch_size=1, after_batch=interrupt)

    halfway = await encrypted_values(services.db)
    kids = [new.key_id(v) for v in halfway.values()]
    assert kids.count("k2026") == 3 and kids.count(old.primary_kid) == 1
    assert plaintexts(new, halfway) == originals  # nothing lost at the interruption

    report = await rotate_keys(services.db, new, batch_size=1)
    assert report.ok and report.rotated == 1
    by_table = {c.table: c for c in report.columns}
    assert by_table["broker_links"].current == 2 and by_table["users"].current == 1

    only_new = Keyring.from_config(new.to_config().split(",")[0])
    assert only_new.kids == ("k2026",)
    after = await encrypted_values(services.db)
    assert plaintexts(only_new, after) == originals
    assert not any(only_new.needs_rotation(v) for v in after.values())

    again = await rotate_keys(services.db, new)
    assert again.ok and again.rotated == 0
    assert await encrypted_values(services.db) == after  # idempotent: nothing rewritten

    # The app keeps working on the new keyring alone.
    services.brokers.ctx.vault = CredentialVault(only_new)
    async with services.db.session() as session:
        bingx = (
            await session.scalars(select(BrokerLink).where(BrokerLink.provider == "BINGX"))
        ).one()
    summary = await services.brokers.summaries.summary_of(bingx)
    assert summary.balance == 5000


async def test_unreadable_or_moved_ciphertexts_are_reported_and_left_alone(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    links = await link_deriv(client, alice["accessToken"])
    assert len(links) == 2
    async with services.db.session() as session:
        rows = list(await session.scalars(select(BrokerLink).order_by(BrokerLink.id)))
        # Copy the first link's ciphertext onto the second row: it must not decrypt there.
        moved = rows[0].credentials_enc
        await session.execute(
            update(BrokerLink).where(BrokerLink.id == rows[1].id).values(credentials_enc=moved)
        )
        await session.commit()
    with pytest.raises(DomainError, match="link it again"):
        services.brokers.ctx.vault.open(
            BrokerLink(id=rows[1].id, credentials_enc=moved, method=LinkMethod.OAUTH)
        )

    new = services.keyring.with_new_primary()
    report = await rotate_keys(services.db, new)
    links_report = next(c for c in report.columns if c.table == "broker_links")
    assert not report.ok
    assert links_report.failed == [rows[1].id] and links_report.rotated == 1
    async with services.db.session() as session:
        second = await session.get(BrokerLink, rows[1].id)
    assert second is not None and second.credentials_enc == moved  # untouched


# -- the CLI (SQLite only: it runs its own event loop) ----------------------------------


def test_rotate_keys_cli(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    _migrate(db_url)
    k1 = Keyring.generate("k1")
    k2 = Keyring.generate("k2")

    async def seed() -> str:
        db = Database(db_url)
        try:
            async with db.session() as session:
                user = User(email="a@example.com", password_hash="x", display_name="A")
                session.add(user)
                await session.flush()
                link = BrokerLink(
                    user_id=user.id,
                    provider="BINGX",
                    method=LinkMethod.API_KEY,
                    account_ref="1",
                    id="link1",
                )
                link.credentials_enc = CredentialVault(k1).seal("link1", {"api_secret": "s3cr3t"})
                session.add(link)
                await session.commit()
                return user.id
        finally:
            await db.dispose()

    asyncio.run(seed())
    env = {
        "TRADEGRAPH_DATABASE_URL": db_url,
        "TRADEGRAPH_DATA_DIR": str(tmp_path),
        "TRADEGRAPH_LOG_JSON": "false",
    }
    runner = CliRunner()
    # Without the old key nothing can be rotated: exit 1, row untouched.
    refused = runner.invoke(
        cli, ["rotate-keys"], env={**env, "TRADEGRAPH_VAULT_KEYS": k2.to_config()}
    )
    assert refused.exit_code == 1, refused.output
    assert "broker_links.credentials_enc: scanned 1" in refused.output
    assert "cannot decrypt broker_links row link1" in refused.output

    both = f"{k2.to_config()},{k1.to_config()}"
    dry = runner.invoke(
        cli, ["rotate-keys", "--dry-run"], env={**env, "TRADEGRAPH_VAULT_KEYS": both}
    )
    assert dry.exit_code == 0, dry.output
    assert "would rotate 1" in dry.output
    done = runner.invoke(cli, ["rotate-keys"], env={**env, "TRADEGRAPH_VAULT_KEYS": both})
    assert done.exit_code == 0, done.output
    assert "rotated 1" in done.output and "primary key: k2" in done.output

    async def read() -> str:
        db = Database(db_url)
        try:
            async with db.session() as session:
                link = await session.get(BrokerLink, "link1")
                assert link is not None
                return json.dumps(CredentialVault(k2).open(link))
        finally:
            await db.dispose()

    assert asyncio.run(read()) == '{"api_secret": "s3cr3t"}'

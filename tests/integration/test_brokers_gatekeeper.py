"""The access gatekeeper: the pure policy, reviews against the fake BingX, the daily job,
downgrades and admin overrides, each decision audited (both legs for the service tests).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import Leg, make_settings
from tests.helpers import gql, register
from tests.integration.test_brokers_linking import REDIRECT, link_bingx
from tradegraph.audit.models import AuditEntry
from tradegraph.brokers.gatekeeper import (
    AccessEvidence,
    AccessPolicy,
    Override,
    decide,
    retry_delay,
    run_gatekeeper_forever,
)
from tradegraph.brokers.models import AccessReview
from tradegraph.config import Settings
from tradegraph.graphql.ids import decode_id
from tradegraph.identity.models import AccessLevel, Role, User
from tradegraph.services import Services

SIGNUP = "https://bingx.com/invite/TRADEGRAPH"
AGENT_UID = "10000001"
ACCESS = """{ accessStatus { level reason nextStep overridden checks { name passed detail } }
             me { accessLevel accessReason } }"""
REVALIDATE = "mutation { revalidateAccess { access { level reason nextStep } errors { code } } }"
ADMIN_REVALIDATE = """mutation($id: ID!) { adminRevalidateAccess(userId: $id) {
  access { level overridden } errors { code message } } }"""
OVERRIDE = """mutation($id: ID!, $level: AccessLevel, $reason: String) {
  adminSetAccessOverride(userId: $id, accessLevel: $level, reason: $reason) {
    access { level reason overridden } errors { code message } } }"""

POLICY = AccessPolicy(
    referrer_id=AGENT_UID,
    min_deposit_usd=Decimal(200),
    window=timedelta(days=5),
    signup_url=SIGNUP,
)


# -- the pure policy -------------------------------------------------------------------


def test_full_needs_referral_and_enough_recent_deposits() -> None:
    decision = decide(
        AccessEvidence("20000001", referred=True, deposits_usd=Decimal("200.00")), POLICY
    )
    assert decision.level is AccessLevel.FULL and decision.next_step is None
    assert [c.passed for c in decision.checks] == [True, True, True]
    assert decision.reason == (
        "referred by 10000001 and deposited at least 200 USD in the last 5 days"
    )


@pytest.mark.parametrize(
    ("evidence", "reason", "step"),
    [
        (
            AccessEvidence(None),
            "no BingX account is linked",
            f"sign up on BingX through {SIGNUP}, then link your BingX API key",
        ),
        (
            AccessEvidence("20000001", credentials_ok=False),
            "BingX refused the linked API key",
            "link your BingX API key again",
        ),
        (
            AccessEvidence("20000001", referred=False, deposits_usd=Decimal(500)),
            "the BingX account was not referred by us",
            f"sign up on BingX through {SIGNUP} (the account must be opened through our referral)",
        ),
        (
            AccessEvidence("20000001", referred=True, deposits_usd=Decimal("199.99")),
            "deposited 199.99 USD in the last 5 days; 200 needed",
            "deposit at least 0.01 USD more on BingX",
        ),
        (
            AccessEvidence("20000001", referred=None, deposits_usd=Decimal(900)),
            "the referral could not be checked",
            "contact support: the referral check is not available",
        ),
    ],
)
def test_limited_says_why_and_what_next(evidence: AccessEvidence, reason: str, step: str) -> None:
    decision = decide(evidence, POLICY)
    assert decision.level is AccessLevel.LIMITED
    assert decision.reason == reason
    assert decision.next_step == step
    assert decision.source == "policy"


def test_override_wins_both_ways_but_checks_are_still_reported() -> None:
    good = AccessEvidence("1", referred=True, deposits_usd=Decimal(1000))
    down = decide(good, POLICY, Override(AccessLevel.LIMITED, "chargeback"))
    assert down.level is AccessLevel.LIMITED and down.source == "override"
    assert down.reason == "set by an administrator: chargeback"
    assert all(c.passed for c in down.checks)
    up = decide(AccessEvidence(None), POLICY, Override(AccessLevel.FULL, "partner"))
    assert up.level is AccessLevel.FULL and not up.checks[0].passed


def test_retry_backoff_grows_and_is_capped() -> None:
    assert [retry_delay(n) for n in (1, 2, 3)] == [
        timedelta(minutes=5),
        timedelta(minutes=10),
        timedelta(minutes=20),
    ]
    assert retry_delay(30) == timedelta(hours=6)


# -- the service, against the fake BingX -----------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(
        tmp_path,
        leg,
        broker_sandbox=True,
        broker_redirect_uris=REDIRECT,
        bingx_signup_url=SIGNUP,
        broker_timeout_seconds=2,
    )


async def decisions(services: Services, user_id: str | None = None) -> list[dict[str, Any]]:
    async with services.db.session() as session:
        rows = list(
            await session.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == "access.decided")
                .order_by(AuditEntry.seq)
            )
        )
    return [
        json.loads(r.data) | {"user": r.target_id}
        for r in rows
        if user_id is None or r.target_id == user_id
    ]


async def make_admin(client: httpx.AsyncClient, services: Services) -> dict[str, Any]:
    admin = await register(client, email="root@example.com", display_name="Root")
    async with services.db.session() as session:
        user = await session.get(User, decode_id(admin["user"]["id"], "User"))
        assert user is not None
        user.role = Role.ADMIN
        await session.commit()
    return admin


def second_bingx_user(
    services: Services, *, deposit: str, invited: bool, key: str = "user-two-key"
) -> tuple[str, str]:
    sandbox = services.brokers.sandbox
    assert sandbox is not None
    secret = key.replace("key", "secret")
    uid = "20000002" if key == "user-two-key" else "20000003"
    sandbox.fakes.bingx.add_account(key, secret, uid=uid, balance=Decimal(100))
    sandbox.fakes.bingx.add_deposit(key, Decimal(deposit))
    if invited:
        sandbox.fakes.bingx.set_invite(uid, inviter_uid=AGENT_UID)
    return key, secret


async def test_linking_a_referred_funded_bingx_account_gives_full_access(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    token = alice["accessToken"]
    before = (await gql(client, ACCESS, token=token))["data"]
    assert before["me"]["accessLevel"] == "LIMITED"

    assert (await link_bingx(client, token))["errors"] == []
    after = (await gql(client, ACCESS, token=token))["data"]
    assert after["me"]["accessLevel"] == "FULL"
    status = after["accessStatus"]
    assert status["level"] == "FULL" and status["nextStep"] is None
    assert status["overridden"] is False
    assert {c["name"]: c["passed"] for c in status["checks"]} == {
        "bingx_linked": True,
        "referral": True,
        "deposits": True,
    }
    user_id = decode_id(alice["user"]["id"], "User")
    [decision] = await decisions(services, user_id)
    assert decision["level"] == "FULL" and decision["previous"] == "LIMITED"
    assert decision["trigger"] == "link_changed" and decision["source"] == "policy"


async def test_short_deposits_and_missing_referral_stay_limited_with_next_steps(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    key, secret = second_bingx_user(services, deposit="150", invited=True)
    assert (await link_bingx(client, alice["accessToken"], key, secret))["errors"] == []
    data = (await gql(client, ACCESS, token=alice["accessToken"]))["data"]
    assert data["accessStatus"]["level"] == "LIMITED"
    assert data["accessStatus"]["reason"] == "deposited 150.00 USD in the last 5 days; 200 needed"
    assert data["accessStatus"]["nextStep"] == "deposit at least 50.00 USD more on BingX"
    assert data["me"]["accessReason"].startswith("deposited 150.00 USD")

    bob = await register(client, email="bob@example.com", display_name="Bob")
    key, secret = second_bingx_user(services, deposit="900", invited=False, key="user-3-key")
    assert (await link_bingx(client, bob["accessToken"], key, secret))["errors"] == []
    data = (await gql(client, ACCESS, token=bob["accessToken"]))["data"]
    assert data["accessStatus"]["level"] == "LIMITED"
    assert data["accessStatus"]["reason"] == "the BingX account was not referred by us"
    assert SIGNUP in data["accessStatus"]["nextStep"]


async def test_deposits_older_than_the_window_do_not_count(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    key, secret = second_bingx_user(services, deposit="150", invited=True)
    sandbox = services.brokers.sandbox
    assert sandbox is not None
    old = datetime.now(UTC) - timedelta(days=6)
    sandbox.fakes.bingx.add_deposit(key, Decimal(500), at_ms=int(old.timestamp() * 1000))
    sandbox.fakes.bingx.add_deposit(key, Decimal(500), status=0)  # pending: not credited
    assert (await link_bingx(client, alice["accessToken"], key, secret))["errors"] == []
    data = (await gql(client, ACCESS, token=alice["accessToken"]))["data"]
    assert data["accessStatus"]["level"] == "LIMITED"
    assert "deposited 150.00 USD" in data["accessStatus"]["reason"]


async def test_daily_revalidation_downgrades_when_the_checks_fail(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    assert (await link_bingx(client, alice["accessToken"]))["errors"] == []
    user_id = decode_id(alice["user"]["id"], "User")
    now = datetime.now(UTC)
    services.brokers.clock.set(now + timedelta(hours=23))
    assert await services.brokers.gatekeeper.run_due() == 0  # not due yet

    # Six days later the 250 USDT deposit is outside the 5-day window.
    services.brokers.clock.set(now + timedelta(days=6))
    assert await services.brokers.gatekeeper.run_due() == 1
    data = (await gql(client, ACCESS, token=alice["accessToken"]))["data"]
    assert data["me"]["accessLevel"] == "LIMITED"
    assert data["accessStatus"]["reason"].startswith("deposited 0.00 USD")
    last = (await decisions(services, user_id))[-1]
    assert last["downgraded"] is True and last["previous"] == "FULL"
    assert last["trigger"] == "schedule"
    review = await services.brokers.gatekeeper.current(user_id)
    assert review is not None
    assert review.next_check_at == now + timedelta(days=7)


async def test_unlinking_bingx_downgrades_at_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    link = (await link_bingx(client, alice["accessToken"]))["link"]
    unlink = "mutation($id: ID!) { unlinkBroker(input: {linkId: $id}) { errors { code } } }"
    await gql(client, unlink, {"id": link["id"]}, token=alice["accessToken"])
    data = (await gql(client, ACCESS, token=alice["accessToken"]))["data"]
    assert data["me"]["accessLevel"] == "LIMITED"
    assert data["accessStatus"]["reason"] == "no BingX account is linked"
    assert SIGNUP in data["accessStatus"]["nextStep"]


async def test_admin_override_wins_over_the_policy_until_cleared(
    client: httpx.AsyncClient, services: Services
) -> None:
    admin = await make_admin(client, services)
    alice = await register(client)
    user_id = decode_id(alice["user"]["id"], "User")
    await gql(client, REVALIDATE, token=alice["accessToken"])  # LIMITED: nothing linked

    pinned = await gql(
        client,
        OVERRIDE,
        {"id": alice["user"]["id"], "level": "FULL", "reason": "partner desk"},
        token=admin["accessToken"],
    )
    access = pinned["data"]["adminSetAccessOverride"]["access"]
    assert access == {
        "level": "FULL",
        "reason": "set by an administrator: partner desk",
        "overridden": True,
    }
    services.brokers.clock.set(datetime.now(UTC) + timedelta(days=2))
    assert await services.brokers.gatekeeper.run_due() == 1
    assert (await gql(client, ACCESS, token=alice["accessToken"]))["data"]["me"][
        "accessLevel"
    ] == "FULL"

    cleared = await gql(client, OVERRIDE, {"id": alice["user"]["id"]}, token=admin["accessToken"])
    assert cleared["data"]["adminSetAccessOverride"]["access"]["level"] == "LIMITED"
    assert cleared["data"]["adminSetAccessOverride"]["access"]["overridden"] is False

    async with services.db.session() as session:
        actions = list(
            await session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.target_id == user_id, AuditEntry.action.like("access.%"))
                .order_by(AuditEntry.seq)
            )
        )
    assert actions == [
        "access.decided",
        "access.override_set",
        "access.decided",
        "access.decided",
        "access.override_cleared",
        "access.decided",
    ]
    sources = [d["source"] for d in await decisions(services, user_id)]
    assert sources == ["policy", "override", "override", "policy"]


async def test_admin_set_access_level_is_adopted_as_an_override(
    client: httpx.AsyncClient, services: Services
) -> None:
    admin = await make_admin(client, services)
    alice = await register(client)
    await gql(client, REVALIDATE, token=alice["accessToken"])
    set_level = """mutation($id: ID!) { adminSetAccessLevel(userId: $id, accessLevel: FULL,
                   reason: "manual review") { user { accessLevel } errors { code } } }"""
    await gql(client, set_level, {"id": alice["user"]["id"]}, token=admin["accessToken"])
    body = await gql(
        client, ADMIN_REVALIDATE, {"id": alice["user"]["id"]}, token=admin["accessToken"]
    )
    assert body["data"]["adminRevalidateAccess"] == {
        "access": {"level": "FULL", "overridden": True},
        "errors": [],
    }


async def test_admin_mutations_need_an_admin(client: httpx.AsyncClient, services: Services) -> None:
    alice = await register(client)
    body = await gql(
        client, ADMIN_REVALIDATE, {"id": alice["user"]["id"]}, token=alice["accessToken"]
    )
    assert body["data"]["adminRevalidateAccess"]["errors"][0]["code"] == "FORBIDDEN"
    body = await gql(
        client,
        OVERRIDE,
        {"id": alice["user"]["id"], "level": "FULL"},
        token=alice["accessToken"],
    )
    assert body["data"]["adminSetAccessOverride"]["errors"][0]["code"] == "FORBIDDEN"
    async with services.db.session() as session:
        user = await session.get(User, decode_id(alice["user"]["id"], "User"))
    assert user is not None and user.access_level is AccessLevel.LIMITED


async def test_bingx_outage_keeps_the_level_and_retries_with_backoff(
    client: httpx.AsyncClient, services: Services
) -> None:
    admin = await make_admin(client, services)
    alice = await register(client)
    assert (await link_bingx(client, alice["accessToken"]))["errors"] == []
    user_id = decode_id(alice["user"]["id"], "User")
    sandbox = services.brokers.sandbox
    assert sandbox is not None
    sandbox.fakes.bingx.faults.status(503, times=100)
    now = datetime.now(UTC)
    services.brokers.clock.set(now)
    body = await gql(
        client, ADMIN_REVALIDATE, {"id": alice["user"]["id"]}, token=admin["accessToken"]
    )
    assert body["data"]["adminRevalidateAccess"]["errors"][0]["code"] == "BROKER_UNAVAILABLE"
    async with services.db.session() as session:
        user = await session.get(User, user_id)
        review = await session.get(AccessReview, user_id)
    assert user is not None and user.access_level is AccessLevel.FULL  # not downgraded
    assert review is not None and review.failures == 1
    assert review.next_check_at == now + timedelta(minutes=5)
    async with services.db.session() as session:
        deferred = list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action == "access.review_deferred")
            )
        )
    assert len(deferred) == 1


async def test_the_job_reviews_due_users_and_stops_on_signal(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    user_id = decode_id(alice["user"]["id"], "User")
    async with services.db.session() as session:
        session.add(AccessReview(user_id=user_id, next_check_at=datetime.now(UTC)))
        await session.commit()
    stop = asyncio.Event()
    job = asyncio.create_task(run_gatekeeper_forever(services, stop, poll_seconds=0.05))
    for _ in range(200):
        if await decisions(services, user_id):
            break
        await asyncio.sleep(0.05)
    [decision] = await decisions(services, user_id)
    assert decision["trigger"] == "schedule" and decision["level"] == "LIMITED"
    stop.set()
    await asyncio.wait_for(job, timeout=2)
    assert services.brokers.gatekeeper.runs.labels("ok")._value.get() >= 1


async def test_the_job_backs_off_when_an_iteration_fails(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    async def broken(**_: object) -> dict[str, int]:
        calls.append(asyncio.get_running_loop().time())
        raise RuntimeError("database is down")

    monkeypatch.setattr(services.brokers.linking, "sweep", broken)
    stop = asyncio.Event()
    job = asyncio.create_task(run_gatekeeper_forever(services, stop, poll_seconds=0.01))
    await asyncio.sleep(3.5)  # backoff 2 s after the first failure, then 4 s
    stop.set()
    await asyncio.wait_for(job, timeout=2)
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 1.9
    assert services.brokers.gatekeeper.runs.labels("error")._value.get() == 2


async def test_users_may_ask_for_a_review_once_a_minute(
    client: httpx.AsyncClient, services: Services
) -> None:
    alice = await register(client)
    now = datetime.now(UTC)
    services.brokers.clock.set(now)
    first = await gql(client, REVALIDATE, token=alice["accessToken"])
    assert first["data"]["revalidateAccess"]["errors"] == []
    assert first["data"]["revalidateAccess"]["access"]["nextStep"].startswith("sign up")
    again = await gql(client, REVALIDATE, token=alice["accessToken"])
    assert again["data"]["revalidateAccess"]["errors"] == [{"code": "RATE_LIMITED"}]
    services.brokers.clock.set(now + timedelta(seconds=61))
    later = await gql(client, REVALIDATE, token=alice["accessToken"])
    assert later["data"]["revalidateAccess"]["errors"] == []
    assert len(await decisions(services)) == 2

"""No broker secret in the database, the API's answers or the logs (both legs).

Every flow that touches a secret runs once (Deriv and Kite logins, BingX keys right and
wrong, trading, summaries, unlinking, key checks); then every table is dumped and every
captured log record rendered, and none of the plaintexts may appear anywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import Leg, make_settings
from tests.helpers import gql, register
from tests.integration import test_brokers_linking as linking
from tests.integration.test_brokers_linking import REDIRECT, complete, start_link
from tradegraph.brokers.models import BrokerLink
from tradegraph.brokers.sandbox import SANDBOX_BINGX_API_KEY, SANDBOX_BINGX_SECRET
from tradegraph.config import Settings
from tradegraph.models import Base
from tradegraph.services import Services

WRONG_SECRET = "wrong-secret-0123456789abcdef"


@pytest.fixture
def settings(tmp_path: Path, leg: Leg) -> Settings:
    return make_settings(tmp_path, leg, broker_sandbox=True, broker_redirect_uris=REDIRECT)


async def dump_database(services: Services) -> str:
    parts: list[str] = []
    async with services.db.session() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                parts.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(parts)


async def test_secrets_never_leave_the_vault(
    client: httpx.AsyncClient, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[Any] = []
    outside: set[int] = set()  # log records of the test's own "browser", not of the app

    async def call(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = await gql(client, query, variables, token=alice["accessToken"])
        answers.append(body)
        return body

    async def browser(url: str) -> str:
        first = len(caplog.records)
        location = await linking.broker_login(url)
        outside.update(range(first, len(caplog.records)))
        return location

    alice = await register(client)
    token = alice["accessToken"]

    # Deriv: tokens arrive in the redirect.
    started = await start_link(client, token, "DERIV")
    callback = await browser(started["authorizationUrl"])
    params = dict(httpx.URL(callback).params)
    deriv_tokens = [params["token1"], params["token2"]]
    answers.append(await complete(client, token, started["state"], callback))

    # Kite: a request token is exchanged for an access token.
    started = await start_link(client, token, "ZERODHA")
    callback = await browser(started["authorizationUrl"])
    request_token = dict(httpx.URL(callback).params)["request_token"]
    answers.append(await complete(client, token, started["state"], callback))

    # BingX: a wrong secret first, then the right one.
    answers.append(await linking.link_bingx(client, token, secret=WRONG_SECRET))
    answers.append(await linking.link_bingx(client, token))

    async with services.db.session() as session:
        links = {link.provider: link for link in await session.scalars(select(BrokerLink))}
    kite_token = services.brokers.ctx.vault.open(links["ZERODHA"])["access_token"]
    secrets = {
        *deriv_tokens,
        request_token,
        kite_token,
        SANDBOX_BINGX_API_KEY,
        SANDBOX_BINGX_SECRET,
        WRONG_SECRET,
    }
    assert all(len(s) >= 16 for s in secrets)
    for link in links.values():
        assert link.credentials_enc is not None and link.credentials_enc.startswith("v1.")

    # Use every credential: summaries, a trade, checks, then unlink Kite (logout call).
    ids = {
        link["provider"] + link["accountReference"]: link["id"]
        for link in (await call("{ brokerLinks { id provider accountReference } }"))["data"][
            "brokerLinks"
        ]
    }
    await call(
        """{ me { summary(currency: "USD") { balance accounts { error { code message } } } } }"""
    )
    bought = await call(
        """mutation($id: ID!) { buyContract(input: {linkId: $id, symbol: "R_10",
           direction: FALL, stake: "3", duration: 2, durationUnit: MINUTES}) {
           contract { id } errors { code message } } }""",
        {"id": ids["DERIVCR900001"]},
    )
    assert bought["data"]["buyContract"]["errors"] == []
    for link_id in ids.values():
        await call(
            """mutation($id: ID!) {
                 checkBrokerLink(linkId: $id) { link { status } errors { code } } }""",
            {"id": link_id},
        )
    await call(
        "mutation($id: ID!) { unlinkBroker(input: {linkId: $id}) { errors { code } } }",
        {"id": ids["ZERODHASB0001"]},
    )

    dump = await dump_database(services)
    api = json.dumps(answers)
    logs = "\n".join(
        f"{r.name} {r.getMessage()} {r.__dict__}"
        for n, r in enumerate(caplog.records)
        if n not in outside
    )
    assert "broker_links" in dump and "v1." in dump  # the dump is real
    assert caplog.records, "nothing was logged: the log check would prove nothing"
    for secret in secrets:
        assert secret not in dump, "a secret is stored in plaintext"
        assert secret not in api, "a secret came back through the API"
        assert secret not in logs, "a secret was logged"

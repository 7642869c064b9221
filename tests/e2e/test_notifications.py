"""Notifications: listing and paging, marking read, and the live stream across processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import httpx
import pytest
import websockets

from tests.helpers import gql, register
from tradegraph.graphql.ids import decode_id

LIST = """query($first: Int!, $after: String, $unread: Boolean) {
  notifications(first: $first, after: $after, unreadOnly: $unread) {
    edges { cursor node { id kind title read } } pageInfo { hasNextPage endCursor } } }"""


async def test_list_page_and_mark_read(client, services):
    session = await register(client)
    user_id = decode_id(session["user"]["id"], "User")
    for i in range(5):
        await services.notifications.notify(user_id, "TEST", f"note {i}")
    token = session["accessToken"]
    first = (await gql(client, LIST, {"first": 2}, token=token))["data"]["notifications"]
    assert [e["node"]["title"] for e in first["edges"]] == ["note 4", "note 3"]
    assert first["pageInfo"]["hasNextPage"] is True
    rest = await gql(
        client, LIST, {"first": 10, "after": first["pageInfo"]["endCursor"]}, token=token
    )
    titles = [e["node"]["title"] for e in rest["data"]["notifications"]["edges"]]
    assert titles == ["note 2", "note 1", "note 0"]
    assert rest["data"]["notifications"]["pageInfo"]["hasNextPage"] is False
    one = first["edges"][0]["node"]["id"]
    marked = await gql(
        client,
        "mutation($ids: [ID!]) { markNotificationsRead(ids: $ids) { updated errors { code } } }",
        {"ids": [one]},
        token=token,
    )
    assert marked["data"]["markNotificationsRead"] == {"updated": 1, "errors": []}
    unread = await gql(client, LIST, {"first": 10, "unread": True}, token=token)
    assert len(unread["data"]["notifications"]["edges"]) == 4
    bad = await gql(client, LIST, {"first": 2, "after": "garbage"}, token=token)
    assert bad["errors"][0]["extensions"]["code"] == "INVALID_CURSOR"
    # Another user can neither list nor fetch them by id.
    other = await register(client, email="eve@example.com", display_name="Eve")
    theirs = await gql(client, LIST, {"first": 10}, token=other["accessToken"])
    assert theirs["data"]["notifications"]["edges"] == []
    node = await gql(
        client, "query($id: ID!) { node(id: $id) { id } }", {"id": one}, token=other["accessToken"]
    )
    assert node["data"]["node"] is None


async def _subscribe(server: str, token: str):
    ws = await websockets.connect(f"ws://{server}/graphql", subprotocols=["graphql-transport-ws"])
    await ws.send(
        json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    )
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    await ws.send(
        json.dumps(
            {
                "id": "n",
                "type": "subscribe",
                "payload": {"query": "subscription { myNotifications { kind title } }"},
            }
        )
    )
    return ws


async def test_security_events_arrive_live(live_server):
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as client:
        session = await register(client)
        ws = await _subscribe(live_server, session["accessToken"])
        try:
            await asyncio.sleep(0.2)  # let the subscription attach before the event
            await gql(
                client,
                'mutation { createApiToken(input: {name: "bot", scopes: [READ]}) { token } }',
                token=session["accessToken"],
            )
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        finally:
            await ws.close()
    assert msg["payload"]["data"]["myNotifications"] == {
        "kind": "SECURITY",
        "title": "API token 'bot' created",
    }


@pytest.mark.pg
@pytest.mark.redis
async def test_event_published_in_another_process_reaches_subscriber(live_server, services, leg):
    if leg.name != "pg":
        pytest.skip("cross-process delivery needs Redis (the PostgreSQL + Redis leg)")
    async with httpx.AsyncClient(base_url=f"http://{live_server}") as client:
        session = await register(client)
    user_id = decode_id(session["user"]["id"], "User")
    ws = await _subscribe(live_server, session["accessToken"])
    settings = services.settings
    script = (
        "import asyncio\n"
        "from tradegraph.config import Settings\n"
        "from tradegraph.services import Services\n"
        "async def main():\n"
        "    s = Services(Settings())\n"
        "    await s.start()\n"
        f"    await s.notifications.notify({user_id!r}, 'TEST', 'from another process')\n"
        "    await s.stop()\n"
        "asyncio.run(main())\n"
    )
    env = {
        **os.environ,
        "TRADEGRAPH_ENV": "test",
        "TRADEGRAPH_DATABASE_URL": settings.database_url,
        "TRADEGRAPH_REDIS_URL": settings.redis_url or "",
        "TRADEGRAPH_REDIS_PREFIX": settings.redis_prefix,
        "TRADEGRAPH_JWT_SECRET": settings.jwt_secret,
        "TRADEGRAPH_DATA_DIR": str(settings.data_dir),
    }
    try:
        await asyncio.sleep(0.2)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, env=env)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.pid != os.getpid()
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
    finally:
        await ws.close()
    assert msg["payload"]["data"]["myNotifications"]["title"] == "from another process"

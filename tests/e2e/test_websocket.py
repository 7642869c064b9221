"""Real websockets against a running uvicorn: both protocols, auth, limits, garbage."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.helpers import register

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


async def _connect(server: str, protocol: str = TRANSPORT_WS):
    return await websockets.connect(f"ws://{server}/graphql", subprotocols=[protocol])


async def _recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _token(live_server: str) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://{live_server}") as client:
        return (await register(client))["accessToken"]


async def test_server_time_ticks_for_authenticated_client(live_server):
    token = await _token(live_server)
    async with await _connect(live_server) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        assert (await _recv(ws))["type"] == "connection_ack"
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": "subscription { serverTime }"},
                }
            )
        )
        # The first tick is immediate, then one on each whole second.
        ticks = [await _recv(ws) for _ in range(3)]
        assert {t["type"] for t in ticks} == {"next"}
        times = [datetime.fromisoformat(t["payload"]["data"]["serverTime"]) for t in ticks]
        assert 0.9 <= (times[2] - times[1]).total_seconds() <= 1.1
        assert times[1].microsecond < 100_000 and times[0].tzinfo is not None
        # Queries and mutations also run over the socket (no HTTP cost per call).
        await ws.send(
            json.dumps({"id": "2", "type": "subscribe", "payload": {"query": "{ me { email } }"}})
        )
        while True:
            msg = await _recv(ws)
            if msg.get("id") == "2":
                break
        assert msg["payload"]["data"]["me"]["email"] == "alice@example.com"
        await ws.send(json.dumps({"id": "1", "type": "complete"}))


async def test_bad_token_is_refused_with_4403(live_server):
    async with await _connect(live_server) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": "Bearer nonsense"}})
        )
        with pytest.raises(ConnectionClosed) as closed:
            await _recv(ws)
    assert closed.value.rcvd.code == 4403


async def test_anonymous_socket_can_use_public_fields(live_server):
    async with await _connect(live_server) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert (await _recv(ws))["type"] == "connection_ack"
        await ws.send(
            json.dumps(
                {
                    "id": "a",
                    "type": "subscribe",
                    "payload": {"query": "subscription { serverTime }"},
                }
            )
        )
        assert (await _recv(ws))["type"] == "next"


async def test_legacy_graphql_ws_protocol(live_server):
    token = await _token(live_server)
    async with await _connect(live_server, LEGACY_WS) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        assert (await _recv(ws))["type"] == "connection_ack"
        await ws.send(
            json.dumps(
                {"id": "1", "type": "start", "payload": {"query": "subscription { serverTime }"}}
            )
        )
        msg = await _recv(ws)
        while msg["type"] == "ka":
            msg = await _recv(ws)
        assert msg["type"] == "data" and msg["payload"]["data"]["serverTime"]


async def test_subscription_cap_per_connection(live_server, services):
    cap = services.settings.ws_max_subscriptions
    async with await _connect(live_server) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        await _recv(ws)
        for i in range(cap + 1):
            await ws.send(
                json.dumps(
                    {
                        "id": str(i),
                        "type": "subscribe",
                        "payload": {"query": "subscription { serverTime }"},
                    }
                )
            )
        errors = []
        for _ in range(cap * 3):
            try:
                msg = await _recv(ws, 3)
            except (TimeoutError, ConnectionClosed) as exc:
                errors.append(exc)
                break
            if msg["type"] == "error":
                errors.append(msg)
                break
        assert errors, "the connection accepted more subscriptions than the cap"


@pytest.mark.parametrize(
    "frame",
    [
        "not json at all",
        json.dumps({"type": "nonsense"}),
        json.dumps([1, 2, 3]),
        json.dumps({"type": "subscribe", "id": 5, "payload": "x"}),
    ],
)
async def test_garbage_frames_close_cleanly(live_server, frame):
    async with await _connect(live_server) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        await _recv(ws)
        await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(5):
                await _recv(ws)
    assert 4000 <= closed.value.rcvd.code < 5000

"""The HMAC-signed payment-provider deposit webhook."""

from __future__ import annotations

import json
import time

from tests.conftest import make_settings
from tests.integration.test_exchange_api import balances, trader
from tests.integration.test_security_baseline import _client
from tradegraph.exchange.webhooks import sign

SECRET = "whsec-" + "z" * 32


async def _post(client, payload: dict, *, secret: str = SECRET, ts: int | None = None):
    body = json.dumps(payload).encode()
    header = sign(secret, ts or int(time.time()), body)
    return await client.post(
        "/webhooks/deposits",
        content=body,
        headers={"x-tradegraph-signature": header, "content-type": "application/json"},
    )


async def test_signed_deposit_credits_once(tmp_path, leg):
    settings = make_settings(tmp_path, leg, deposit_webhook_secret=SECRET)
    async with _client(settings) as client:
        token, account = await trader(client, "alice@example.com", kind="SPOT")
        payload = {"accountId": account, "asset": "USD", "amount": "250.5", "reference": "pi_1"}
        first = await _post(client, payload)
        assert first.status_code == 200, first.text
        again = await _post(client, payload)
        assert again.json()["transactionId"] == first.json()["transactionId"]
        assert again.json()["replayed"] is True
        assert (await balances(client, token, account))["USD"]["total"] == "250.500000"
        forged = await _post(client, {**payload, "reference": "pi_2"}, secret="wrong")
        assert forged.status_code == 401
        stale = await _post(client, {**payload, "reference": "pi_3"}, ts=int(time.time()) - 3600)
        assert stale.status_code == 401
        bad = await _post(client, {"accountId": account, "asset": "USD"})
        assert bad.status_code == 400
        unknown = await _post(client, {**payload, "asset": "XYZ", "reference": "pi_4"})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "UNKNOWN_ASSET"
        assert (await balances(client, token, account))["USD"]["total"] == "250.500000"


async def test_webhook_disabled_without_secret(client):
    r = await _post(client, {"accountId": "1", "asset": "USD", "amount": "1", "reference": "x"})
    assert r.status_code == 404

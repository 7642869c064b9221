"""Query limits, masking, rate limits, headers, and bad input never producing a 500."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import Leg, make_settings
from tests.helpers import gql, register
from tradegraph.app import create_app
from tradegraph.services import Services


def _code(body: dict) -> str:
    return body["errors"][0]["extensions"]["code"]


async def test_depth_limit_rejects_with_named_limit(tmp_path, leg: Leg):
    settings = make_settings(tmp_path, leg, max_query_depth=1)
    async with _client(settings) as client:
        body = await gql(client, "{ admin { users { email } } }")
    assert "exceeds maximum operation depth of 1" in body["errors"][0]["message"]


async def test_alias_and_token_limits(client):
    many = "{ " + " ".join(f"a{i}: serverTime" for i in range(40)) + " }"
    body = await gql(client, many)
    assert "aliases" in body["errors"][0]["message"].lower()
    huge = "{ " + " ".join("serverTime" for _ in range(3000)) + " }"
    body = await gql(client, huge)
    assert "tokens" in body["errors"][0]["message"].lower()


async def test_cost_limit_and_page_size(client):
    body = await gql(client, "{ admin { users(first: 500) { email } } }")
    assert _code(body) == "PAGE_SIZE_TOO_LARGE"
    assert "200" in body["errors"][0]["message"]
    by_variable = await gql(
        client,
        "query($n: Int!) { admin { users(first: $n) { email } } }",
        {"n": 201},
    )
    assert _code(by_variable) == "PAGE_SIZE_TOO_LARGE"


async def test_cost_limit_names_the_limit(tmp_path, leg: Leg):
    settings = make_settings(tmp_path, leg, max_query_cost=100)
    async with _client(settings) as client:
        body = await gql(client, "{ admin { users(first: 150) { email } } }")
    assert _code(body) == "QUERY_TOO_COSTLY"
    assert "maximum cost of 100" in body["errors"][0]["message"]


async def test_unexpected_errors_are_masked_with_an_id(client, services, monkeypatch, caplog):
    async def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    session = await register(client)
    monkeypatch.setattr(services.identity, "get_user", boom)
    with caplog.at_level(logging.ERROR, logger="tradegraph.graphql"):
        body = await gql(client, "{ me { email } }", token=session["accessToken"])
    error = body["errors"][0]
    assert "secret internal detail" not in str(body)
    assert error["extensions"]["code"] == "INTERNAL"
    error_id = error["extensions"]["errorId"]
    assert error_id in error["message"]
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and logged[0].exc_info is not None


async def test_no_field_suggestions_in_production(tmp_path, leg: Leg):
    dev = make_settings(tmp_path, leg)
    async with _client(dev) as client:
        body = await gql(client, "{ mee { email } }")
    assert "Did you mean" in body["errors"][0]["message"]
    prod = make_settings(
        tmp_path, leg, env="production", vault_keys=_vault_keys(), argon2_memory_kib=19_456
    )
    async with _client(prod) as client:
        body = await gql(client, "{ mee { email } }")
    assert "Did you mean" not in body["errors"][0]["message"]


def _vault_keys() -> str:
    from tradegraph.security.vault import Keyring

    return Keyring.generate().to_config()


async def test_ip_rate_limit(tmp_path, leg: Leg):
    settings = make_settings(tmp_path, leg, rate_limit_ip_per_minute=3)
    async with _client(settings) as client:
        for _ in range(3):
            assert "errors" not in await gql(client, "{ serverTime }")
        body = await gql(client, "{ serverTime }")
    assert _code(body) == "RATE_LIMITED"


async def test_user_rate_limit(tmp_path, leg: Leg):
    settings = make_settings(tmp_path, leg, rate_limit_user_per_minute=2)
    async with _client(settings) as client:
        session = await register(client)
        for _ in range(2):
            await gql(client, "{ me { id } }", token=session["accessToken"])
        body = await gql(client, "{ me { id } }", token=session["accessToken"])
    assert _code(body) == "RATE_LIMITED"


async def test_security_headers_cors_and_request_id(tmp_path, leg: Leg):
    settings = make_settings(tmp_path, leg, cors_origins=["https://app.example.com"])
    async with _client(settings) as client:
        r = await client.post(
            "/graphql",
            json={"query": "{ serverTime }"},
            headers={"origin": "https://app.example.com", "x-request-id": "abc-123"},
        )
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert r.headers["x-request-id"] == "abc-123"
        evil = await client.options(
            "/graphql",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in evil.headers


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'{"query": 12}', {"content-type": "application/json"}, 400),
        (b"[]", {"content-type": "application/json"}, 400),
        (b"x" * 2_000_000, {"content-type": "application/json"}, 413),
        (b"query=1", {"content-type": "text/plain"}, 400),
    ],
)
async def test_bad_http_input_is_4xx(client, content, headers, status):
    r = await client.post("/graphql", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text


async def test_graphql_input_errors_are_errors_not_500(client):
    wrong_type = await gql(
        client, "query($n: Int!) { admin { users(first: $n) { id } } }", {"n": "many"}
    )
    assert wrong_type["errors"] and wrong_type.get("data") is None
    r = await client.post("/graphql", json={"query": "{ serverTime }", "operationName": "Nope"})
    assert 400 <= r.status_code < 500 or r.json()["errors"]
    syntax = await gql(client, "{ me { ")
    assert _code(syntax) == "GRAPHQL_VALIDATION_FAILED"


async def test_get_never_runs_a_mutation(client, services):
    mutation = (
        'mutation { register(input: {email: "get@example.com", password: "long enough pw",'
        ' displayName: "G"}) { user { id } } }'
    )
    r = await client.get("/graphql", params={"query": mutation})
    assert 400 <= r.status_code < 500
    assert await services.identity.get_user_by_email("get@example.com") is None
    ok = await client.get("/graphql", params={"query": "{ serverTime }"})
    assert ok.status_code == 200 and ok.json()["data"]["serverTime"]
    ide = await client.get("/graphql", headers={"accept": "text/html"})
    assert ide.status_code == 200 and "graphiql" in ide.text.lower()


class _client:
    """An app + client for settings other than the default fixture's."""

    def __init__(self, settings) -> None:
        self.services = Services(settings)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self.services.start()
        app = create_app(self.services.settings, services=self.services)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.9.9.9", 1)),
            base_url="http://testserver",
        )
        return self.client

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        await self.services.stop()

"""Small helpers for talking GraphQL to the app in tests."""

from __future__ import annotations

from typing import Any

import httpx

REGISTER = """
mutation Register($input: RegisterInput!) {
  register(input: $input) {
    accessToken refreshToken user { id email role } errors { code field message }
  }
}
"""

LOGIN = """
mutation Login($input: LoginInput!) {
  login(input: $input) {
    accessToken refreshToken user { id email } errors { code field message }
  }
}
"""


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    expect_status: int = 200,
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code == expect_status, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(
    client: httpx.AsyncClient,
    email: str = "alice@example.com",
    password: str = "correct horse battery",
    display_name: str = "Alice",
) -> dict[str, Any]:
    body = await gql(
        client,
        REGISTER,
        {"input": {"email": email, "password": password, "displayName": display_name}},
    )
    payload: dict[str, Any] = body["data"]["register"]
    assert payload["errors"] == [], payload
    return payload

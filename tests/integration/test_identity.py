"""Identity through the real ASGI app, on both legs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.helpers import LOGIN, gql, register
from tradegraph.graphql.ids import decode_id
from tradegraph.identity.models import RefreshToken, User
from tradegraph.security import totp

REFRESH = """
mutation R($t: String!) {
  refreshSession(refreshToken: $t) { accessToken refreshToken errors { code message } }
}
"""


async def login(client, email="alice@example.com", password="correct horse battery", otp=None):
    body = await gql(client, LOGIN, {"input": {"email": email, "password": password, "otp": otp}})
    return body["data"]["login"]


async def test_register_normalizes_email_and_rejects_duplicates(client):
    payload = await register(client, email="  Alice@Example.COM ")
    assert payload["user"]["email"] == "alice@example.com"
    assert payload["user"]["role"] == "TRADER"
    again = await gql(
        client,
        'mutation { register(input: {email: "ALICE@example.com", password: "another long pw",'
        ' displayName: "A"}) { user { id } errors { code field } } }',
    )
    assert again["data"]["register"] == {
        "user": None,
        "errors": [{"code": "EMAIL_TAKEN", "field": "email"}],
    }


async def test_register_validates_input(client):
    query = """mutation($i: RegisterInput!) { register(input: $i) { user { id }
      errors { code field message } } }"""
    weak = await gql(
        client, query, {"i": {"email": "b@x.io", "password": "short", "displayName": "B"}}
    )
    assert weak["data"]["register"]["errors"][0]["code"] == "WEAK_PASSWORD"
    assert weak["data"]["register"]["errors"][0]["field"] == "password"
    bad = await gql(
        client, query, {"i": {"email": "nope", "password": "x" * 14, "displayName": "B"}}
    )
    assert bad["data"]["register"]["errors"][0] == {
        "code": "INVALID_EMAIL",
        "field": "email",
        "message": "enter a valid e-mail address",
    }


async def test_register_queues_verification_email_and_verify(client, services):
    payload = await register(client)
    async with services.db.session() as session:
        from tradegraph.identity.models import OutboxEmail

        mail = (await session.scalars(select(OutboxEmail))).one()
    assert mail.to_address == "alice@example.com"
    token = mail.body.split("token ")[-1].rstrip(".")
    verify = """mutation($t: String!) { verifyEmail(token: $t) { user { emailVerified }
      errors { code } } }"""
    ok = await gql(client, verify, {"t": token})
    assert ok["data"]["verifyEmail"] == {"user": {"emailVerified": True}, "errors": []}
    again = await gql(client, verify, {"t": token})
    assert again["data"]["verifyEmail"]["errors"] == [{"code": "INVALID_TOKEN"}]
    assert payload["user"]["id"]


async def test_login_generic_error_and_lockout(client):
    await register(client)
    wrong_pw = await login(client, password="wrong password!!")
    unknown = await login(client, email="nobody@example.com")
    assert wrong_pw["errors"][0]["code"] == unknown["errors"][0]["code"] == "INVALID_CREDENTIALS"
    assert wrong_pw["errors"][0]["message"] == unknown["errors"][0]["message"]
    for _ in range(4):
        await login(client, password="wrong password!!")
    locked = await login(client)  # right password, but 5 failures in the window
    assert locked["errors"][0]["code"] == "RATE_LIMITED"
    assert locked["accessToken"] is None


async def test_refresh_rotates_and_reuse_revokes_family(client, services):
    first = await register(client)
    rotated = (await gql(client, REFRESH, {"t": first["refreshToken"]}))["data"]["refreshSession"]
    assert rotated["errors"] == []
    assert rotated["refreshToken"] != first["refreshToken"]
    # Replaying the spent token is treated as theft: the whole family dies.
    replay = (await gql(client, REFRESH, {"t": first["refreshToken"]}))["data"]["refreshSession"]
    assert replay["errors"][0]["code"] == "INVALID_REFRESH_TOKEN"
    after = (await gql(client, REFRESH, {"t": rotated["refreshToken"]}))["data"]["refreshSession"]
    assert after["errors"][0]["code"] == "INVALID_REFRESH_TOKEN"
    async with services.db.session() as session:
        rows = list(await session.scalars(select(RefreshToken)))
    assert rows and all(r.revoked_at is not None for r in rows)
    audit = [e.action for e in await _audit(services)]
    assert "session.refresh_reuse" in audit


async def test_logout_ends_session(client):
    session = await register(client)
    out = await gql(
        client,
        "mutation($t: String!) { logout(refreshToken: $t) { ok errors { code } } }",
        {"t": session["refreshToken"]},
    )
    assert out["data"]["logout"] == {"ok": True, "errors": []}
    refreshed = await gql(client, REFRESH, {"t": session["refreshToken"]})
    assert refreshed["data"]["refreshSession"]["errors"][0]["code"] == "INVALID_REFRESH_TOKEN"


async def test_me_requires_valid_token(client):
    anonymous = await gql(client, "{ me { email } }")
    assert anonymous == {"data": {"me": None}}
    bad = await gql(client, "{ me { email } }", token="not-a-jwt")
    assert bad["data"] is None
    assert bad["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_totp_enrolment_login_and_replay(client, services):
    session = await register(client)
    token = session["accessToken"]
    setup = await gql(client, "mutation { setupTotp { otpauthUri errors { code } } }", token=token)
    uri = setup["data"]["setupTotp"]["otpauthUri"]
    assert uri.startswith("otpauth://totp/")
    secret = uri.split("secret=")[1].split("&")[0]
    enable = """mutation($c: String!) { enableTotp(code: $c) { user { twoFactorEnabled }
      errors { code } } }"""
    wrong = await gql(client, enable, {"c": "000000"}, token=token)
    assert wrong["data"]["enableTotp"]["errors"][0]["code"] in {"INVALID_OTP"}
    now = datetime.now(UTC)
    ok = await gql(client, enable, {"c": totp.code_at(secret, now)}, token=token)
    assert ok["data"]["enableTotp"] == {"user": {"twoFactorEnabled": True}, "errors": []}
    # The seed is stored encrypted, never in the clear.
    async with services.db.session() as s:
        user = (await s.scalars(select(User))).one()
    assert secret not in (user.totp_secret_enc or "")
    missing = await login(client)
    assert missing["errors"][0]["code"] == "OTP_REQUIRED"
    # The code used to enable cannot be used again; the next step's code works once.
    replay = await login(client, otp=totp.code_at(secret, now))
    assert replay["errors"][0]["code"] == "INVALID_OTP"
    later = now + timedelta(seconds=30)
    good = await login(client, otp=totp.code_at(secret, later))
    assert good["errors"] == [] and good["accessToken"]
    twice = await login(client, otp=totp.code_at(secret, later))
    assert twice["errors"][0]["code"] == "INVALID_OTP"


async def test_api_tokens(client):
    session = await register(client)
    create = """mutation($i: CreateApiTokenInput!) { createApiToken(input: $i) {
      token apiToken { id name scopes revoked } errors { code field } } }"""
    bad = await gql(
        client, create, {"i": {"name": "", "scopes": ["READ"]}}, token=session["accessToken"]
    )
    assert bad["data"]["createApiToken"]["errors"] == [{"code": "INVALID_INPUT", "field": "name"}]
    made = await gql(
        client, create, {"i": {"name": "bot", "scopes": ["READ"]}}, token=session["accessToken"]
    )
    payload = made["data"]["createApiToken"]
    assert payload["token"].startswith("tgp_")
    assert payload["apiToken"]["scopes"] == ["read"]
    me = await gql(client, "{ me { email } }", token=payload["token"])
    assert me["data"]["me"]["email"] == "alice@example.com"
    # API tokens cannot mint more API tokens or touch 2FA.
    nested = await gql(
        client, create, {"i": {"name": "x", "scopes": ["READ"]}}, token=payload["token"]
    )
    assert nested["data"]["createApiToken"]["errors"][0]["code"] == "FORBIDDEN"
    listed = await gql(client, "{ apiTokens { id prefix } }", token=session["accessToken"])
    assert listed["data"]["apiTokens"][0]["prefix"] == payload["token"][:12]
    revoke = await gql(
        client,
        "mutation($id: ID!) { revokeApiToken(id: $id) { apiToken { revoked } errors { code } } }",
        {"id": payload["apiToken"]["id"]},
        token=session["accessToken"],
    )
    assert revoke["data"]["revokeApiToken"] == {"apiToken": {"revoked": True}, "errors": []}
    gone = await gql(client, "{ me { email } }", token=payload["token"])
    assert gone["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def _make_admin(client, services):
    from tradegraph.identity.models import Role

    admin = await register(client, email="root@example.com", display_name="Root")
    async with services.db.session() as s:
        user = await s.get(User, decode_id(admin["user"]["id"], "User"))
        user.role = Role.ADMIN
        await s.commit()
    return admin


async def test_suspension_stops_existing_tokens_at_once(client, services):
    admin = await _make_admin(client, services)
    victim = await register(client)
    api = await gql(
        client,
        'mutation { createApiToken(input: {name: "b", scopes: [READ, TRADE]}) { token } }',
        token=victim["accessToken"],
    )
    api_token = api["data"]["createApiToken"]["token"]
    for token in (victim["accessToken"], api_token):  # both principals are now cached
        assert (await gql(client, "{ me { email } }", token=token))["data"]["me"]
    suspend = """mutation($id: ID!) { adminSetUserStatus(userId: $id, status: SUSPENDED) {
      user { status } errors { code } } }"""
    done = await gql(client, suspend, {"id": victim["user"]["id"]}, token=admin["accessToken"])
    assert done["data"]["adminSetUserStatus"] == {"user": {"status": "SUSPENDED"}, "errors": []}
    for token in (victim["accessToken"], api_token):
        body = await gql(client, "{ me { email } }", token=token)
        assert body["errors"][0]["extensions"]["code"] == "ACCOUNT_SUSPENDED"
    refreshed = await gql(client, REFRESH, {"t": victim["refreshToken"]})
    assert refreshed["data"]["refreshSession"]["errors"][0]["code"] == "INVALID_REFRESH_TOKEN"
    relogin = await login(client)
    assert relogin["errors"][0]["code"] == "ACCOUNT_SUSPENDED"
    actions = [e.action for e in await _audit(services)]
    assert "user.status" in actions


async def test_admin_field_and_node_authorization(client, services):
    admin = await _make_admin(client, services)
    alice = await register(client)
    bob = await register(client, email="bob@example.com", display_name="Bob")
    denied = await gql(client, "{ admin { users { email } } }", token=alice["accessToken"])
    assert denied["data"]["admin"] is None
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    users = await gql(client, "{ admin { users { email } } }", token=admin["accessToken"])
    assert {u["email"] for u in users["data"]["admin"]["users"]} == {
        "root@example.com",
        "alice@example.com",
        "bob@example.com",
    }
    node = "query($id: ID!) { node(id: $id) { ... on User { email } } }"
    own = await gql(client, node, {"id": alice["user"]["id"]}, token=alice["accessToken"])
    assert own["data"]["node"] == {"email": "alice@example.com"}
    other = await gql(client, node, {"id": bob["user"]["id"]}, token=alice["accessToken"])
    assert other["data"]["node"] is None
    anon = await gql(client, node, {"id": bob["user"]["id"]})
    assert anon["data"]["node"] is None


async def _audit(services):
    from tradegraph.audit.models import AuditEntry

    async with services.db.session() as s:
        return list(await s.scalars(select(AuditEntry).order_by(AuditEntry.seq)))


async def test_a_change_made_behind_the_services_back_is_seen_within_the_cache_ttl(tmp_path, leg):
    """Writers that bypass ``user_changed`` (SQL by hand) still win after the TTL."""
    import asyncio

    import httpx

    from tests.conftest import make_settings
    from tradegraph.app import create_app
    from tradegraph.identity.models import UserStatus
    from tradegraph.services import Services

    services = Services(make_settings(tmp_path, leg, auth_cache_seconds=0.3))
    await services.start()
    try:
        app = create_app(services.settings, services=services)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            alice = await register(client)
            assert (await gql(client, "{ me { email } }", token=alice["accessToken"]))["data"]
            async with services.db.session() as s:
                user = await s.get(User, decode_id(alice["user"]["id"], "User"))
                user.status = UserStatus.SUSPENDED
                await s.commit()
            await asyncio.sleep(0.35)
            body = await gql(client, "{ me { email } }", token=alice["accessToken"])
            assert body["errors"][0]["extensions"]["code"] == "ACCOUNT_SUSPENDED"
    finally:
        await services.stop()


async def test_suspension_in_one_process_reaches_the_others_caches(tmp_path, leg):
    """Two app processes (Services) on one database and Redis: B forgets at once what A
    changed, long before its (here one minute) cache TTL."""
    import asyncio

    from tests.conftest import make_settings
    from tradegraph.errors import Unauthenticated
    from tradegraph.identity.models import Role, UserStatus
    from tradegraph.services import Services

    if leg.name != "pg":
        pytest.skip("needs a database and pub/sub shared by two processes (PG + Redis leg)")
    settings = make_settings(tmp_path, leg, auth_cache_seconds=60)
    a, b = Services(settings), Services(settings)
    await a.start()
    await b.start()
    try:
        admin = await a.identity.register(
            email="root@example.com",
            password="correct horse battery",
            display_name="Root",
            role=Role.ADMIN,
        )
        victim = await a.identity.register(
            email="bob@example.com", password="correct horse battery", display_name="Bob"
        )
        admin_principal = await a.identity.principal_from_header(f"Bearer {admin.access_token}")
        header = f"Bearer {victim.access_token}"
        assert (await b.identity.principal_from_header(header)).user_id == victim.user.id
        assert len(b.identity.principals) == 1
        await a.identity.set_status(admin_principal, victim.user.id, UserStatus.SUSPENDED)
        for _ in range(200):
            if len(b.identity.principals) == 0:
                break
            await asyncio.sleep(0.01)
        try:
            await b.identity.principal_from_header(header)
            raise AssertionError("B still accepted the suspended user's token")
        except Unauthenticated as error:
            assert error.code == "ACCOUNT_SUSPENDED"
    finally:
        await b.stop()
        await a.stop()

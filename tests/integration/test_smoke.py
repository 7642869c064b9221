from tests.helpers import gql, register


async def test_register_login_me(client):
    reg = await register(client)
    me = await gql(client, "{ me { email role } }", token=reg["accessToken"])
    assert me == {"data": {"me": {"email": "alice@example.com", "role": "TRADER"}}}

"""Local fake brokers speaking the documented Deriv, Kite and BingX protocols.

Tests use them directly; the app's sandbox mode (``TRADEGRAPH_BROKER_SANDBOX=1``) starts
all three in-process with ``start_broker_sandbox`` so broker linking and trading can be
tried end to end without real accounts or network access.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal

from tradegraph.brokers.sandbox.bingx import FakeBingX
from tradegraph.brokers.sandbox.deriv import FakeDeriv
from tradegraph.brokers.sandbox.faults import Fault, FaultInjector, FaultKind
from tradegraph.brokers.sandbox.kite import FakeKite
from tradegraph.brokers.sandbox.server import RunningServer, serve_asgi

__all__ = [
    "SANDBOX_BINGX_AGENT_API_KEY",
    "SANDBOX_BINGX_AGENT_SECRET",
    "SANDBOX_BINGX_API_KEY",
    "SANDBOX_BINGX_SECRET",
    "SANDBOX_DERIV_APP_ID",
    "SANDBOX_KITE_API_KEY",
    "SANDBOX_KITE_API_SECRET",
    "BrokerSandbox",
    "FakeBingX",
    "FakeDeriv",
    "FakeKite",
    "Fault",
    "FaultInjector",
    "FaultKind",
    "RunningServer",
    "serve_asgi",
    "start_broker_sandbox",
]

# Well-known sandbox credentials: they only open the local fakes.
SANDBOX_DERIV_APP_ID = "1089"
SANDBOX_KITE_API_KEY = "sandboxkite"
SANDBOX_KITE_API_SECRET = "sandboxkitesecret"
SANDBOX_KITE_USER = "SB0001"
SANDBOX_BINGX_API_KEY = "sandbox-bingx-key"
SANDBOX_BINGX_SECRET = "sandbox-bingx-secret"
SANDBOX_BINGX_UID = "20000001"
SANDBOX_BINGX_AGENT_API_KEY = "sandbox-bingx-agent-key"
SANDBOX_BINGX_AGENT_SECRET = "sandbox-bingx-agent-secret"
SANDBOX_BINGX_AGENT_UID = "10000001"
SANDBOX_DERIV_EMAIL = "sandbox@example.com"


@dataclass
class BrokerSandbox:
    """The three running fakes and the URLs adapters and link flows should use."""

    deriv: FakeDeriv
    kite: FakeKite
    bingx: FakeBingX

    @property
    def deriv_ws_url(self) -> str:
        return self.deriv.url

    @property
    def deriv_oauth_url(self) -> str:
        return self.deriv.oauth_url

    @property
    def kite_api_url(self) -> str:
        return self.kite.base_url

    @property
    def kite_login_url(self) -> str:
        return f"{self.kite.base_url}/connect/login"

    @property
    def bingx_api_url(self) -> str:
        return self.bingx.base_url

    async def stop(self) -> None:
        await asyncio.gather(self.deriv.stop(), self.kite.stop(), self.bingx.stop())


async def start_broker_sandbox(*, deriv_redirect_uri: str, kite_redirect_url: str) -> BrokerSandbox:
    """Start all fakes on free 127.0.0.1 ports, seeded with one demo user each.

    ``*_redirect_uri`` are the app's OAuth callbacks: the fake login pages redirect there
    just as Deriv and Kite redirect to the URL registered for the app.
    """
    deriv = FakeDeriv(
        app_ids={SANDBOX_DERIV_APP_ID},
        oauth_redirect_uri=deriv_redirect_uri,
        demo_email=SANDBOX_DERIV_EMAIL,
    )
    deriv.add_account("CR900001", currency="USD", email=SANDBOX_DERIV_EMAIL)
    deriv.add_account("VRTC900001", currency="USD", email=SANDBOX_DERIV_EMAIL)

    kite = FakeKite(
        default_user=SANDBOX_KITE_USER,
        prices={
            "NSE:INFY": Decimal("1500.50"),
            "NSE:TCS": Decimal("3900.00"),
            "NSE:RELIANCE": Decimal("2450.25"),
        },
    )
    kite.register_app(SANDBOX_KITE_API_KEY, SANDBOX_KITE_API_SECRET, kite_redirect_url)
    kite.add_user(SANDBOX_KITE_USER, cash=Decimal("500000"))
    kite.add_holding(SANDBOX_KITE_USER, "NSE:INFY", 10, Decimal("1400.00"))

    bingx = FakeBingX(
        prices={"BTC-USDT": Decimal("65000.0"), "ETH-USDT": Decimal("3200.0")},
    )
    bingx.add_account(
        SANDBOX_BINGX_API_KEY, SANDBOX_BINGX_SECRET, uid=SANDBOX_BINGX_UID, balance=Decimal(5000)
    )
    bingx.add_account(
        SANDBOX_BINGX_AGENT_API_KEY,
        SANDBOX_BINGX_AGENT_SECRET,
        uid=SANDBOX_BINGX_AGENT_UID,
        balance=Decimal(0),
    )
    bingx.add_deposit(SANDBOX_BINGX_API_KEY, Decimal("250"))
    bingx.set_invite(SANDBOX_BINGX_UID, inviter_uid=SANDBOX_BINGX_AGENT_UID, deposit=True)

    started: list[FakeDeriv | FakeKite | FakeBingX] = []
    try:
        for fake in (deriv, kite, bingx):
            await fake.start()
            started.append(fake)
    except BaseException:
        for fake in started:
            await fake.stop()
        raise
    return BrokerSandbox(deriv=deriv, kite=kite, bingx=bingx)

"""Sandbox mode (``TRADEGRAPH_BROKER_SANDBOX=1``, on in ``make run``): the fake brokers run
inside the API process so a newcomer can link and trade from GraphiQL, offline.

Besides the three fakes it serves a small "callback" page that the fake Deriv and Kite
logins redirect to. It shows the redirect URL to paste into ``completeBrokerLink``, the
step a real frontend does by itself on its own callback route.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tradegraph.brokers.common import BrokerEndpoints
from tradegraph.brokers.sandbox import (
    SANDBOX_BINGX_AGENT_API_KEY,
    SANDBOX_BINGX_AGENT_SECRET,
    SANDBOX_DERIV_APP_ID,
    SANDBOX_KITE_API_KEY,
    SANDBOX_KITE_API_SECRET,
    BrokerSandbox,
    RunningServer,
    serve_asgi,
    start_broker_sandbox,
)
from tradegraph.brokers.sandbox import SANDBOX_BINGX_AGENT_UID as _AGENT_UID

log = logging.getLogger("tradegraph.brokers")


async def _callback(request: Request) -> Response:
    url = str(request.url)
    params = dict(request.query_params)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"callbackUrl": url, "params": params})
    mutation = (
        "mutation {\n  completeBrokerLink(input: {\n"
        '    state: "<the state from startBrokerLink>"\n'
        f"    callbackUrl: {json.dumps(url)}\n"
        "  }) { links { id provider status accountReference } errors { code message } }\n}"
    )
    body = (
        "<!doctype html><title>TradeGraph sandbox: broker login done</title>"
        "<h1>Broker login done (sandbox)</h1>"
        "<p>Finish the link in GraphiQL with this mutation:</p>"
        f"<pre>{html.escape(mutation)}</pre>"
    )
    return HTMLResponse(body)


def callback_app() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", _callback, methods=["GET"])])


@dataclass
class RunningSandbox:
    fakes: BrokerSandbox
    callback: RunningServer

    async def stop(self) -> None:
        try:
            await self.fakes.stop()
        finally:
            await self.callback.stop()


async def start_sandbox(endpoints: BrokerEndpoints) -> tuple[RunningSandbox, BrokerEndpoints]:
    """Start the fakes and the callback page; return endpoints pointing at them."""
    callback = await serve_asgi(callback_app())
    deriv_cb = f"{callback.base_url}/deriv/callback"
    kite_cb = f"{callback.base_url}/kite/callback"
    try:
        fakes = await start_broker_sandbox(deriv_redirect_uri=deriv_cb, kite_redirect_url=kite_cb)
    except BaseException:
        await callback.stop()
        raise
    sandboxed = endpoints.with_changes(
        deriv_app_id=SANDBOX_DERIV_APP_ID,
        deriv_oauth_url=fakes.deriv_oauth_url,
        deriv_ws_url=fakes.deriv_ws_url,
        kite_api_key=SANDBOX_KITE_API_KEY,
        kite_api_secret=SANDBOX_KITE_API_SECRET,
        kite_login_url=fakes.kite_login_url,
        kite_api_url=fakes.kite_api_url,
        bingx_api_url=fakes.bingx_api_url,
        bingx_referrer_id=_AGENT_UID,
        bingx_referrer_api_key=SANDBOX_BINGX_AGENT_API_KEY,
        bingx_referrer_api_secret=SANDBOX_BINGX_AGENT_SECRET,
        redirect_uris=(*endpoints.redirect_uris, deriv_cb, kite_cb),
        sandbox=True,
    )
    log.warning(
        "broker sandbox is ON: fake Deriv %s, Kite %s, BingX %s; login callbacks at %s",
        fakes.deriv_ws_url,
        fakes.kite_api_url,
        fakes.bingx_api_url,
        callback.base_url,
    )
    return RunningSandbox(fakes, callback), sandboxed

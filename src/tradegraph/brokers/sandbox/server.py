"""Run an ASGI app on a free 127.0.0.1 port inside the current event loop.

Used for the fake brokers both in tests that want a real socket (timeouts, connection
errors) and in the app's sandbox mode. The embedded uvicorn server leaves signal handling
and logging configuration to the host process.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host (the API process or pytest) owns SIGINT/SIGTERM.
        yield


class RunningServer:
    """A started server: ``base_url`` to give to adapters, ``stop()`` to shut it down."""

    def __init__(self, base_url: str, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.base_url = base_url
        self._server = server
        self._task = task

    async def stop(self, grace: float = 5.0) -> None:
        if self._task.done():
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            await asyncio.wait([self._task], timeout=grace)


async def serve_asgi(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> RunningServer:
    """Start ``app`` with uvicorn in a background task and wait until it accepts requests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"fake-broker-{bound_port}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # re-raise the startup error
            raise RuntimeError("embedded server exited during startup")
        if loop.time() > deadline:
            server.should_exit = True
            task.cancel()
            sock.close()
            raise RuntimeError("embedded server did not start in time")
        await asyncio.sleep(0.01)
    return RunningServer(f"http://{host}:{bound_port}", server, task)

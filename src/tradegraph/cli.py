"""The ``tradegraph`` command line: serve, migrate, seed-demo, create-admin, and tools."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer

from tradegraph.config import Settings
from tradegraph.errors import DomainError

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
T = TypeVar("T")

DEMO_EMAIL = "demo@tradegraph.dev"
DEMO_PASSWORD = "demo-password-123"
DEMO_ADMIN_EMAIL = "admin@tradegraph.dev"
DEMO_ADMIN_PASSWORD = "admin-password-123"


def _with_services(fn: Callable[..., Awaitable[T]]) -> T:
    from tradegraph.services import Services

    async def run() -> T:
        services = Services(Settings())
        try:
            return await fn(services)
        finally:
            await services.stop()

    return asyncio.run(run())


@cli.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default from settings)."),
    port: int = typer.Option(None, help="Port (default from settings)."),
    workers: int = typer.Option(1, help="Uvicorn worker processes."),
) -> None:
    """Serve the API (GraphQL at /graphql, GraphiQL in a browser)."""
    import uvicorn

    settings = Settings()
    bind_host = host or settings.host
    bind_port = port or settings.port
    typer.echo(f"TradeGraph on http://{bind_host}:{bind_port}/graphql (GraphiQL in a browser)")
    if not settings.is_production:
        typer.echo(f"Demo login: {DEMO_EMAIL} / {DEMO_PASSWORD}")
        typer.echo(f"Demo admin: {DEMO_ADMIN_EMAIL} / {DEMO_ADMIN_PASSWORD}")
    uvicorn.run(
        "tradegraph.app:app_from_env",
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=workers,
        access_log=False,
        log_config=None,
        ws_max_size=1_048_576,
    )


@cli.command()
def engine() -> None:
    """Run the sequencer (production: PostgreSQL leader lock, commands over Redis)."""
    import signal

    from tradegraph.exchange.engine_process import run_engine
    from tradegraph.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, json_format=settings.log_json)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_engine(settings, stop)

    with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
        runner.run(main())


def _fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (uvicorn[standard] brings it on Linux
    and macOS), as uvicorn itself picks for the API workers: the engine process writes
    to PostgreSQL and Redis all the time, and the stdlib loop's transports were ~30% of
    its CPU under bulk order entry. None (the stdlib loop) elsewhere."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@cli.command()
def migrate(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply database migrations (SQLite or PostgreSQL)."""
    from tradegraph.db import Database
    from tradegraph.migrate import upgrade

    settings = Settings()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await upgrade(db, revision)
        finally:
            await db.dispose()

    asyncio.run(run())
    typer.echo(f"database at revision {revision}")


@cli.command("seed-demo")
def seed_demo() -> None:
    """Create the demo trader and admin (idempotent)."""
    from tradegraph.services import Services

    async def run(services: Services) -> None:
        from tradegraph.demo import seed

        for line in await seed(
            services, DEMO_EMAIL, DEMO_PASSWORD, DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
        ):
            typer.echo(line)

    _with_services(run)


@cli.command("create-admin")
def create_admin(
    email: str = typer.Option(..., prompt=True, help="Admin e-mail."),
    display_name: str = typer.Option("Administrator", help="Display name."),
    password: str = typer.Option(
        None, help="Password (prompted when omitted; env TRADEGRAPH_ADMIN_PASSWORD also works)."
    ),
) -> None:
    """Create an administrator, or promote an existing account to ADMIN."""
    import os

    from tradegraph.services import Services

    secret = password or os.environ.get("TRADEGRAPH_ADMIN_PASSWORD")
    if not secret:
        secret = getpass.getpass("Password (12+ characters): ")

    async def run(services: Services) -> None:
        user = await services.identity.create_admin(
            email=email, password=secret or "", display_name=display_name
        )
        typer.echo(f"admin ready: {user.email} ({user.id})")

    try:
        _with_services(run)
    except DomainError as error:
        typer.echo(f"error [{error.code}]: {error.message}", err=True)
        raise typer.Exit(1) from None


@cli.command("import-candles")
def import_candles(
    file: Path = typer.Argument(..., help="CSV: time,open,high,low,close,volume[,trades]."),
    symbol: str = typer.Option(..., "--symbol", help="Instrument symbol, e.g. EURUSD."),
    resolution: str = typer.Option(..., "--resolution", help="M1 M5 M15 M30 H1 H4 D1 W1."),
) -> None:
    """Backfill history from a CSV: every row checked, all or nothing.

    Coarser resolutions are rebuilt from the imported bars over their time range.
    """
    import time

    from tradegraph.db import Database
    from tradegraph.exchange import models as em
    from tradegraph.marketdata.csv_import import (
        CsvProblems,
        parse_candles_csv,
        parse_resolution_name,
    )
    from tradegraph.marketdata.store import CandleStore

    settings = Settings()

    async def run() -> str:
        db = Database(settings.resolved_database_url)
        try:
            async with db.session() as session:
                ins = await session.get(em.Instrument, symbol)
            if ins is None:
                raise DomainError(f"unknown instrument {symbol!r}", code="UNKNOWN_INSTRUMENT")
            res = parse_resolution_name(resolution)
            with file.open(newline="", encoding="utf-8-sig") as handle:
                parsed = parse_candles_csv(
                    handle,
                    res,
                    price_decimals=ins.price_decimals,
                    qty_decimals=ins.qty_decimals,
                    tick=ins.tick,
                    now_ms=int(time.time() * 1000),
                )
            counts = await CandleStore(db).import_arrays(symbol, res, parsed.bars)
        finally:
            await db.dispose()
        rebuilt = ", ".join(f"{r.name} {n}" for r, n in counts.items() if r is not res)
        return f"imported {counts[res]} {res.name} bars for {symbol}; rebuilt {rebuilt or 'none'}"

    try:
        typer.echo(asyncio.run(run()))
    except CsvProblems as problems:
        typer.echo(f"{file}: nothing imported, {len(problems.problems)} problem(s):", err=True)
        typer.echo(problems.message, err=True)
        raise typer.Exit(1) from None
    except (DomainError, OSError, UnicodeDecodeError) as error:
        message = error.message if isinstance(error, DomainError) else str(error)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None


@cli.command("export-schema")
def export_schema_cmd() -> None:
    """Print the GraphQL schema (SDL); `make schema` writes it to schema.graphql."""
    from tradegraph.graphql.schema import export_schema

    sys.stdout.write(export_schema())


@cli.command("verify-audit")
def verify_audit() -> None:
    """Check the audit log's hash chain; name the first broken row."""
    from tradegraph.services import Services

    async def run(services: Services) -> bool:
        result = await services.audit.verify()
        if result.ok:
            typer.echo(f"audit chain intact: {result.rows} rows")
        else:
            typer.echo(
                f"audit chain BROKEN at row {result.first_broken_seq}: {result.reason} "
                f"({result.rows} rows verified before it)",
                err=True,
            )
        return result.ok

    if not _with_services(run):
        raise typer.Exit(1)


@cli.command("rotate-keys")
def rotate_keys_cmd(
    batch_size: int = typer.Option(200, min=1, help="Rows re-encrypted per transaction."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would change."),
) -> None:
    """Re-encrypt every vault secret under the primary key of TRADEGRAPH_VAULT_KEYS.

    Idempotent and resumable: safe to stop and run again. Keep the old keys configured
    until it reports nothing left to rotate and no failures.
    """
    from tradegraph.brokers.rotation import RotationReport, rotate_keys
    from tradegraph.services import Services

    async def run(services: Services) -> RotationReport:
        return await rotate_keys(
            services.db, services.keyring, batch_size=batch_size, dry_run=dry_run
        )

    report = _with_services(run)
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        typer.echo("some values could not be decrypted: is an old key missing?", err=True)
        raise typer.Exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

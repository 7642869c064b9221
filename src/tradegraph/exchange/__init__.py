"""exchange."""

from __future__ import annotations

from types import ModuleType

NATIVE_MODULES = ("tradegraph.exchange.book", "tradegraph.exchange.engine")


def _compiled(module: ModuleType) -> bool:
    return not (module.__file__ or "").endswith(".py")


def native_core() -> bool:
    """Whether the exchange core (``book`` + ``engine``) was loaded as mypyc-compiled
    extension modules (``make native``) rather than from its pure-Python sources."""
    from tradegraph.exchange import book, engine

    return _compiled(book) and _compiled(engine)

"""Optional native build of the exchange core; everything else lives in pyproject.toml.

By default this builds nothing: the package is pure Python.  With ``TRADEGRAPH_NATIVE=1``
(``make native``) it compiles ``tradegraph/exchange/book.py`` and ``engine.py`` with mypyc
into extension modules placed next to the sources (``build_ext --inplace``, or inside the
wheel).  Python imports an extension module in preference to the ``.py`` beside it, and
``tradegraph.exchange.native_core()`` says which one was loaded.

Needs mypy (it ships mypyc; a dev dependency) and a C compiler.  If either is missing, or
the compile fails, the build warns and falls back to pure Python unless
``TRADEGRAPH_NATIVE=require``.  PEP 517 builds are isolated from the venv, so a native
``pip install`` needs ``--no-build-isolation`` (with mypy, setuptools>=77 and wheel in the
environment).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE_MODULES = ["src/tradegraph/exchange/book.py", "src/tradegraph/exchange/engine.py"]
MODE = os.environ.get("TRADEGRAPH_NATIVE", "").strip().lower()
REQUIRED = MODE == "require"


def _warn(message: str) -> None:
    if REQUIRED:
        raise SystemExit(f"TRADEGRAPH_NATIVE=require: {message}")
    print(f"WARNING: {message}; the exchange core stays pure Python", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """``build_ext`` that leaves no half-built core behind when the C compile fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # no compiler, missing headers, compile error...
            for ext in self.extensions:  # the shims are useless without the shared library
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            _warn(f"compiling the native exchange core failed ({error})")


def native_extensions() -> list[Extension]:
    if MODE not in ("1", "true", "yes", "require"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed (pip install mypy)")
        return []
    try:
        exts: list[Extension] = mypycify(NATIVE_MODULES, opt_level="3", target_dir="build/mypyc")
        return exts
    except SystemExit as error:  # mypyc reports type errors by exiting
        _warn(f"mypyc rejected the sources ({error})")
        return []


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})

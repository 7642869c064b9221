"""Which exchange core is loaded: the pure-Python sources or the mypyc build (make native).

``TRADEGRAPH_EXPECT_NATIVE=1`` (or ``0``) makes a CI leg fail if the other one loaded, so
the suite is known to have run against the implementation it meant to test.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from tradegraph.exchange import NATIVE_MODULES, native_core


def _files() -> list[Path]:
    return [Path(importlib.import_module(name).__file__ or "") for name in NATIVE_MODULES]


def test_book_and_engine_are_the_same_implementation() -> None:
    kinds = {f.suffix == ".py" for f in _files()}
    assert len(kinds) == 1, f"half-built native core: {_files()}; run make native or clean-native"
    assert native_core() == (kinds == {False})


def test_native_build_is_not_older_than_its_sources() -> None:
    if not native_core():
        pytest.skip("pure-Python core")
    for so in _files():
        py = so.parent / (so.name.split(".", 1)[0] + ".py")
        if py.exists():  # an older extension would silently run code that no longer exists
            assert py.stat().st_mtime <= so.stat().st_mtime + 1, f"{so.name} is stale: make native"


def test_expected_implementation() -> None:
    expected = os.environ.get("TRADEGRAPH_EXPECT_NATIVE")
    if expected is None:
        pytest.skip("TRADEGRAPH_EXPECT_NATIVE is not set")
    assert native_core() == (expected == "1")

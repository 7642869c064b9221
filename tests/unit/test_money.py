"""Exact conversions between Decimal and integer minor units, and fee rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradegraph.errors import DomainError
from tradegraph.money import (
    MAX_UNITS,
    ceil_div,
    fee_for,
    format_minor,
    from_minor,
    mul_div_ceil,
    mul_div_floor,
    rescale,
    to_minor,
)


@pytest.mark.parametrize(
    ("value", "decimals", "units"),
    [
        ("1.25", 2, 125),
        ("1.2500", 2, 125),  # trailing zeros beyond the scale are exact
        (" 1.5 ", 1, 15),
        ("0", 8, 0),
        ("-0", 2, 0),
        ("100", 0, 100),
        ("1e3", 2, 100_000),
        ("0.00000001", 8, 1),
        (Decimal("12.345"), 3, 12_345),
        (7, 4, 70_000),
    ],
)
def test_to_minor_exact(value: str | Decimal | int, decimals: int, units: int) -> None:
    assert to_minor(value, decimals) == units


@pytest.mark.parametrize(("value", "decimals"), [("1.255", 2), ("0.000000001", 8), ("1.1", 0)])
def test_to_minor_rejects_values_that_would_need_rounding(value: str, decimals: int) -> None:
    with pytest.raises(DomainError) as exc:
        to_minor(value, decimals)
    assert exc.value.code == "INVALID_AMOUNT"


def test_to_minor_uses_the_callers_code_and_field() -> None:
    with pytest.raises(DomainError) as exc:
        to_minor("0.123", 2, code="INVALID_PRICE_TICK", field="price")
    assert (exc.value.code, exc.value.field) == ("INVALID_PRICE_TICK", "price")


@pytest.mark.parametrize("value", ["abc", "", "NaN", "Infinity", "-Infinity", "1e999999", "1,5"])
def test_to_minor_rejects_garbage_and_non_finite(value: str) -> None:
    with pytest.raises(DomainError):
        to_minor(value, 2)


def test_to_minor_sign_and_zero_policies() -> None:
    with pytest.raises(DomainError):
        to_minor("-1.5", 1)
    assert to_minor("-1.5", 1, allow_negative=True) == -15
    with pytest.raises(DomainError):
        to_minor("0.00", 2, allow_zero=False)
    assert to_minor("0.01", 2, allow_zero=False) == 1


def test_to_minor_bounds_to_int64() -> None:
    assert to_minor(str(MAX_UNITS), 0) == MAX_UNITS
    with pytest.raises(DomainError):
        to_minor(str(MAX_UNITS + 1), 0)
    with pytest.raises(DomainError):
        to_minor("1" + "0" * 100, 0)


@pytest.mark.parametrize("value", [1.5, True, None, [1]])
def test_to_minor_refuses_floats_and_other_types(value: object) -> None:
    with pytest.raises(TypeError):
        to_minor(value, 2)  # type: ignore[arg-type]


def test_decimals_are_validated() -> None:
    with pytest.raises(ValueError):
        to_minor("1", -1)
    with pytest.raises(ValueError):
        from_minor(1, 37)


def test_from_minor_and_format() -> None:
    assert from_minor(125, 2) == Decimal("1.25")
    assert str(from_minor(125, 2)) == "1.25"
    assert from_minor(-5, 2) == Decimal("-0.05")
    assert format_minor(0, 8) == "0.00000000"
    assert format_minor(-5, 2) == "-0.05"
    assert format_minor(123456789, 8) == "1.23456789"
    assert format_minor(10**30, 2) == "1" + "0" * 28 + ".00"  # no context rounding


@given(units=st.integers(-MAX_UNITS, MAX_UNITS), decimals=st.integers(0, 18))
def test_round_trip_is_exact(units: int, decimals: int) -> None:
    assert to_minor(from_minor(units, decimals), decimals, allow_negative=True) == units
    assert to_minor(format_minor(units, decimals), decimals, allow_negative=True) == units


@given(units=st.integers(1, 10**15), decimals=st.integers(0, 12))
def test_one_more_digit_is_always_rejected(units: int, decimals: int) -> None:
    finer = from_minor(units * 10 + 7, decimals + 1)  # ends in a non-zero extra digit
    with pytest.raises(DomainError):
        to_minor(finer, decimals)


def test_rescale() -> None:
    assert rescale(15, 4, 8) == 150_000
    assert rescale(150_000, 8, 4) == 15
    with pytest.raises(ValueError):
        rescale(150_001, 8, 4)


def test_integer_division_helpers() -> None:
    assert ceil_div(7, 2) == 4
    assert ceil_div(8, 2) == 4
    assert ceil_div(-7, 2) == -3
    assert mul_div_floor(7, 3, 2) == 10
    assert mul_div_ceil(7, 3, 2) == 11


def test_fee_rounds_up_in_favour_of_the_fee_account() -> None:
    assert fee_for(10_000, 10) == 10  # exact
    assert fee_for(10_001, 10) == 11  # 10.001 -> 11
    assert fee_for(1, 1) == 1  # any non-zero fee on a non-zero amount is at least 1
    assert fee_for(0, 10) == 0
    assert fee_for(12_345, 0) == 0
    assert fee_for(99, 10_000) == 99  # 100% never exceeds the amount
    with pytest.raises(ValueError):
        fee_for(-1, 10)
    with pytest.raises(ValueError):
        fee_for(1, 10_001)


@given(a=st.integers(0, 10**18), b=st.integers(0, 10**18), bps=st.integers(0, 10_000))
def test_fee_bounds_and_subadditivity(a: int, b: int, bps: int) -> None:
    fee = fee_for(a, bps)
    assert a * bps <= fee * 10_000 < a * bps + 10_000  # the smallest fee >= the exact one
    assert fee <= a
    # splitting an amount can only cost more in per-piece rounding, never less: this is
    # why the engine rounds fees cumulatively per order (see test_book.py)
    assert fee_for(a + b, bps) <= fee_for(a, bps) + fee_for(b, bps)


@given(st.integers(min_value=-(10**40), max_value=10**40), st.integers(0, 18))
def test_from_minor_is_exact_with_the_scale_as_exponent(units: int, decimals: int) -> None:
    value = from_minor(units, decimals)
    sign, digits, exponent = value.as_tuple()
    assert exponent == -decimals  # "1.50" stays "1.50": the scale is the instrument's
    assert (-1 if sign else 1) * int("".join(map(str, digits))) == units


@given(
    value=st.decimals(allow_nan=False, allow_infinity=False, places=None)
    | st.builds(
        lambda units, exponent: Decimal(units).scaleb(exponent),
        st.integers(-(10**20), 10**20),
        st.integers(-45, 45),
    ),
    decimals=st.integers(0, 36),
    allow_negative=st.booleans(),
    allow_zero=st.booleans(),
)
def test_the_decimal_fast_path_agrees_with_the_general_one(
    value: Decimal, decimals: int, allow_negative: bool, allow_zero: bool
) -> None:
    """A Decimal takes one exact scaleb; the same value as text takes the digit path."""
    flags = {"allow_negative": allow_negative, "allow_zero": allow_zero}

    def outcome(v: Decimal | str) -> int | str:
        try:
            return to_minor(v, decimals, **flags)
        except DomainError as error:
            return error.message

    assert outcome(value) == outcome(str(value))

"""Turning domain errors into GraphQL: ``UserError`` in payloads, codes in extensions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import strawberry

from tradegraph.errors import DomainError


@strawberry.type(description="An expected failure of a mutation, safe to show to the user.")
class UserError:
    code: str = strawberry.field(description="Stable machine-readable code, e.g. RATE_LIMITED.")
    field: str | None = strawberry.field(
        description="The input field the error is about, if any (camelCase)."
    )
    message: str = strawberry.field(description="Human-readable explanation.")

    @classmethod
    def from_domain(cls, error: DomainError) -> UserError:
        return cls(code=error.code, field=error.field, message=error.message)


P = ParamSpec("P")
R = TypeVar("R")


def returns_payload(
    payload: Callable[..., R],
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Wrap a mutation resolver so a ``DomainError`` becomes ``payload(errors=[...])``.

    Resolvers raise; this is the one place that converts, so every payload behaves alike.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except DomainError as error:
                return payload(errors=[UserError.from_domain(error)])

        wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def error_extensions(error: DomainError) -> dict[str, Any]:
    ext: dict[str, Any] = {"code": error.code}
    if error.field:
        ext["field"] = error.field
    return ext

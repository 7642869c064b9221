"""Domain errors: expected failures with a stable machine-readable code.

Services raise these; the GraphQL layer turns them into ``UserError`` entries of a
mutation payload (or a GraphQL error with ``extensions.code`` for queries) in one place.
Anything that is not a ``DomainError`` is unexpected and gets masked.
"""

from __future__ import annotations


class DomainError(Exception):
    """An expected failure the caller can act on (bad input, insufficient funds...)."""

    code: str = "INVALID_INPUT"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, field={self.field!r}, {self.message!r})"


class NotFound(DomainError):
    code = "NOT_FOUND"


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class Forbidden(DomainError):
    code = "FORBIDDEN"


class RateLimited(DomainError):
    code = "RATE_LIMITED"


class Unavailable(DomainError):
    """A dependency (broker, feed, engine) did not answer in time."""

    code = "UNAVAILABLE"

"""Domain errors: raised by services and repositories, mapped to HTTP only at the handler edge."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client may see; `code` and `status` follow API.md."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str = "", fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip().rstrip(".")
        self.fields = fields


class BadRequest(DomainError):
    """The request could not be understood."""

    code, status = "bad_request", 400


class ValidationFailed(DomainError):
    """The request has invalid fields."""

    code, status = "validation_error", 422


class Unauthorized(DomainError):
    """Authentication is required."""

    code, status = "unauthorized", 401


class Forbidden(DomainError):
    """You may not do this."""

    code, status = "forbidden", 403


class NotFound(DomainError):
    """Not found."""

    code, status = "not_found", 404


class Conflict(DomainError):
    """The request conflicts with the current state."""

    code, status = "conflict", 409


class PayloadTooLarge(DomainError):
    """The request body is too large."""

    code, status = "payload_too_large", 413


class UnsupportedMediaType(DomainError):
    """The content type is not supported."""

    code, status = "unsupported_media_type", 415


class RateLimited(DomainError):
    """Too many requests."""

    code, status = "rate_limited", 429

    def __init__(self, retry_after: int, message: str = "") -> None:
        super().__init__(message or "Too many requests, retry later")
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency is unreachable: retry shortly (503 with Retry-After)."""

    code, status = "internal_error", 503
    retry_after = 5


class Overloaded(Unavailable):
    """Too much of one kind of work is waiting on this node: retry shortly (503 with
    Retry-After, at once rather than after a queue's worth of waiting)."""

    retry_after = 1


def validation_error(field: str, message: str) -> ValidationFailed:
    """A 422 for one field, in the API.md shape."""
    return ValidationFailed("Invalid input", fields={field: [message]})

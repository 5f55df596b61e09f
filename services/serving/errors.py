"""Errors a service raises about itself rather than about its input: overload, readiness,
deadlines, an unreachable upstream. Transport-free: the batching scheduler raises them
without knowing about HTTP; ``services.serving.http`` maps them to status codes.
"""

from __future__ import annotations

from services.errors import CodecError


class ServiceError(CodecError):
    """Base of the errors a service raises about itself (not about the input)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(ServiceError):
    """The decode queue is at ``max_queue_size``; retry after a short wait."""


class NotReadyError(ServiceError):
    """Models are still loading or warming up."""


class DrainingError(ServiceError):
    """The service is shutting down and accepts no new work."""


class DeadlineExceededError(ServiceError):
    """A request's deadline passed while it waited in the queue."""


class RequestCancelledError(ServiceError):
    """The client went away before its batch started; nothing is sent back."""


class InvalidRequestError(ServiceError):
    """A request option is out of range (e.g. a candidate count that is not a power of two)."""


class NotAcceptableError(ServiceError):
    """The ``Accept`` header names no output format this service writes."""


class BodyTooLargeError(ServiceError):
    """The request body exceeds the configured limit."""


class UnauthorizedError(ServiceError):
    """A bearer token is configured and the request did not carry it."""


class UpstreamError(ServiceError):
    """Another service (the decoder, for candidate selection) is unreachable or failed."""

    def __init__(self, message: str, *, status: int = 502, retry_after_s: float | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


class RequestTooCostlyError(ServiceError):
    """One request asks for more work than this decoder takes at once (``max_request_cost``); not retryable."""

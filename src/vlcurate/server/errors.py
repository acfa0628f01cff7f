"""Errors the services raise; the app maps each to an HTTP status with a one-line detail."""

from __future__ import annotations


class PlatformError(Exception):
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(PlatformError):
    status = 422


class Unauthorized(PlatformError):
    status = 401


class Forbidden(PlatformError):
    status = 403


class NotFound(PlatformError):
    status = 404


class Conflict(PlatformError):
    status = 409


class TooMany(PlatformError):
    status = 429

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

"""Connecting to providers: HTTP status to typed errors, and reconnect backoff."""

from __future__ import annotations

import random
from collections.abc import Mapping

import aiohttp

from server.providers.base import (
    AuthError,
    ConnectionLostError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
)


def error_for_status(
    provider: str, status: int, body: str, headers: Mapping[str, str]
) -> ProviderError:
    """The typed error for a refused request (``status`` >= 400)."""
    message = f"HTTP {status}: {body[:200]}"
    if status in (401, 403):
        return AuthError(provider, message, status=status)
    if status == 429:
        return RateLimitedError(
            provider, message, status=status, retry_after_s=_retry_after_s(headers)
        )
    error = ProviderError(provider, message, status=status)
    error.retryable = status >= 500 or status == 408
    return error


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_for_exception(provider: str, exc: BaseException) -> ProviderError:
    """The typed error for a failed connection attempt or a broken stream."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return error_for_status(provider, exc.status, exc.message, exc.headers or {})
    if isinstance(exc, aiohttp.ClientResponseError):
        return error_for_status(provider, exc.status, exc.message, exc.headers or {})
    if isinstance(exc, TimeoutError):
        return ProviderTimeoutError(provider, "timed out")
    return ConnectionLostError(provider, f"{type(exc).__name__}: {exc}")


class Backoff:
    """Delays (s) between reconnect attempts: exponential from ``base_s`` to ``max_s``, jittered.

    ``rng`` is injectable so tests can fix the sequence.
    """

    def __init__(
        self,
        base_s: float = 0.1,
        max_s: float = 5.0,
        max_attempts: int = 5,
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or max_s < base_s or max_attempts < 1:
            raise ValueError("backoff needs 0 < base_s <= max_s and max_attempts >= 1")
        self.base_s = base_s
        self.max_s = max_s
        self.max_attempts = max_attempts
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay_s(self, error: ProviderError) -> float | None:
        """How long to wait before the next attempt; ``None`` to give up."""
        if not error.retryable or self.attempt >= self.max_attempts:
            return None
        ceiling = min(self.max_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        delay = self._rng.uniform(ceiling / 2, ceiling)
        if isinstance(error, RateLimitedError) and error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.max_s))
        return delay

    def reset(self) -> None:
        """Call after a connection succeeded."""
        self.attempt = 0

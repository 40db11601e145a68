"""The one exception tree of ringtrader.

::

    RingtraderError
     ├── ConfigError            bad config file / env override (exit code 2)
     ├── FixedPointError        text that is not an exact decimal in range
     ├── DecodeError            a frame the feed cannot decode (counted, skipped)
     ├── VenueError             an exchange answered with an error body
     │    └── RateLimitedError      HTTP 429/418 with Retry-After
     └── WorkerError            a worker failed to start or became unhealthy

    RingError                  misuse of a shared-memory ring    (ringbuffers.errors, re-exported)
     ├── RingMismatchError     attach with a different dtype/version/capacity
     ├── RingNotFoundError     attach to a segment that does not exist
     └── RingExistsError       create over a live segment

The ring errors are defined by the rings (``ringbuffers.errors``: the rings are
a generic transport and import nothing of ours) and re-exported here as the
same class objects, so ``except core.errors.RingError`` catches what a ring
raises. They are a second root: ``except RingtraderError`` does not catch
them (Python matches ``except`` on the real base classes only, and the rings
cannot derive from ours); catch ``(RingtraderError, RingError)`` for "any
error of ours".

Third-party exceptions are translated at the edge with ``raise ... from exc``.
Full rings, lapped consumers and stale diffs are normal outcomes: they are
return values and counters, not exceptions.
"""

from __future__ import annotations

from ringbuffers.errors import RingError, RingExistsError, RingMismatchError, RingNotFoundError

__all__ = [
    "ConfigError", "DecodeError", "FixedPointError", "RateLimitedError", "RingError", "RingExistsError",
    "RingMismatchError", "RingNotFoundError", "RingtraderError", "VenueError", "WorkerError",
]


class RingtraderError(Exception):
    """Base of every error raised by this project."""


class ConfigError(RingtraderError):
    """Invalid configuration; the message names the key path and the problem."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path} {problem}" if path else problem)


class FixedPointError(RingtraderError, ValueError):
    """Text that is not an exact decimal within the fixed-point range."""


class DecodeError(RingtraderError):
    """A frame that cannot be decoded; ``kind`` says which counter it goes to."""

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        super().__init__(f"{kind}: {detail}")


class VenueError(RingtraderError):
    """The exchange answered ``{"code": ..., "msg": ...}`` with an HTTP error status."""

    def __init__(self, status: int, code: int | None, msg: str):
        self.status = status
        self.code = code
        self.msg = msg
        super().__init__(f"HTTP {status} code={code} msg={msg}")


class RateLimitedError(VenueError):
    """HTTP 429 (rate limit) or 418 (IP ban); ``retry_after_s`` from the header."""

    def __init__(self, status: int, code: int | None, msg: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(status, code, msg)


class WorkerError(RingtraderError):
    """A worker process failed to start, stopped answering, or crashed too often."""

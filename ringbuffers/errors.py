"""The rings' exception tree (misuse of a ring; a full ring is not an error).

::

    RingError                  misuse of a shared-memory ring (bad capacity, role, claim/commit order)
     ├── RingMismatchError     attach to a segment with another dtype/layout version/capacity
     ├── RingNotFoundError     attach to a segment that does not exist
     └── RingExistsError       create over an existing segment

The rings are a generic transport and import nothing of the application; the
application's tree (``core.errors``) re-exports these very classes. Full
rings, lapped consumers and futex time-outs are normal outcomes: return values
and counters, not exceptions.
"""

from __future__ import annotations


class RingError(Exception):
    """Misuse of a ring (bad capacity, bad consumer index, claim/commit out of order)."""


class RingMismatchError(RingError):
    """Attach found a segment whose layout differs from what the caller expects."""


class RingNotFoundError(RingError):
    """Attach to a segment that does not exist."""


class RingExistsError(RingError):
    """Create over a segment that exists."""

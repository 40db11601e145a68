"""Shared-memory rings, their atomics and idle strategies, and control-plane queues."""

from ringbuffers.ring import (
    FULL,
    Poll,
    Ring,
    RingStats,
    attach,
    create,
    list_segments,
    remove_stale,
    segment_name,
)

__all__ = ["FULL", "Poll", "Ring", "RingStats", "attach", "create", "list_segments", "remove_stale", "segment_name"]

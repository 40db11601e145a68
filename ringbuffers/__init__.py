"""Shared-memory rings, their atomics and idle strategies, and control-plane queues.

A generic transport: nothing here imports the application (``core``).
The names below load ``ringbuffers.ring`` (numba, the CPU check) on first use,
so ``import ringbuffers.errors`` (which ``core.errors`` re-exports) stays light.
"""

from __future__ import annotations

import importlib

__all__ = ["FULL", "Poll", "Ring", "RingStats", "attach", "create", "list_segments", "remove_stale", "segment_name"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("ringbuffers.ring"), name)
    raise AttributeError(f"module 'ringbuffers' has no attribute {name!r}")

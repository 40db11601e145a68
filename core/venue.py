"""Binance Spot REST facts shared by the feed (client) and the simulator (server)."""

from __future__ import annotations


def depth_weight(limit: int) -> int:
    """REQUEST_WEIGHT of ``GET /api/v3/depth`` for ``limit`` (Binance, since 2023-10-19)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250

"""Fault injection: what one WebSocket connection does wrong, and what REST answers instead.

Every decision draws from a ``random.Random`` seeded by (simulator seed,
connection number), so a failing test replays the same faults. A probability
of 0 never draws, so turning one fault on does not change the others' choices.

WebSocket faults (applied per connection, in this order, to data frames only;
control replies, pings and serverShutdown are never faulted):
- disconnect_probability: before a data frame, abort the TCP connection (no
  close frame: what a network failure looks like);
- gap_probability: drop a depth diff (the client sees ``U > previous u + 1``);
- malformed_probability: send a truncated JSON text frame before the real one
  (the real frame still follows, so nothing is lost but the client must skip it);
- reorder_probability: hold the frame back and send it after the next one;
- duplicate_probability: send the frame twice;
- disconnect_after_messages: after N data frames, close with 1001 "going
  away" (what Binance does at the 24 h mark).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from processes.simulator.config import FaultConfig

# Binance error bodies for injected REST failures, by HTTP status.
REST_FAULT_BODIES = {
    418: (-1003, "Way too much request weight used; IP banned until {until}. "
                 "Please use WebSocket Streams for live updates to avoid bans."),
    429: (-1003, "Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
                 "Please use WebSocket Streams for live updates to avoid bans."),
    500: (-1001, "Internal error; unable to process your request. Please try again."),
    502: (-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown."),
    503: (-1008, "Server is currently overloaded with other requests. Please try again in a few minutes."),
    504: (-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown."),
}  # fmt: skip

ACT_SEND = 0
ACT_ABORT = 1  # drop the TCP connection now
ACT_CLOSE = 2  # send a close frame (1001) after the frames returned


@dataclass
class FaultStats:
    """Counts of injected faults (all connections), for /sim/stats and heartbeats."""

    gaps: int = 0
    duplicates: int = 0
    reorders: int = 0
    malformed: int = 0
    aborts: int = 0
    closes: int = 0
    rest_faults: int = 0
    snapshot_failures: int = 0


class ConnectionFaults:
    """Per-connection fault state: its random stream, data-frame count and a held-back frame."""

    def __init__(self, seed: int, conn_no: int, stats: FaultStats):
        self.rng = random.Random(seed * 1_000_003 + conn_no)
        self.sent = 0
        self.held: bytes | None = None
        self.stats = stats

    def _hit(self, p: float) -> bool:
        return p > 0.0 and self.rng.random() < p

    def apply(self, f: FaultConfig, is_depth: bool, frame: bytes, out: list[bytes]) -> int:
        """Append what to send for one data frame to ``out``; return ACT_*."""
        if self._hit(f.disconnect_probability):
            self.stats.aborts += 1
            return ACT_ABORT
        if is_depth and self._hit(f.gap_probability):
            self.stats.gaps += 1
            return ACT_SEND
        if self._hit(f.malformed_probability):
            self.stats.malformed += 1
            out.append(frame[: max(1, len(frame) // 2)])
        if self.held is None and self._hit(f.reorder_probability):
            self.stats.reorders += 1
            self.held = frame
            return ACT_SEND
        out.append(frame)
        if self.held is not None:
            out.append(self.held)
            self.held = None
            self.sent += 1
        if self._hit(f.duplicate_probability):
            self.stats.duplicates += 1
            out.append(frame)
        self.sent += 1
        if f.disconnect_after_messages and self.sent >= f.disconnect_after_messages:
            self.stats.closes += 1
            return ACT_CLOSE
        return ACT_SEND

    def flush(self, out: list[bytes]) -> None:
        """End of a batch: a held-back frame goes out now rather than waiting for more data."""
        if self.held is not None:
            out.append(self.held)
            self.held = None
            self.sent += 1


def rest_error_body(status: int, *, limit: int = 0, until_ms: int = 0) -> dict:
    code, msg = REST_FAULT_BODIES.get(status, (-1000, "An unknown error occurred while processing the request."))
    return {"code": code, "msg": msg.format(limit=limit, until=until_ms)}

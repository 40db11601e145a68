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
- hostile_probability: send a hostile frame made from the real one
  (``core.hostile``: unknown symbol, far past / far future / backwards
  exchange time, absurd price or qty, wrong types, truncated, oversized,
  non-UTF-8, valid JSON that is no Binance message) before it, its class
  drawn uniformly from ``hostile_classes`` (empty: all of
  ``core.hostile.CLASSES``). The real frame still follows. A non-UTF-8 one
  goes out as a binary frame: RFC 6455 makes a client fail the connection on
  a text frame that is not UTF-8, which would test its WebSocket library, not
  its decoder (Binance clients read binary frames like text ones). Counted
  in ``hostile`` and ``hostile_by_class``;
- reorder_probability: hold the frame back and send it after the next one;
- duplicate_probability: send the frame twice;
- disconnect_after_messages: after N data frames, close with 1001 "going
  away" (what Binance does at the 24 h mark).

REST faults:
- rest_status_sequence: the next /api/ requests (any route) are answered with
  these statuses before they are handled: an order sent then is NOT placed
  (the "5xx, and it did not happen" branch of an unknown outcome).

Order-entry faults (POST /api/v3/order, DELETE /api/v3/order, DELETE
/api/v3/openOrders; the requests that pass authentication take the next
``order_fault_sequence`` entry, one each, in order):
- "ok": answered normally (a placeholder, to fault a later request);
- "drop": the request IS executed, then the TCP connection is closed without
  a response (the client sees a disconnect; ``GET /api/v3/order`` by
  ``origClientOrderId`` shows what happened: the exactly-once building block);
- "hang": executed; the answer is held ``order_hang_s`` (default 15 s, past
  any sane client timeout), then it is a 504 with -1007 (Binance's "Send
  status unknown; execution status unknown") if the client still listens;
- "500" / "502" / "503" / "504": executed, then answered with that status and
  Binance's body for it (-1001 / -1007 / -1008 / -1007): unknown outcome,
  and it DID happen;
- "429" / "418": NOT executed; 429 -1015 "Too many new orders" (on
  POST /api/v3/order, else -1003) / 418 -1003 banned, with Retry-After
  ``retry_after_s``.
- order_ack_delay_ms: every order-entry request is executed on arrival and
  its answer sent this much later (the user data events go out first, as
  they can on Binance).
- clock_skew_ms: the server clock (GET /api/v3/time, exchangeInfo serverTime,
  transactTime and the timestamp/recvWindow check) runs this far ahead of the
  host clock (negative: behind). A client that does not sync gets -1021;
  market-stream times stay on the host clock.

WebSocket API (``/ws-api/v3``, wsapi.py; its docstring says what a client sees):
- order_fault_sequence applies to ``order.place``, ``order.cancel`` and
  ``openOrders.cancelAll`` sent over the WS API too, from the same sequence
  (one entry per request, whichever transport): "drop" executes the request
  and aborts the connection before its response (its user-data events are
  not delivered on that connection either); "hang" holds the response
  ``order_hang_s`` then answers 504 -1007; "5xx" answers that status with
  REST's code; "429"/"418" refuse it (``error.data.retryAfter``), a 418
  also closes the connection; order_ack_delay_ms delays the response (not
  the events); clock_skew_ms moves the WS API's clock too.
- user_event_duplicate_probability: a user-data event frame is sent twice
  in a row (byte-identical).
- user_event_reorder_probability: a user-data event frame is held back and
  sent after the connection's next event frame (or at the end of the burst
  of events it belongs to, possibly after the response that caused it).
  Both draw from a per-connection ``random.Random`` seeded by (seed,
  connection number); probability 1 is deterministic (every event doubled;
  every pair of events swapped).
- rest_status_sequence and the market-stream faults above do not apply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from core.hostile import CLASSES as HOSTILE_CLASSES
from core.hostile import hostile_frame
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


class BinaryFrame(bytes):
    """A payload to send as a binary WebSocket frame (a hostile one that is not UTF-8); any other is text."""


@dataclass
class FaultStats:
    """Counts of injected faults (all connections), for /sim/stats and heartbeats."""

    gaps: int = 0
    duplicates: int = 0
    reorders: int = 0
    malformed: int = 0
    hostile: int = 0
    hostile_by_class: dict = field(default_factory=dict)  # class name -> frames inserted
    aborts: int = 0
    closes: int = 0
    rest_faults: int = 0
    snapshot_failures: int = 0
    order_faults: int = 0  # order_fault_sequence entries applied (other than "ok")


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
        if self._hit(f.hostile_probability):
            out.append(self.hostile(f, frame))
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

    def hostile(self, f: FaultConfig, frame: bytes) -> bytes:
        """A hostile frame made from ``frame`` (class drawn from ``f.hostile_classes``), counted."""
        cls, payload = hostile_frame(self.rng, frame, self.rng.choice(f.hostile_classes or HOSTILE_CLASSES))
        self.stats.hostile += 1
        self.stats.hostile_by_class[cls] = self.stats.hostile_by_class.get(cls, 0) + 1
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return BinaryFrame(payload)
        return payload

    def flush(self, out: list[bytes]) -> None:
        """End of a batch: a held-back frame goes out now rather than waiting for more data."""
        if self.held is not None:
            out.append(self.held)
            self.held = None
            self.sent += 1


def order_fault_body(kind: str, *, is_new_order: bool, until_ms: int = 0, limit_10s: int = 0) -> tuple[int, dict]:
    """(HTTP status, Binance body) of an order-entry fault answer ("hang" answers like a 504)."""
    status = 504 if kind == "hang" else int(kind)
    if status == 429 and is_new_order:
        return 429, {"code": -1015, "msg": f"Too many new orders; current limit is {limit_10s} orders per 10 SECOND."}
    return status, rest_error_body(status, limit=0, until_ms=until_ms)


def rest_error_body(status: int, *, limit: int = 0, until_ms: int = 0) -> dict:
    code, msg = REST_FAULT_BODIES.get(status, (-1000, "An unknown error occurred while processing the request."))
    return {"code": code, "msg": msg.format(limit=limit, until=until_ms)}

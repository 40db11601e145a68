"""The execution stage's venue client: Binance Spot order entry over the WebSocket API (picows) and REST (httpx).

Four parts, one concept each:

* ``RateLimiter``: our own pacing against Binance's ``ORDERS`` and
  ``REQUEST_WEIGHT`` limits, corrected by what every response reports.
* ``ClockSync``: the venue clock (``timestamp`` of signed requests).
* ``RestClient``: signed REST calls on one keep-alive ``httpx.AsyncClient``.
* ``WsApiClient``: one persistent WebSocket API session (``/ws-api/v3``):
  many requests in flight, the user data stream on the same socket,
  reconnects.

Both clients have the same method set (``_VenueApi``): ``place_order``,
``cancel_order``, ``cancel_all``, ``query_order``, ``open_orders``,
``all_orders``, ``my_trades``, ``account``, ``server_time``, ``ping``
(REST adds ``exchange_info``). Params are Binance's names and text: decimals
as the exact strings to send (``"0.00100000"``), ``None`` params are left
out. Results are the decoded JSON ``result`` / body, as Binance sends it.

Errors (the tree of ``core/errors.py``, plus two classes defined here until
they move there)::

    RingtraderError
     ├── VenueError               the venue answered and said no (4xx with {"code","msg"})
     │    └── RateLimitedError        429 / 418 (retry_after_s); status 0 = our limiter refused
     └── VenueTransportError      no usable answer: not connected, timeout, connection lost, 5xx
          └── UnknownOutcomeError     the same for ORDER ENTRY (place / cancel / cancelAll):
                                      the request may or may not have executed; query it

``UnknownOutcomeError`` is deliberately **not** a ``VenueError``: ``except
VenueError`` means "the venue refused", and an order whose outcome is unknown
must never be handled as refused (DESIGN: a timeout or 5xx is resolved by
querying the client order id before any retry). It carries ``method``,
``client_order_id`` (for a place: the ``newClientOrderId``, generated here
when the caller sent none; for a cancel: ``origClientOrderId`` or the
``orderId`` as text), ``reason`` (``timeout`` | ``disconnected`` | ``bad_body`` |
``server_error`` | ``unknown_code``) and the ``status`` / ``code`` / ``msg``
of a 5xx answer (``None`` without one). A ``VenueTransportError`` with
``sent=False`` was never written to the socket: retrying it is safe.

Outcome mapping (both transports): 200 -> the result. 429 / 418 ->
``RateLimitedError`` (the limiter pauses / halts, see below). 5xx, or the
codes -1006 UNEXPECTED_RESP / -1007 TIMEOUT in any status, a timeout, or the
connection lost before the answer -> ``UnknownOutcomeError`` for order entry,
``VenueTransportError`` otherwise. Other 4xx -> ``VenueError``; a -1021
INVALID_TIMESTAMP first resyncs the clock (awaited), so the caller can retry
once at once: the order was rejected before the engine, the retry is safe.
A connect failure, a closed socket before the send or a pool timeout ->
``VenueTransportError(sent=False)``.

RateLimiter
-----------
Seeded from exchangeInfo ``rateLimits`` (a ``core.filters.VenueInfo`` or the
raw list) and learning limits from every WS ``rateLimits`` entry; a
configured cap ``rate_limit_per_second`` (default 10) on top, as a sliding
one-second window of our own sends. Windows are calendar-aligned on the
venue clock (a 10 s window restarts at :00, :10 ...; a day at 00:00 UTC), as
Binance counts them. Near a boundary our clock and the venue's can disagree
by the sync error, so a send within ``guard_ms`` of a boundary counts in
both windows (conservative) and a full window reopens ``guard_ms`` after its
end. ``await acquire_order()`` waits (FIFO) until a new order fits every
ORDERS window, the weight window and the per-second cap, so our own pacing
never earns a 429 (while answers are in flight a waiter looks again at each
one, since a filled order gives its count back); a wait longer than
``max_wait_s`` raises ``RateLimitedError(status=0)`` instead (a day limit
used up). The truth is
the venue's: each response's count (``X-MBX-ORDER-COUNT-10S/1D``,
``X-MBX-USED-WEIGHT-1M`` headers; WS ``rateLimits[].count``) replaces ours
for the current window, plus what we have in flight that it cannot have
counted yet (orders that fill give their count back on Binance, and other
processes share the IP's weight: both show up there). ``on_429(retry_after)``
pauses new orders (-1015) or every request (-1003) until then;
``on_418(retry_after)`` halts every request until the ban ends and sets
``halted`` (the caller turns it into an alert; ``on_halt`` is called at
once). RAW_REQUESTS (300,000 per 5 min) is not paced.

ClockSync
---------
NTP-style: N samples of ``server_time()``, offset = server - (t0 + t1) / 2
(the server's ms is floored, so +0.5 ms), keeping the sample with the
smallest round trip; refreshed every ``refresh_s``; ``now_ms()`` = host
wall clock + offset (venue ms for ``timestamp``). ``resync()`` coalesces
concurrent callers into one sync.

WsApiClient lifecycle
---------------------
::

    start() ──► connect ──► time x N (first time) ──► session.logon (Ed25519)
                  ▲         ──► userDataStream.subscribe (logon) | .subscribe.signature (HMAC)
                  │         ──► ready: requests flow, events go to on_event(event)
                  │
    drop ─────────┤ in-flight requests fail (order entry: UnknownOutcomeError)
    (on_disconnect)│ backoff sleep(uniform(0, min(cap, base * 2**attempt))) ("full jitter"),
                  │ attempt reset after healthy_after_s; then connect, subscribe, on_reconnect()
                  │
    serverShutdown / max_connection_age_s / eventStreamTerminated we did not ask for:
        make before break: a new session is opened, logged on and subscribed,
        becomes the active one (on_reconnect()), then the old one finishes its
        in-flight requests (up to retire_drain_s) and is closed.

* Auth: an Ed25519 signer logs the session on (``session.logon``, signed);
  later requests carry ``timestamp``/``recvWindow`` and no signature. An
  HMAC signer cannot log on (Binance: Ed25519 only): every signed request
  carries ``apiKey`` + ``signature`` over ``core.signing.ws_payload``.
* Request ids: an int counter; each request has its own future and timer
  (``order_timeout_s`` for order entry, ``request_timeout_s`` otherwise).
  An answer after its timer (a "hang") is counted as ``late_responses``.
* Pings: picows answers the server's pings itself (``enable_auto_pong``:
  a pong echoing the payload, sent from the frame callback, as Binance
  requires); we also ping after ``idle_ping_s`` without traffic and drop a
  connection whose pong is ``pong_timeout_s`` late (a dead TCP path).
* Events: ``on_event(event)`` gets the inner ``event`` object of each
  ``{"subscriptionId", "event"}`` frame, synchronously from the socket
  callback (keep it short). They can arrive twice: around a make-before-break
  switch both sessions are subscribed, and Binance itself may repeat or
  reorder; de-duplicate by (``i`` orderId, ``I`` execution id) as the
  reference advises. After ``on_reconnect()`` reconcile: ``open_orders``,
  ``query_order`` for each request that failed with UnknownOutcomeError,
  ``my_trades`` from the last trade id seen.
* Callbacks (``on_event``, ``on_disconnect(reason)``, ``on_reconnect()``)
  catch, count and log; they never raise into the loop. A callback that
  returns an awaitable is run as a task.

Secrets: the API key and the signer never reach a log line or ``repr``;
logs name the method and the client order id.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from core.errors import RateLimitedError, RingtraderError, VenueError
from core.signing import Signer, rest_payload, rest_query, ws_payload

log = logging.getLogger("ringtrader.venue")

__all__ = [
    "ClockSync", "RateLimiter", "RestClient", "UnknownOutcomeError", "VenueTransportError", "WsApiClient",
    "ORDER_ENTRY", "REST_ROUTES",
]  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Wire facts (binance-spot-api.md §4-§7, binance-ws-api.md §1-§4)
# ---------------------------------------------------------------------------------------------
ORDER_ENTRY = frozenset({"order.place", "order.cancel", "openOrders.cancelAll"})  # outcome can be unknown
UNKNOWN_OUTCOME_CODES = frozenset({-1006, -1007})  # UNEXPECTED_RESP, TIMEOUT: "execution status unknown"
INVALID_TIMESTAMP = -1021
TOO_MANY_ORDERS = -1015
CONNECT_WEIGHT = 2  # a WS API connection costs 2 REQUEST_WEIGHT
# REST route of each operation (the WS API's method names)
REST_ROUTES = {
    "order.place": ("POST", "/api/v3/order"),
    "order.cancel": ("DELETE", "/api/v3/order"),
    "openOrders.cancelAll": ("DELETE", "/api/v3/openOrders"),
    "order.status": ("GET", "/api/v3/order"),
    "openOrders.status": ("GET", "/api/v3/openOrders"),
    "allOrders": ("GET", "/api/v3/allOrders"),
    "myTrades": ("GET", "/api/v3/myTrades"),
    "account.status": ("GET", "/api/v3/account"),
    "time": ("GET", "/api/v3/time"),
    "ping": ("GET", "/api/v3/ping"),
    "exchangeInfo": ("GET", "/api/v3/exchangeInfo"),
}
INTERVAL_MS = {"SECOND": 1_000, "MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000}
HEADER_UNIT_MS = {"S": 1_000, "M": 60_000, "H": 3_600_000, "D": 86_400_000}
_HEADER_RE = re.compile(r"^x-mbx-(used-weight|order-count)-(\d+)([smhd])$")
RL_ORDERS = "ORDERS"
RL_WEIGHT = "REQUEST_WEIGHT"
MIN_RETRY_AFTER_S = 0.5  # a 429/418 with "Retry-After: 0" must still not be answered by a burst
DEFAULT_RETRY_AFTER_S = {429: 1.0, 418: 120.0}  # when the answer says nothing (Binance: bans start at 2 min)


# ---------------------------------------------------------------------------------------------
# Errors (to move to core/errors.py)
# ---------------------------------------------------------------------------------------------
class VenueTransportError(RingtraderError):
    """No usable answer: not connected, connect failure, timeout, connection lost, or a 5xx on a read.

    ``sent``: False when the request never left (retrying is safe), True
    when it may have reached the venue. ``status``/``code``/``msg``: the 5xx
    answer's, ``None`` without one.
    """

    def __init__(self, method: str, reason: str, detail: str, *, sent: bool, status: int | None = None,
                 code: int | None = None, msg: str = ""):  # fmt: skip
        self.method = method
        self.reason = reason
        self.sent = sent
        self.status = status
        self.code = code
        self.msg = msg
        super().__init__(f"{method}: {reason}: {detail}")


class UnknownOutcomeError(VenueTransportError):
    """Order entry without a definite answer: the order (or cancel) may or may not exist; query it.

    ``client_order_id``: what to query (``query_order(symbol,
    orig_client_order_id=...)``); for a cancel by ``orderId`` it is that id
    as text. Never a ``VenueError``: see the module docstring.
    """

    def __init__(self, method: str, reason: str, detail: str, *, client_order_id: str | None,
                 symbol: str | None = None, status: int | None = None, code: int | None = None,
                 msg: str = ""):  # fmt: skip
        self.client_order_id = client_order_id
        self.symbol = symbol
        super().__init__(method, reason, f"{detail}; the outcome is unknown: query {symbol} "
                                         f"{client_order_id!r}", sent=True, status=status, code=code, msg=msg)


def _no_answer(method: str, reason: str, detail: str, params: Mapping[str, Any], *, sent: bool = True,
               status: int | None = None, code: int | None = None, msg: str = "") -> VenueTransportError:  # fmt: skip
    """The error for a request without a definite answer: unknown outcome for order entry that may have gone out."""
    if sent and method in ORDER_ENTRY:
        cid = params.get("newClientOrderId") if method == "order.place" else params.get("origClientOrderId")
        if cid is None and params.get("orderId") is not None:
            cid = str(params["orderId"])
        return UnknownOutcomeError(method, reason, detail, client_order_id=cid, symbol=params.get("symbol"),
                                   status=status, code=code, msg=msg)  # fmt: skip
    return VenueTransportError(method, reason, detail, sent=sent, status=status, code=code, msg=msg)


def new_client_order_id() -> str:
    """22 characters of ``[a-z0-9]`` (Binance's FIX rule ``^[a-zA-Z0-9-_]{1,36}$`` holds)."""
    return "rt" + os.urandom(10).hex()


# ---------------------------------------------------------------------------------------------
# Rate limiter
# ---------------------------------------------------------------------------------------------
class _Window:
    """One calendar-aligned limit: ``limit`` units per ``ms``; ``counts`` per window index (ours, conservative)."""

    __slots__ = ("kind", "ms", "limit", "counts")

    def __init__(self, kind: str, ms: int, limit: int | None):
        self.kind = kind
        self.ms = ms
        self.limit = limit
        self.counts: dict[int, int] = {}

    def add(self, idx: int, n: int) -> None:
        self.counts[idx] = self.counts.get(idx, 0) + n
        if len(self.counts) > 4:
            for k in [k for k in self.counts if k < idx - 1]:
                del self.counts[k]


@dataclass(slots=True, eq=False)
class Ticket:
    """What one acquire took: units per window (by key) and the window indices they were counted in."""

    orders: int
    weight: int
    idxs: dict  # (kind, ms) -> tuple of window indices


@dataclass
class LimiterStats:
    orders: int = 0  # order slots granted
    requests: int = 0  # weight-only acquires granted
    waits: int = 0  # acquires that had to wait
    wait_s: float = 0.0  # total time waited
    refusals: int = 0  # acquires refused (ban, or a wait past max_wait_s)
    updates: int = 0  # counts taken from a response
    rate_limited_429: int = 0
    banned_418: int = 0


class RateLimiter:
    """Pacing against the venue's ORDERS / REQUEST_WEIGHT limits (see the module docstring).

    One per account and IP, shared by the REST and WS clients of a process.
    ``clock_ms``: the venue clock in ms (``ClockSync.now_ms``; default the
    host wall clock). ``monotonic``/``sleep`` are injectable for tests.
    """

    def __init__(self, limits: Any = None, *, rate_limit_per_second: int = 10, order_share: float = 1.0,
                 weight_share: float = 0.9, guard_ms: int = 100, max_wait_s: float = 15.0,
                 clock_ms: Callable[[], int] | None = None, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 on_halt: Callable[[float], Any] | None = None):  # fmt: skip
        if rate_limit_per_second < 0:
            raise ValueError(f"rate_limit_per_second must be >= 0 (0 = no cap), got {rate_limit_per_second}")
        for name, share in (("order_share", order_share), ("weight_share", weight_share)):
            if not 0.0 < share <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {share}")
        self.per_second = rate_limit_per_second
        self.order_share = order_share
        self.weight_share = weight_share
        self.guard_ms = guard_ms
        self.max_wait_s = max_wait_s
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._mono = monotonic
        self._sleep = sleep
        self.on_halt = on_halt
        self.windows: dict[tuple[str, int], _Window] = {}
        self._recent: collections.deque[float] = collections.deque()  # monotonic send times (per-second cap)
        self._inflight: set[Ticket] = set()
        self._order_lock = asyncio.Lock()
        self._changed = asyncio.Event()  # a count was updated from an answer: waiters look again
        self._orders_paused_until = 0.0  # monotonic s (429 -1015)
        self._all_paused_until = 0.0  # monotonic s (429 -1003)
        self._banned_until = 0.0  # monotonic s (418)
        self.stats = LimiterStats()
        if limits is not None:
            self.seed(limits)

    # -- limits ---------------------------------------------------------------------------------
    def seed(self, limits: Any) -> None:
        """Set limits from a ``VenueInfo`` (its ``rate_limits``), ``RateLimit`` objects or exchangeInfo's raw list."""
        items = getattr(limits, "rate_limits", limits)
        for rl in items:
            if isinstance(rl, Mapping):
                kind, interval, num, limit = (rl.get("rateLimitType"), rl.get("interval"), rl.get("intervalNum"),
                                              rl.get("limit"))  # fmt: skip
                ms = INTERVAL_MS.get(interval) * num if interval in INTERVAL_MS and isinstance(num, int) else None
            else:
                kind, ms, limit = rl.rate_limit_type, rl.window_ms, rl.limit
            if kind in (RL_ORDERS, RL_WEIGHT) and ms and isinstance(limit, int) and limit > 0:
                self._window(kind, ms).limit = limit

    def _window(self, kind: str, ms: int) -> _Window:
        w = self.windows.get((kind, ms))
        if w is None:
            w = self.windows[(kind, ms)] = _Window(kind, ms, None)
        return w

    def limit(self, kind: str, ms: int) -> int | None:
        w = self.windows.get((kind, ms))
        return None if w is None else w.limit

    def used(self, kind: str, ms: int) -> int:
        """Our count for the window that holds the venue clock now."""
        w = self.windows.get((kind, ms))
        return 0 if w is None else w.counts.get(self.clock_ms() // ms, 0)

    # -- state ----------------------------------------------------------------------------------
    @property
    def halted(self) -> bool:
        """True while a 418 ban lasts: nothing is sent. The caller raises an alert."""
        return self._mono() < self._banned_until

    @property
    def halted_for_s(self) -> float:
        return max(0.0, self._banned_until - self._mono())

    def on_429(self, retry_after_s: float, *, orders_only: bool = False) -> None:
        """A 429: no new order (``orders_only``: -1015) or no request at all (-1003) before ``retry_after_s``."""
        until = self._mono() + max(retry_after_s, MIN_RETRY_AFTER_S)
        self.stats.rate_limited_429 += 1
        if orders_only:
            self._orders_paused_until = max(self._orders_paused_until, until)
        else:
            self._all_paused_until = max(self._all_paused_until, until)

    def on_418(self, retry_after_s: float) -> None:
        """A 418 (IP banned): every request is refused until the ban ends; ``on_halt(retry_after_s)`` is called."""
        retry_after_s = max(retry_after_s, MIN_RETRY_AFTER_S)
        self._banned_until = max(self._banned_until, self._mono() + retry_after_s)
        self.stats.banned_418 += 1
        log.error("venue: IP banned (418) for %.1fs: every request is refused until then", retry_after_s)
        if self.on_halt is not None:
            try:
                self.on_halt(retry_after_s)
            except Exception:  # a caller's alert must not break the client
                log.exception("venue: on_halt callback failed")

    # -- acquire --------------------------------------------------------------------------------
    async def acquire_order(self, weight: int = 1) -> Ticket:
        """Wait until one new order (and ``weight``) fits; FIFO among order senders. Release the ticket after."""
        async with self._order_lock:
            return await self._acquire(1, weight)

    async def acquire(self, weight: int) -> Ticket:
        """Wait until a request of ``weight`` fits the weight window (not the order windows)."""
        return await self._acquire(0, weight)

    def release(self, ticket: Ticket | None) -> None:
        """The request's answer is in (or it failed): it no longer counts as in flight."""
        if ticket is not None:
            self._inflight.discard(ticket)

    async def _acquire(self, orders: int, weight: int) -> Ticket:
        start = self._mono()
        waited = False
        while True:
            wait, why, by_window = self._wait_s(orders, weight)
            if wait <= 0.0:
                break
            if self._mono() - start + wait > self.max_wait_s:
                self.stats.refusals += 1
                raise RateLimitedError(0, None, f"local rate limiter: {why}; next slot in {wait:.1f}s "
                                                f"(max_wait_s {self.max_wait_s:g})", wait)  # fmt: skip
            if not waited:
                waited = True
                self.stats.waits += 1
                log.debug("venue limiter: waiting up to %.3fs (%s)", wait, why)
            if by_window and self._inflight:
                # answers in flight can lower the count before the window ends (an order that fills gives
                # its unit back): look again at each answer rather than sleeping to the end of the window
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._sleep(wait)
        if waited:
            self.stats.wait_s += self._mono() - start
        return self._take(orders, weight)

    def _wait_s(self, orders: int, weight: int) -> tuple[float, str, bool]:
        """(seconds to wait before this request fits, why, whether a full window is the reason); raises
        RateLimitedError(418) while banned."""
        mono = self._mono()
        if mono < self._banned_until:
            self.stats.refusals += 1
            raise RateLimitedError(418, None, "IP banned (418): no request until the ban ends",
                                   self._banned_until - mono)  # fmt: skip
        wait, why, by_window = 0.0, "", False
        if mono < self._all_paused_until:
            wait, why = self._all_paused_until - mono, "paused after a 429"
        if orders:
            if mono < self._orders_paused_until and self._orders_paused_until - mono > wait:
                wait, why = self._orders_paused_until - mono, "orders paused after a 429"
            if self.per_second:
                recent = self._recent
                while recent and mono - recent[0] >= 1.0:
                    recent.popleft()
                if len(recent) >= self.per_second and recent[0] + 1.0 - mono > wait:
                    wait, why = recent[0] + 1.0 - mono, f"rate_limit_per_second {self.per_second}"
        now = self.clock_ms()
        g = self.guard_ms
        for w in self.windows.values():
            n = orders if w.kind == RL_ORDERS else weight
            if n <= 0 or w.limit is None:
                continue
            share = self.order_share if w.kind == RL_ORDERS else self.weight_share
            cap = max(1, int(w.limit * share))
            for idx in {(now - g) // w.ms, (now + g) // w.ms}:
                used = w.counts.get(idx, 0)
                if used + n > cap and used > 0:
                    w_s = ((idx + 1) * w.ms + g - now) / 1000.0
                    if w_s > wait:
                        wait, why, by_window = w_s, f"{w.kind} {used}/{w.limit} per {w.ms // 1000}s", True
        return wait, why, by_window

    def _take(self, orders: int, weight: int) -> Ticket:
        now = self.clock_ms()
        g = self.guard_ms
        idxs = {}
        for key, w in self.windows.items():
            n = orders if w.kind == RL_ORDERS else weight
            if n <= 0:
                continue
            both = tuple(sorted({(now - g) // w.ms, (now + g) // w.ms}))
            for idx in both:
                w.add(idx, n)
            idxs[key] = both
        if orders:
            self._recent.append(self._mono())
            self.stats.orders += 1
        else:
            self.stats.requests += 1
        t = Ticket(orders, weight, idxs)
        self._inflight.add(t)
        return t

    # -- the venue's truth ------------------------------------------------------------------------
    def observe(self, kind: str, ms: int, count: int, limit: int | None = None, ticket: Ticket | None = None) -> None:
        """The venue says ``count`` units of (kind, ms) are used now (after the request of ``ticket``)."""
        w = self._window(kind, ms)
        if limit is not None and limit > 0:
            w.limit = limit
        now = self.clock_ms()
        lo, hi = (now - self.guard_ms) // ms, (now + self.guard_ms) // ms
        if lo != hi:
            return  # near a boundary: which window this count belongs to is not certain
        if ticket is not None:
            sent = ticket.idxs.get((kind, ms))
            if sent is not None and sent != (lo,):
                return  # sent in another window (or near its boundary): the count is not this window's
        unit = (lambda t: t.orders) if kind == RL_ORDERS else (lambda t: t.weight)
        others = sum(unit(t) for t in self._inflight if t is not ticket and lo in t.idxs.get((kind, ms), ()))
        w.counts[lo] = count + others
        self.stats.updates += 1
        self._changed.set()

    def observe_headers(self, headers: Mapping[str, str], ticket: Ticket | None = None) -> None:
        """``X-MBX-USED-WEIGHT-<n><unit>`` and ``X-MBX-ORDER-COUNT-<n><unit>`` of a REST answer."""
        for name, value in headers.items():
            m = _HEADER_RE.match(name.lower())
            if m is None or not value.isdigit():
                continue
            kind = RL_WEIGHT if m.group(1) == "used-weight" else RL_ORDERS
            self.observe(kind, int(m.group(2)) * HEADER_UNIT_MS[m.group(3).upper()], int(value), None, ticket)

    def observe_rate_limits(self, entries: Any, ticket: Ticket | None = None) -> None:
        """A WS API ``rateLimits`` array: ``{rateLimitType, interval, intervalNum, limit, count}`` each."""
        if not isinstance(entries, list):
            return
        for e in entries:
            if not isinstance(e, dict):
                continue
            kind, interval, num, count = e.get("rateLimitType"), e.get("interval"), e.get("intervalNum"), e.get("count")
            if kind not in (RL_ORDERS, RL_WEIGHT) or interval not in INTERVAL_MS or not isinstance(num, int):
                continue
            if isinstance(count, int):
                limit = e.get("limit")
                self.observe(kind, INTERVAL_MS[interval] * num, count, limit if isinstance(limit, int) else None,
                             ticket)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------------------------
class ClockSync:
    """The venue clock: host wall clock + an NTP-style offset from ``server_time`` samples.

    ``fetch``: ``async () -> server ms`` (a client's ``server_time``).
    ``clock_ns``: the host wall clock (``time.time_ns``; injectable).
    """

    def __init__(self, fetch: Callable[[], Awaitable[int]] | None = None, *, samples: int = 5,
                 refresh_s: float = 60.0, clock_ns: Callable[[], int] = time.time_ns,
                 fast_above_ms: float | None = None, fast_refresh_s: float = 2.0):  # fmt: skip
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.fetch = fetch
        self.samples = samples
        self.refresh_s = refresh_s
        # While |offset| >= fast_above_ms the refresh comes every fast_refresh_s: an offset that large stops
        # trading (risk's clock_offset check), and a venue clock that steps back must be seen in seconds,
        # not at the next minute's refresh. None: always refresh_s.
        self.fast_above_ms = fast_above_ms
        self.fast_refresh_s = fast_refresh_s
        self._synced_at = time.monotonic()  # of the last sync (CLOCK_MONOTONIC s): the refresh counts from it
        self._clock_ns = clock_ns
        self.offset_ms = 0.0  # venue - host, ms
        self.rtt_ms: float | None = None  # round trip of the sample kept
        self.synced = False
        self.syncs = 0
        self.failures = 0
        self._sync_task: asyncio.Task | None = None
        self._refresh_task: asyncio.Task | None = None

    def now_ms(self) -> int:
        """Venue time now, ms since the epoch (for ``timestamp``)."""
        return int(self._clock_ns() / 1e6 + self.offset_ms)

    async def sync(self, fetch: Callable[[], Awaitable[int]] | None = None) -> float:
        """Take ``samples`` samples, keep the one with the smallest round trip; returns the offset (ms)."""
        fetch = fetch or self.fetch
        if fetch is None:
            raise ValueError("ClockSync has no fetch function")
        best: tuple[float, float] | None = None
        last_exc: BaseException | None = None
        for _ in range(self.samples):
            t0 = self._clock_ns()
            try:
                server = await fetch()
            except (RingtraderError, OSError) as exc:
                last_exc = exc
                continue
            t1 = self._clock_ns()
            rtt = (t1 - t0) / 1e6
            offset = server + 0.5 - (t0 + t1) / 2e6  # serverTime is floored to the ms: its middle is +0.5
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        if best is None:
            self.failures += 1
            assert last_exc is not None
            raise last_exc
        self.rtt_ms, self.offset_ms = best
        self._synced_at = time.monotonic()
        self.synced = True
        self.syncs += 1
        log.debug("venue clock: offset %+.1f ms (rtt %.2f ms)", self.offset_ms, self.rtt_ms)
        return self.offset_ms

    async def resync(self) -> float:
        """Sync now; concurrent callers share one sync."""
        task = self._sync_task
        if task is None or task.done():
            task = self._sync_task = asyncio.get_running_loop().create_task(self.sync())
        return await asyncio.shield(task)

    def start(self) -> None:
        """Refresh every ``refresh_s`` (``next_refresh_s``) in the background (failures are logged and counted)."""
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        for t in (self._refresh_task, self._sync_task):
            if t is not None and not t.done():
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down: its failure was logged
                    pass
        self._refresh_task = self._sync_task = None

    def next_refresh_s(self) -> float:
        """Seconds between background refreshes now: ``refresh_s``, or ``fast_refresh_s`` while the offset is
        at least ``fast_above_ms``."""
        fast = self.fast_above_ms is not None and self.synced and abs(self.offset_ms) >= self.fast_above_ms
        return min(self.fast_refresh_s, self.refresh_s) if fast else self.refresh_s

    async def _refresh_loop(self) -> None:
        """Refresh ``next_refresh_s()`` after the last sync, whoever made it. The period is read again after
        every nap (at most ``fast_refresh_s`` long when fast refreshes are on): a -1021 resync that finds a
        large offset in the middle of a minute's wait shortens the wait at once."""
        while True:
            wait = self._synced_at + self.next_refresh_s() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, self.fast_refresh_s) if self.fast_above_ms is not None else wait)
                continue
            self._synced_at = time.monotonic()  # a failed refresh waits a whole period too
            try:
                await self.resync()
            except (RingtraderError, OSError) as exc:
                log.warning("venue clock: refresh failed (%s: %s); keeping offset %+.1f ms", type(exc).__name__,
                            exc, self.offset_ms)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The method set, shared by both transports
# ---------------------------------------------------------------------------------------------
def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


@dataclass
class ClientStats:
    requests: int = 0
    ok: int = 0
    rejected: int = 0  # VenueError answers (4xx)
    rate_limited: int = 0  # 429 / 418 answers
    unknown_outcomes: int = 0  # UnknownOutcomeError raised
    transport_errors: int = 0  # other VenueTransportError raised
    timeouts: int = 0
    timestamp_resyncs: int = 0  # -1021 answers (each resynced the clock)
    late_responses: int = 0  # WS: an answer after its request timed out (or for an unknown id)
    connects: int = 0  # WS: sessions made ready (the first one included)
    connect_failures: int = 0
    disconnects: int = 0  # WS: the active session dropped
    rotations: int = 0  # WS: make-before-break switches (serverShutdown, age, stream terminated)
    server_shutdowns: int = 0
    events: int = 0  # WS: user-data events delivered
    callback_errors: int = 0  # a caller's callback raised (logged)
    bad_frames: int = 0  # WS: frames that are not JSON objects we understand

    def as_dict(self) -> dict:
        return dict(vars(self))


class _VenueApi:
    """Binance's order and account operations over ``_call`` (one transport each)."""

    clock: ClockSync
    limiter: RateLimiter
    stats: ClientStats
    #: ``on_sent(client_order_id, monotonic_ns)``: an order.place request's bytes were written to the socket
    #: (WS: the frame handed to the transport; REST: httpcore's "send request headers started" trace event)
    on_sent: Callable[[str, int], Any] | None = None

    async def _call(self, method: str, params: dict[str, Any], *, signed: bool, weight: int) -> Any:
        raise NotImplementedError

    # -- order entry ----------------------------------------------------------------------------
    async def place_order(self, **params: Any) -> dict:
        """``order.place`` / ``POST /api/v3/order`` with Binance's params (``symbol``, ``side``, ``type``,
        ``timeInForce``, ``quantity``, ``price``, ``newClientOrderId``, ...). A ``newClientOrderId`` is
        generated when absent (an unknown outcome must be queryable)."""
        p = _clean(params)
        p.setdefault("newClientOrderId", new_client_order_id())
        return await self._call("order.place", p, signed=True, weight=1)

    async def cancel_order(self, symbol: str, *, order_id: int | None = None, orig_client_order_id: str | None = None,
                           new_client_order_id: str | None = None, **extra: Any) -> dict:  # fmt: skip
        """``order.cancel``: by ``order_id`` (fastest) or ``orig_client_order_id``."""
        if order_id is None and orig_client_order_id is None:
            raise ValueError("cancel_order needs order_id or orig_client_order_id")
        p = _clean({"symbol": symbol, "orderId": order_id, "origClientOrderId": orig_client_order_id,
                    "newClientOrderId": new_client_order_id, **extra})  # fmt: skip
        return await self._call("order.cancel", p, signed=True, weight=1)

    async def cancel_all(self, symbol: str) -> list:
        """``openOrders.cancelAll`` / ``DELETE /api/v3/openOrders``: every open order of ``symbol``."""
        return await self._call("openOrders.cancelAll", {"symbol": symbol}, signed=True, weight=1)

    # -- queries --------------------------------------------------------------------------------
    async def query_order(self, symbol: str, *, orig_client_order_id: str | None = None,
                          order_id: int | None = None) -> dict:  # fmt: skip
        """``order.status`` (weight 4): -2013 (a ``VenueError``) when the venue does not know it."""
        if order_id is None and orig_client_order_id is None:
            raise ValueError("query_order needs orig_client_order_id or order_id")
        p = _clean({"symbol": symbol, "orderId": order_id, "origClientOrderId": orig_client_order_id})
        return await self._call("order.status", p, signed=True, weight=4)

    async def open_orders(self, symbol: str | None = None) -> list:
        """``openOrders.status`` (weight 6 with a symbol, 80 without)."""
        return await self._call("openOrders.status", _clean({"symbol": symbol}), signed=True,
                                weight=6 if symbol else 80)  # fmt: skip

    async def all_orders(self, symbol: str, **extra: Any) -> list:
        """``allOrders`` (weight 20); ``orderId``, ``startTime``, ``endTime``, ``limit`` as Binance spells them."""
        return await self._call("allOrders", _clean({"symbol": symbol, **extra}), signed=True, weight=20)

    async def my_trades(self, symbol: str, from_id: int | None = None, **extra: Any) -> list:
        """``myTrades`` (weight 20, 5 with ``orderId``): trades of ``symbol`` from trade id ``from_id`` on."""
        p = _clean({"symbol": symbol, "fromId": from_id, **extra})
        return await self._call("myTrades", p, signed=True, weight=5 if "orderId" in p else 20)

    async def account(self, *, omit_zero_balances: bool | None = None) -> dict:
        """``account.status`` / ``GET /api/v3/account`` (weight 20): balances, commission rates, permissions."""
        return await self._call("account.status", _clean({"omitZeroBalances": omit_zero_balances}), signed=True,
                                weight=20)  # fmt: skip

    async def server_time(self) -> int:
        """The venue's clock, ms (``time``; weight 1)."""
        res = await self._call("time", {}, signed=False, weight=1)
        return int(res["serverTime"])

    async def ping(self) -> None:
        await self._call("ping", {}, signed=False, weight=1)

    # -- answers -------------------------------------------------------------------------------
    async def _refused(self, method: str, params: Mapping[str, Any], status: int, code: int | None, msg: str,
                       retry_after_s: float | None) -> RingtraderError:  # fmt: skip
        """The exception for a non-200 answer (after telling the limiter / resyncing the clock)."""
        st = self.stats
        if status in (429, 418):
            st.rate_limited += 1
            ra = retry_after_s if retry_after_s is not None else DEFAULT_RETRY_AFTER_S[status]
            ra = max(ra, MIN_RETRY_AFTER_S)
            if status == 418:
                self.limiter.on_418(ra)
            else:
                self.limiter.on_429(ra, orders_only=code == TOO_MANY_ORDERS)
            log.warning("venue: %s answered %d (code %s): %s; retry after %.1fs", method, status, code, msg, ra)
            return RateLimitedError(status, code, msg, ra)
        if status >= 500 or code in UNKNOWN_OUTCOME_CODES:
            exc = _no_answer(method, "server_error" if status >= 500 else "unknown_code", f"HTTP {status} code={code}"
                             f" msg={msg}", params, status=status, code=code, msg=msg)  # fmt: skip
            self._count(exc)
            log.warning("venue: %s", exc)
            return exc
        st.rejected += 1
        if code == INVALID_TIMESTAMP:
            st.timestamp_resyncs += 1
            try:
                offset = await self.clock.resync()
                log.warning("venue: %s got -1021 (%s); clock resynced, offset now %+.1f ms", method, msg, offset)
            except (RingtraderError, OSError) as exc:
                log.error("venue: clock resync after -1021 failed: %s: %s", type(exc).__name__, exc)
        return VenueError(status, code, msg)

    def _count(self, exc: VenueTransportError) -> None:
        if isinstance(exc, UnknownOutcomeError):
            self.stats.unknown_outcomes += 1
        else:
            self.stats.transport_errors += 1
        if exc.reason == "timeout":
            self.stats.timeouts += 1


# ---------------------------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------------------------
def _retry_after_header(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    try:
        return float(value)
    except ValueError:
        return None


class RestClient(_VenueApi):
    """Signed REST calls on one keep-alive ``httpx.AsyncClient`` (``base_url`` like ``https://api.binance.com``).

    Every param travels in the query string (body empty): the signed payload
    is the percent-encoded query (``core.signing.rest_query``), the API key
    the ``X-MBX-APIKEY`` header. ``clock``: a shared ``ClockSync`` (default:
    one of its own on ``server_time``, synced by ``start`` and refreshed in
    the background); ``limiter``: a shared ``RateLimiter`` (default: one of
    its own on that clock). ``timeout_s`` bounds every call, ``order_timeout_s``
    (default ``timeout_s``) the order-entry ones. Use ``async with`` or
    ``start()`` / ``aclose()``.
    """

    def __init__(self, base_url: str, api_key: str, signer: Signer, *, recv_window_ms: int = 5000,
                 timeout_s: float = 10.0, order_timeout_s: float | None = None, clock: ClockSync | None = None,
                 limiter: RateLimiter | None = None, http: httpx.AsyncClient | None = None,
                 max_connections: int = 8):  # fmt: skip
        if not 0 < recv_window_ms <= 60_000:
            raise ValueError(f"recv_window_ms must be in (0, 60000], got {recv_window_ms}")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._signer = signer
        self.recv_window_ms = recv_window_ms
        self.timeout_s = timeout_s
        self.order_timeout_s = order_timeout_s or timeout_s
        self._own_clock = clock is None
        self.clock = clock or ClockSync(self.server_time)
        self.limiter = limiter or RateLimiter(clock_ms=self.clock.now_ms)
        self._http = http
        self._own_http = http is None
        self._max_connections = max_connections
        self.stats = ClientStats()

    def __repr__(self) -> str:
        return f"RestClient({self.base_url!r}, key_type={self._signer.key_type!r})"

    async def start(self) -> None:
        """Open the HTTP client; with its own clock, sync it and keep it refreshed."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.base_url, timeout=self.timeout_s,
                limits=httpx.Limits(max_connections=self._max_connections,
                                    max_keepalive_connections=self._max_connections),
            )  # fmt: skip
        if self._own_clock:
            await self.clock.sync()
            self.clock.start()

    async def aclose(self) -> None:
        if self._own_clock:
            await self.clock.stop()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> "RestClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def exchange_info(self, symbols: Iterable[str] | None = None) -> dict:
        """``GET /api/v3/exchangeInfo`` (weight 20); its ``rateLimits`` seed the limiter."""
        params = {} if symbols is None else {"symbols": orjson.dumps(list(symbols)).decode()}
        body = await self._call("exchangeInfo", params, signed=False, weight=20)
        if isinstance(body, dict) and isinstance(body.get("rateLimits"), list):
            self.limiter.seed(body["rateLimits"])
        return body

    async def _call(self, method: str, params: dict[str, Any], *, signed: bool, weight: int) -> Any:
        http = self._http
        if http is None:
            raise RuntimeError("RestClient is not started (use 'async with' or await start())")
        if signed and not self.clock.synced:
            await self.clock.resync()
        verb, path = REST_ROUTES[method]
        ticket = await (self.limiter.acquire_order(weight) if method == "order.place" else self.limiter.acquire(weight))
        self.stats.requests += 1
        try:
            items = list(params.items())
            if signed:
                items += [("recvWindow", self.recv_window_ms), ("timestamp", self.clock.now_ms())]
                query = rest_query(items, self._signer)
                headers = {"X-MBX-APIKEY": self._api_key}
            else:
                query = rest_payload(items)
                headers = None
            url = f"{path}?{query}" if query else path
            timeout = self.order_timeout_s if method in ORDER_ENTRY else self.timeout_s
            ext = None
            if self.on_sent is not None and method == "order.place":
                cid = str(params.get("newClientOrderId", ""))
                hook = self.on_sent

                async def trace(event: str, info: dict) -> None:
                    # the write of the request (line + headers; an order's body is empty, its query is the URL)
                    # starts now, with no loop yield before it; ".complete" comes after anyio's checkpoint,
                    # often after the venue's answer was already handled
                    if event.endswith("send_request_headers.started"):
                        hook(cid, time.monotonic_ns())

                ext = {"trace": trace}
            try:
                resp = await http.request(verb, url, headers=headers, timeout=timeout, extensions=ext)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                err = _no_answer(method, "not_sent", f"{type(exc).__name__}: {exc}", params, sent=False)
                self._count(err)
                raise err from exc
            except httpx.TimeoutException as exc:
                err = _no_answer(method, "timeout", f"no answer within {timeout:g}s ({type(exc).__name__})", params)
                self._count(err)
                log.warning("venue: %s", err)
                raise err from exc
            except httpx.TransportError as exc:  # RemoteProtocolError, ReadError, WriteError: dropped mid-request
                err = _no_answer(method, "disconnected", f"connection lost before the answer ({type(exc).__name__}:"
                                 f" {exc})", params)  # fmt: skip
                self._count(err)
                log.warning("venue: %s", err)
                raise err from exc
            self.limiter.observe_headers(resp.headers, ticket)
            status = resp.status_code
            if status == 200:
                try:
                    body = orjson.loads(resp.content)
                except orjson.JSONDecodeError as exc:
                    err = _no_answer(method, "bad_body", f"HTTP 200 with a body that is not JSON: "
                                                         f"{resp.content[:80]!r}", params)  # fmt: skip
                    self._count(err)
                    raise err from exc
                self.stats.ok += 1
                return body
            code, msg = None, resp.text[:200]
            try:
                doc = orjson.loads(resp.content)
                if isinstance(doc, dict):
                    code = doc.get("code") if isinstance(doc.get("code"), int) else None
                    msg = str(doc.get("msg", msg))
            except orjson.JSONDecodeError:
                pass
            raise await self._refused(method, params, status, code, msg, _retry_after_header(resp))
        finally:
            self.limiter.release(ticket)


# ---------------------------------------------------------------------------------------------
# WebSocket API
# ---------------------------------------------------------------------------------------------
class _ConnectionLost(Exception):
    """Internal: set on a request's future when its connection drops."""


class _TimedOut(Exception):
    """Internal: set on a request's future when its timer fires."""


class _Conn:
    """One WS API connection: its transport, requests in flight, session state."""

    __slots__ = ("no", "transport", "pending", "logged_on", "subscription_id", "closed", "connected_at", "retired",
                 "disconnected", "partial")  # fmt: skip

    def __init__(self, no: int):
        self.no = no
        self.transport: WSTransport | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.logged_on = False
        self.subscription_id: int | None = None
        self.closed = False
        self.connected_at = time.monotonic()
        self.retired = False  # replaced by a newer session; finishing its in-flight requests
        self.disconnected = asyncio.Event()
        self.partial = bytearray()

    def close(self, graceful: bool = True) -> None:
        t = self.transport
        if t is not None and not self.closed:
            try:
                if graceful:
                    t.send_close()
                t.disconnect(graceful)
            except Exception as exc:  # noqa: BLE001 - a transport already gone: nothing left to close
                log.debug("venue ws: close of connection %d: %r", self.no, exc)


class _Listener(WSListener):
    """picows callbacks. They catch, count and log; they never raise into the loop."""

    def __init__(self, client: "WsApiClient", conn: _Conn):
        self.client = client
        self.conn = conn

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.conn.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            mt = frame.msg_type
            if mt == WSMsgType.TEXT or mt == WSMsgType.CONTINUATION:
                conn = self.conn
                if not frame.fin or conn.partial:  # fragmented message (Binance does not fragment): assemble
                    conn.partial += frame.get_payload_as_memoryview()
                    if not frame.fin:
                        return
                    payload: Any = bytes(conn.partial)
                    conn.partial.clear()
                else:
                    payload = frame.get_payload_as_memoryview()  # valid during this callback; parsed at once
                self.client._on_text(self.conn, payload)
            elif mt == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif mt == WSMsgType.BINARY:
                self.client.stats.bad_frames += 1
        except Exception:  # a bug must not kill the connection; it is logged and counted
            self.client.stats.bad_frames += 1
            log.exception("venue ws: error handling a frame")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        try:
            self.client._on_disconnected(self.conn)
        except Exception:
            log.exception("venue ws: error handling a disconnect")


class WsApiClient(_VenueApi):
    """One persistent Binance WebSocket API session with the user data stream; see the module docstring.

    ``url``: the WS API endpoint, e.g. ``wss://ws-api.binance.com:443/ws-api/v3``.
    ``on_event(event)``: user-data events (the inner ``event`` object); when
    given (or ``subscribe_user_data=True``) the session subscribes.
    ``healthy_after_s``: a session that lived this long was healthy, and the next drop reconnects from the
    initial delay (5 s, as the feed's: with 30 s a session cut every few seconds climbed to the cap).
    ``on_disconnect(reason)``: the active session dropped (requests in flight
    have failed). ``on_reconnect()``: a new session is ready and subscribed
    after a drop or a switch: reconcile. ``rng`` draws the backoff jitter.
    """

    def __init__(self, url: str, api_key: str, signer: Signer, *, on_event: Callable[[dict], Any] | None = None,
                 on_disconnect: Callable[[str], Any] | None = None, on_reconnect: Callable[[], Any] | None = None,
                 subscribe_user_data: bool | None = None, clock: ClockSync | None = None,
                 limiter: RateLimiter | None = None, recv_window_ms: int = 5000, request_timeout_s: float = 10.0,
                 order_timeout_s: float | None = None, ready_wait_s: float = 2.0, connect_timeout_s: float = 10.0,
                 reconnect_base_s: float = 0.25, reconnect_cap_s: float = 10.0, healthy_after_s: float = 5.0,
                 max_connection_age_s: float = 23.5 * 3600, idle_ping_s: float = 30.0, pong_timeout_s: float = 10.0,
                 retire_drain_s: float | None = None, rng: random.Random | None = None):  # fmt: skip
        if not 0 < recv_window_ms <= 60_000:
            raise ValueError(f"recv_window_ms must be in (0, 60000], got {recv_window_ms}")
        self.url = url
        self._api_key = api_key
        self._signer = signer
        self.on_event = on_event
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self.subscribe_user_data = on_event is not None if subscribe_user_data is None else subscribe_user_data
        self._own_clock = clock is None
        self.clock = clock or ClockSync(self._clock_sample)
        self.limiter = limiter or RateLimiter(clock_ms=self.clock.now_ms)
        self.recv_window_ms = recv_window_ms
        self.request_timeout_s = request_timeout_s
        self.order_timeout_s = order_timeout_s or request_timeout_s
        self.ready_wait_s = ready_wait_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_cap_s = reconnect_cap_s
        self.healthy_after_s = healthy_after_s
        self.max_connection_age_s = max_connection_age_s
        self.idle_ping_s = idle_ping_s
        self.pong_timeout_s = pong_timeout_s
        self.retire_drain_s = request_timeout_s if retire_drain_s is None else retire_drain_s
        self.rng = rng or random.Random()
        self.stats = ClientStats()
        self._active: _Conn | None = None
        self._conns: set[_Conn] = set()  # every open connection (active, retiring, being set up)
        self._conn_no = 0
        self._next_id = 1
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()  # the run loop: the active session ended, a switch is wanted, or close
        self._rotate_wanted = False
        self._closing = False
        self._run_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"WsApiClient({self.url!r}, key_type={self._signer.key_type!r}, connected={self.connected})"

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._active is not None

    @property
    def logged_on(self) -> bool:
        return self._active is not None and self._active.logged_on

    async def start(self) -> None:
        """Open the first session (connect, clock, logon, subscribe) and keep one up. Raises if the first fails."""
        self._loop = asyncio.get_running_loop()
        conn = await self._open()
        self._activate(conn, reconnect=False)
        self._run_task = self._loop.create_task(self._run(), name="venue-ws-api")
        if self._own_clock:
            self.clock.start()

    async def close(self) -> None:
        """Close every session; requests in flight fail (order entry: UnknownOutcomeError)."""
        self._closing = True
        self._wake.set()
        if self._own_clock:
            await self.clock.stop()
        if self._run_task is not None:
            self._run_task.cancel()
            try:
                await self._run_task
            except asyncio.CancelledError:
                pass
            self._run_task = None
        for t in list(self._tasks):
            t.cancel()
        conns = list(self._conns)
        for c in conns:
            c.close()
        for c in conns:
            try:
                await asyncio.wait_for(c.disconnected.wait(), 2.0)
            except asyncio.TimeoutError:
                c.close(graceful=False)

    async def __aenter__(self) -> "WsApiClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def reconnect_soon(self) -> None:
        """Switch to a fresh session (make before break), e.g. on an operator's request."""
        self._rotate_wanted = True
        self._wake.set()

    def backoff_delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff for reconnect ``attempt`` (0-based), seconds."""
        return self.rng.uniform(0.0, min(self.reconnect_cap_s, self.reconnect_base_s * (2 ** min(attempt, 30))))

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            conn = self._active
            if conn is None:
                try:
                    conn = await self._open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any setup failure (refused, auth, ban) retries later
                    delay = self.backoff_delay(attempt)
                    attempt += 1
                    log.warning("venue ws: reconnect failed (%s: %s); next try in %.2fs", type(exc).__name__, exc,
                                delay)  # fmt: skip
                    await self._sleep_unless_closing(delay)
                    continue
                self._activate(conn, reconnect=True)
            self._wake.clear()
            age_left = conn.connected_at + self.max_connection_age_s - time.monotonic()
            if not conn.closed and not self._rotate_wanted and age_left > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), age_left)
                except asyncio.TimeoutError:
                    log.info("venue ws: session reached max age %.0fs; switching", self.max_connection_age_s)
                    self._rotate_wanted = True
            if self._closing:
                return
            if conn.closed:
                if time.monotonic() - conn.connected_at >= self.healthy_after_s:
                    attempt = 0
                if self._rotate_wanted:  # announced (serverShutdown) and gone before the switch: at once
                    self._rotate_wanted = False
                    continue
                delay = self.backoff_delay(attempt)
                attempt += 1
                log.warning("venue ws: disconnected; reconnect in %.2fs (attempt %d)", delay, attempt)
                await self._sleep_unless_closing(delay)
                continue
            if self._rotate_wanted:
                self._rotate_wanted = False
                await self._switch(conn)

    async def _switch(self, old: _Conn) -> None:
        """Make before break: a new ready session becomes the active one, then the old one drains and closes."""
        self.stats.rotations += 1
        try:
            new = await self._open()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the old session (if alive) stays; the run loop handles a drop
            log.warning("venue ws: could not open a replacement session (%s: %s)", type(exc).__name__, exc)
            if not old.closed:
                await self._sleep_unless_closing(self.backoff_delay(1))
                self._rotate_wanted = True
            return
        if self._closing:
            new.close()
            return
        old.retired = True
        if self._active is old or self._active is None:
            self._activate(new, reconnect=True)
        self._spawn(self._retire(old))

    async def _retire(self, conn: _Conn) -> None:
        deadline = time.monotonic() + self.retire_drain_s
        while conn.pending and not conn.closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        conn.close()

    async def _sleep_unless_closing(self, delay: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    def _activate(self, conn: _Conn, *, reconnect: bool) -> None:
        conn.connected_at = time.monotonic()
        self._active = conn
        self._ready.set()
        self.stats.connects += 1
        log.info("venue ws: session %d ready (%s%s)", conn.no, "logged on" if conn.logged_on else "signed requests",
                 f", user data subscription {conn.subscription_id}" if conn.subscription_id is not None else "")
        if reconnect:
            self._callback(self.on_reconnect)

    async def _open(self) -> _Conn:
        """Connect, sync the clock (first time), log on (Ed25519), subscribe; the connection is not yet active."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._conn_no += 1
        conn = _Conn(self._conn_no)
        ticket = await self.limiter.acquire(CONNECT_WEIGHT)
        self.limiter.release(ticket)
        try:
            await ws_connect(lambda: _Listener(self, conn), self.url,
                             websocket_handshake_timeout=self.connect_timeout_s,
                             enable_auto_pong=True, enable_auto_ping=self.idle_ping_s > 0,
                             auto_ping_idle_timeout=self.idle_ping_s or 30.0,
                             auto_ping_reply_timeout=self.pong_timeout_s)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - DNS, refused, TLS, HTTP 4xx/5xx on the upgrade: not connected
            self.stats.connect_failures += 1
            raise VenueTransportError("connect", "not_sent", f"{self.url}: {type(exc).__name__}: {exc}",
                                      sent=False) from exc  # fmt: skip
        self._conns.add(conn)
        try:
            if not self.clock.synced:
                await self.clock.sync(fetch=lambda: self._server_time_on(conn))
            if self._signer.supports_logon:
                await self._setup_request(conn, "session.logon", signed=True)
                conn.logged_on = True
            if self.subscribe_user_data:
                if conn.logged_on:
                    res = await self._setup_request(conn, "userDataStream.subscribe", signed=False)
                else:
                    res = await self._setup_request(conn, "userDataStream.subscribe.signature", signed=True)
                conn.subscription_id = res.get("subscriptionId") if isinstance(res, dict) else None
        except BaseException:
            self.stats.connect_failures += 1
            conn.retired = True
            conn.close()
            raise
        return conn

    async def _clock_sample(self) -> int:
        """``time`` on the active session, or on one being set up (a -1021 during logon resyncs through it)."""
        conn = self._active
        if conn is None:
            conn = next((c for c in self._conns if not c.closed and not c.retired and c.transport is not None), None)
        if conn is None:
            return await self.server_time()  # waits for a session (ready_wait_s)
        return await self._server_time_on(conn)

    async def _server_time_on(self, conn: _Conn) -> int:
        ticket = await self.limiter.acquire(1)
        try:
            res = await self._request(conn, "time", {}, signed=False, ticket=ticket)
        finally:
            self.limiter.release(ticket)
        return int(res["serverTime"])

    async def _setup_request(self, conn: _Conn, method: str, *, signed: bool) -> Any:
        """A session request during setup; a -1021 (clock) is retried once after the resync."""
        for attempt in (0, 1):
            ticket = await self.limiter.acquire(2)
            try:
                return await self._request(conn, method, {}, signed=signed, sign=signed, ticket=ticket)
            except VenueError as exc:
                if exc.code != INVALID_TIMESTAMP or attempt:
                    raise
            finally:
                self.limiter.release(ticket)
        raise AssertionError("unreachable")

    async def resubscribe(self, conn: _Conn) -> None:
        """Subscribe the user data stream again on ``conn`` (after an eventStreamTerminated we did not ask for)."""
        try:
            method = "userDataStream.subscribe" if conn.logged_on else "userDataStream.subscribe.signature"
            res = await self._setup_request(conn, method, signed=not conn.logged_on)
            conn.subscription_id = res.get("subscriptionId") if isinstance(res, dict) else None
        except Exception as exc:  # noqa: BLE001 - a session without its stream is replaced
            log.warning("venue ws: re-subscription failed (%s: %s); switching sessions", type(exc).__name__, exc)
            self.reconnect_soon()
            return
        log.warning("venue ws: user data stream re-subscribed (subscription %s): reconcile", conn.subscription_id)
        self._callback(self.on_reconnect)

    # -- requests -------------------------------------------------------------------------------
    async def _call(self, method: str, params: dict[str, Any], *, signed: bool, weight: int) -> Any:
        if self._active is None:
            await self._wait_ready(method, params)
        ticket = await (self.limiter.acquire_order(weight) if method == "order.place" else self.limiter.acquire(weight))
        try:
            conn = self._active
            if conn is None:
                conn = await self._wait_ready(method, params)
            self.stats.requests += 1
            return await self._request(conn, method, params, signed=signed, ticket=ticket)
        finally:
            self.limiter.release(ticket)

    async def _wait_ready(self, method: str, params: Mapping[str, Any]) -> _Conn:
        if self._loop is None:
            raise RuntimeError("WsApiClient is not started (use 'async with' or await start())")
        try:
            await asyncio.wait_for(self._ready.wait(), self.ready_wait_s)
        except asyncio.TimeoutError:
            pass
        conn = self._active
        if conn is None:
            err = _no_answer(method, "not_connected", f"no WS API session within {self.ready_wait_s:g}s; the "
                                                      f"request was not sent", params, sent=False)  # fmt: skip
            self._count(err)
            raise err
        return conn

    async def _request(self, conn: _Conn, method: str, params: Mapping[str, Any], *, signed: bool,
                       sign: bool = False, ticket: Ticket | None = None) -> Any:  # fmt: skip
        """Send one request on ``conn`` and map its answer (signed: timestamp, and a signature unless logged on)."""
        p = dict(params)
        if signed:
            p["recvWindow"] = self.recv_window_ms
            p["timestamp"] = self.clock.now_ms()
            if sign or not conn.logged_on:
                p["apiKey"] = self._api_key
                p["signature"] = self._signer.sign(ws_payload(p))
        rid = self._next_id
        self._next_id += 1
        frame = orjson.dumps({"id": rid, "method": method, "params": p} if p else {"id": rid, "method": method})
        transport = conn.transport
        if conn.closed or transport is None:
            err = _no_answer(method, "not_sent", "the session closed before the send", params, sent=False)
            self._count(err)
            raise err
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.create_future()
        conn.pending[rid] = fut
        try:
            transport.send(WSMsgType.TEXT, frame)
        except Exception as exc:  # noqa: BLE001 - the transport refuses (closing): it did not go out
            conn.pending.pop(rid, None)
            err = _no_answer(method, "not_sent", f"send failed: {exc!r}", params, sent=False)
            self._count(err)
            raise err from exc
        if self.on_sent is not None and method == "order.place":
            self.on_sent(str(p.get("newClientOrderId", "")), time.monotonic_ns())
        timeout = self.order_timeout_s if method in ORDER_ENTRY else self.request_timeout_s
        timer = loop.call_later(timeout, _expire, fut)
        try:
            msg = await fut
        except _ConnectionLost:
            err = _no_answer(method, "disconnected", "the connection dropped before the answer", params)
            self._count(err)
            log.warning("venue ws: %s", err)
            raise err from None
        except _TimedOut:
            err = _no_answer(method, "timeout", f"no answer within {timeout:g}s", params)
            self._count(err)
            log.warning("venue ws: %s", err)
            raise err from None
        finally:
            timer.cancel()
            conn.pending.pop(rid, None)
        self.limiter.observe_rate_limits(msg.get("rateLimits"), ticket)
        status = msg.get("status")
        if status == 200:
            self.stats.ok += 1
            return msg.get("result")
        err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
        code = err.get("code") if isinstance(err.get("code"), int) else None
        retry_after = None
        data = err.get("data")
        if isinstance(data, dict) and isinstance(data.get("retryAfter"), int):
            now = data.get("serverTime") if isinstance(data.get("serverTime"), int) else self.clock.now_ms()
            retry_after = (data["retryAfter"] - now) / 1000.0
        raise await self._refused(method, params, int(status) if isinstance(status, int) else 500, code,
                                  str(err.get("msg", "")), retry_after)  # fmt: skip

    # -- from the socket callbacks -------------------------------------------------------------
    def _on_text(self, conn: _Conn, payload: Any) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._bad_frame(conn, "not JSON")
            return
        if not isinstance(msg, dict):
            self._bad_frame(conn, "not a JSON object")
            return
        if "status" in msg and "id" in msg:
            rid = msg["id"]
            fut = conn.pending.pop(rid, None) if rid is not None else None
            if fut is None:
                if rid is None:  # server-initiated (e.g. 401 -2015: the logged-on key was revoked)
                    self._bad_frame(conn, f"server-initiated error {msg.get('status')} {msg.get('error')}")
                    if msg.get("status") == 401 and conn is self._active:
                        self.reconnect_soon()
                else:  # its counts are not used: the window they were counted in is not known any more
                    self.stats.late_responses += 1
                    log.info("venue ws: late answer to request %s (status %s): it had timed out", rid,
                             msg.get("status"))  # fmt: skip
                return
            if not fut.done():
                fut.set_result(msg)
            return
        ev = msg.get("event")
        if not isinstance(ev, dict):
            self._bad_frame(conn, "neither a response nor an event")
            return
        if "subscriptionId" in msg:
            if ev.get("e") == "eventStreamTerminated" and not conn.retired and not self._closing:
                if conn is self._active:
                    log.warning("venue ws: user data stream terminated by the server; re-subscribing")
                    conn.subscription_id = None
                    self._spawn(self.resubscribe(conn))
                return
            self.stats.events += 1
            cb = self.on_event
            if cb is not None:
                try:
                    res = cb(ev)
                    if res is not None and inspect.isawaitable(res):
                        self._spawn(res)
                except Exception:  # the caller's bug must not kill the session
                    self.stats.callback_errors += 1
                    log.exception("venue ws: on_event failed for a %s event", ev.get("e"))
            return
        if ev.get("e") == "serverShutdown":
            self.stats.server_shutdowns += 1
            log.warning("venue ws: serverShutdown on session %d; switching to a new session now", conn.no)
            if conn is self._active:
                self.reconnect_soon()
            return
        self._bad_frame(conn, f"unknown event {ev.get('e')!r}")

    def _bad_frame(self, conn: _Conn, what: str) -> None:
        self.stats.bad_frames += 1
        if self.stats.bad_frames <= 10 or self.stats.bad_frames % 1000 == 0:
            log.warning("venue ws: session %d: unexpected frame (%s); %d so far", conn.no, what,
                        self.stats.bad_frames)  # fmt: skip

    def _on_disconnected(self, conn: _Conn) -> None:
        conn.closed = True
        conn.disconnected.set()
        self._conns.discard(conn)
        pending, conn.pending = conn.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(_ConnectionLost())
        if conn is self._active:
            self._active = None
            self._ready.clear()
            self.stats.disconnects += 1
            reason = "closed by us" if self._closing else "connection lost"
            if not self._closing:
                log.warning("venue ws: session %d dropped (%d requests in flight failed)", conn.no, len(pending))
                self._callback(self.on_disconnect, reason)
            self._wake.set()

    # -- helpers --------------------------------------------------------------------------------
    def _callback(self, cb: Callable[..., Any] | None, *args: Any) -> None:
        if cb is None:
            return
        try:
            res = cb(*args)
            if inspect.isawaitable(res):
                self._spawn(res)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("venue ws: callback %s failed", getattr(cb, "__name__", cb))

    def _spawn(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.callback_errors += 1
            log.error("venue ws: background task failed", exc_info=task.exception())


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(_TimedOut())

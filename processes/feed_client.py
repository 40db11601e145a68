"""The market-data connection: picows WebSocket client + httpx REST snapshots.

One ``FeedClient`` owns every market-data network I/O of the system (the
book worker never touches the network): a combined-stream WebSocket for the
configured symbols, REST depth snapshots on request, reconnects, and optional
raw-frame recording. It hands decoded ``MD_EVENT`` records to a ``publish``
callback (the feed worker publishes them into the ``md`` ring).

Connection lifecycle::

    connect ──► publish STATUS_RECONNECTED for every symbol (books go INVALID)
       │        wait for the first diff of each symbol, then fetch its snapshot
       ▼
    frames ──► decode (fast path) ──► publish  (every frame may be recorded)
       │
    disconnect / serverShutdown / max age ──► backoff (full jitter) ──► connect

Backoff: ``sleep(uniform(0, min(cap, base * 2**attempt)))`` ("full jitter"),
``attempt`` reset once a connection stayed healthy for ``healthy_after_s`` (5 s);
a ``serverShutdown`` or a planned age-out reconnects at once.

REST: the used weight is read from ``X-MBX-USED-WEIGHT-1M``; a call that
would take the used weight of the current minute past ``rest_weight_share``
of ``rest_weight_limit_1m`` waits for the next minute; a 429 or 418 blocks
every REST call until ``Retry-After`` has passed (Binance bans IPs that keep
calling during a 429); 5xx and transport errors retry with backoff.

Publishing: ``publish(records)`` receives status and snapshot records (and,
without a ``frame_sink``, every decoded frame). A ``frame_sink`` (the feed
worker's ring publisher) takes the hot path instead: ``publish_frame(decoder,
payload, recv_ns) -> records published`` decodes and publishes in one numba
call, and ``recent(n)`` returns the last ``n`` published records (read only
while some symbol still awaits its first diff after a connect).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from core.decode import CONTROL_ERROR, CONTROL_SHUTDOWN, Decoder
from core.venue import depth_weight  # noqa: F401 - re-exported for callers of this module
from core.records import (
    FLAG_BEGIN,
    FLAG_END,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_EVENT,
    MD_STATUS,
    STATUS_RECONNECTED,
    STATUS_SNAPSHOT_FAILED,
)

log = logging.getLogger("ringtrader.feed")

MIN_RETRY_AFTER_S = 0.5  # a 429/418 with "Retry-After: 0" must still not be answered by a burst of retries
SNAPSHOT_ATTEMPTS = 4  # 5xx / transport failures per snapshot before STATUS_SNAPSHOT_FAILED (then retried later)



@dataclass(frozen=True, kw_only=True)
class FeedSettings:
    """What the feed connects to and how it behaves (built from ``market_data`` config)."""

    ws_url: str  # base, e.g. wss://stream.binance.com:9443 or ws://127.0.0.1:18765
    rest_url: str  # base, e.g. https://api.binance.com
    symbols: tuple[str, ...]  # upper case
    streams: tuple[str, ...] = ("depth@100ms", "trade", "bookTicker")  # per symbol
    snapshot_limit: int = 1000  # REST depth limit (weight 50 at 1000, 250 at 5000)
    snapshot_wait_first_diff_s: float = 2.0  # wait for a diff before snapshotting (procedure step 2)
    reconnect_base_s: float = 0.5
    reconnect_cap_s: float = 30.0
    # a connection that lived this long was healthy: the next drop reconnects from the initial delay. Short: a
    # connection cut every 10 s must not climb to the 30 s cap (scripts/chaos.py feed_disconnect: with 30 s
    # the feed was down 11-25 s after each cut); drops closer together than this still back off.
    healthy_after_s: float = 5.0
    max_connection_age_s: float = 23.5 * 3600  # Binance closes at 24 h; leave first
    rest_timeout_s: float = 10.0
    rest_retry_base_s: float = 0.5
    rest_retry_cap_s: float = 30.0
    rest_weight_limit_1m: int = 6000  # REQUEST_WEIGHT per minute of this IP (exchangeInfo rateLimits)
    rest_weight_share: float = 0.8  # use at most this share of it: other processes on the IP need some

    def stream_url(self) -> str:
        names = "/".join(f"{s.lower()}@{st}" for s in self.symbols for st in self.streams)
        return f"{self.ws_url.rstrip('/')}/stream?streams={names}"


@dataclass
class FeedStats:
    """Counters of one ``FeedClient`` (the feed worker heartbeats them)."""

    frames: int = 0  # WebSocket messages received
    records: int = 0  # MD_EVENT records published (frames, snapshots, status)
    bytes: int = 0  # WebSocket payload bytes received
    connects: int = 0  # successful WebSocket connects (the first one included)
    connect_failures: int = 0  # failed connect attempts
    disconnects: int = 0
    server_shutdowns: int = 0  # serverShutdown events received
    age_reconnects: int = 0  # planned reconnects before Binance's 24 h limit
    snapshots: int = 0  # snapshots published
    snapshot_requests: int = 0  # GET /api/v3/depth sent
    snapshot_failures: int = 0  # failed snapshot requests (5xx, transport, bad body)
    snapshots_discarded: int = 0  # fetched on a connection that has since been replaced
    rest_rate_limited: int = 0  # 429/418 answers
    rest_weight_waits: int = 0  # calls delayed to stay under the weight limit
    rest_used_weight_1m: int = 0  # last X-MBX-USED-WEIGHT-1M
    decode_errors: dict = field(default_factory=dict)  # bad input by kind (only kinds seen)

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "decode_errors"}
        d["reconnects"] = self.reconnects
        d["decode_errors"] = dict(self.decode_errors)
        d["decode_errors_total"] = sum(self.decode_errors.values())
        return d


class _Listener(WSListener):
    """picows callbacks. They catch, count and log; they never raise into the loop."""

    def __init__(self, client: "FeedClient"):
        self.client = client
        self.partial = bytearray()

    def on_ws_connected(self, transport: WSTransport):
        self.client._on_connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame):
        recv_ns = time.monotonic_ns()
        try:
            mt = frame.msg_type
            if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY or mt == WSMsgType.CONTINUATION:
                if not frame.fin or self.partial:  # fragmented message: assemble (Binance does not fragment)
                    self.partial += frame.get_payload_as_memoryview()
                    if not frame.fin:
                        return
                    payload = bytes(self.partial)
                    self.partial.clear()
                else:
                    payload = frame.get_payload_as_bytes()
                self.client._on_message(payload, recv_ns)
            elif mt == WSMsgType.CLOSE:
                # answer the close handshake (Binance's 24 h / going-away close), then drop the socket
                transport.send_close(frame.get_close_code())
                transport.disconnect()
        except Exception:  # a bug must not kill the connection; it is logged and counted
            errs = self.client.stats.decode_errors
            errs["internal_error"] = errs.get("internal_error", 0) + 1
            log.exception("feed: error handling a frame")

    def on_ws_disconnected(self, transport: WSTransport):
        self.client._on_disconnected()


class FeedClient:
    """Market-data connection for a set of symbols; see the module docstring.

    ``clock`` stamps status records (CLOCK_MONOTONIC ns); frames are stamped
    with ``time.monotonic_ns()`` in the socket callback. ``rng`` draws the
    backoff jitter (inject a seeded one in tests).
    """

    def __init__(
        self,
        settings: FeedSettings,
        publish: Callable[[np.ndarray], None],
        *,
        recorder=None,
        frame_sink=None,
        clock: Callable[[], int] = time.monotonic_ns,
        rng: random.Random | None = None,
    ):
        if not settings.symbols:
            raise ValueError("FeedSettings.symbols is empty: nothing to subscribe to")
        self.settings = settings
        self.publish = publish
        self.recorder = recorder
        self.frame_sink = frame_sink
        self.clock = clock
        self.rng = rng or random.Random()
        self.symbols = list(settings.symbols)
        self.symbol_ids = {s: i for i, s in enumerate(self.symbols)}
        # frames are stamped with CLOCK_MONOTONIC: the offset lets the decoder's time gate also bound exchange
        # times against the host's wall clock (ahead only: the simulator may replay an old recording)
        self.decoder = Decoder(self.symbols, recv_wall_offset_ns=time.time_ns() - time.monotonic_ns())
        self.out = Decoder.new_out()
        self.stats = FeedStats()
        self._transport: WSTransport | None = None
        self._conn_gen = 0  # bumped on every connect: a snapshot fetched on an older connection is stale
        self._connected_at = 0.0
        self._first_diff_seen: set[int] = set()
        self._resync_wanted: set[int] = set()
        self._resync_event = asyncio.Event()
        self._recheck_handle: asyncio.TimerHandle | None = None
        self._rest_blocked_until = 0.0  # monotonic s: no REST call before (Retry-After)
        self._weight_minute = -1  # wall-clock minute the last used-weight header belongs to
        self._reconnect_now = False
        self._http: httpx.AsyncClient | None = None

    # -- called from picows callbacks ----------------------------------------

    def _on_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._conn_gen += 1
        self._connected_at = time.monotonic()
        self.stats.connects += 1
        self._first_diff_seen.clear()
        # every book is unknown after a (re)connect: tell the book, then resync all
        self._publish_status(range(len(self.symbols)), STATUS_RECONNECTED)
        self._resync_wanted.update(range(len(self.symbols)))
        self._resync_event.set()
        log.info("feed: connected to %s (%d symbols, %d streams)", self.settings.ws_url, len(self.symbols),
                 len(self.symbols) * len(self.settings.streams))

    def _on_disconnected(self) -> None:
        self._transport = None
        self.stats.disconnects += 1

    def _on_message(self, payload: bytes, recv_ns: int) -> None:
        st = self.stats
        st.frames += 1
        st.bytes += len(payload)
        if self.recorder is not None:
            self.recorder.write(recv_ns, "ws", payload)
        sink = self.frame_sink
        if sink is not None:
            n = sink.publish_frame(self.decoder, payload, recv_ns)
            if n > 0:
                st.records += n
                if len(self._first_diff_seen) < len(self.symbols):
                    self._note_first_diffs(sink.recent(n))
        else:
            n = self.decoder.decode(payload, recv_ns, self.out)
            if n > 0:
                recs = self.out[:n]
                if len(self._first_diff_seen) < len(self.symbols):
                    self._note_first_diffs(recs)
                self.publish(recs)
                st.records += n
        if n <= 0 and self.decoder.last_control is not None:
            ev = self.decoder.pop_control()
            if ev.kind == CONTROL_SHUTDOWN:
                st.server_shutdowns += 1
                log.warning("feed: serverShutdown received; reconnecting now")
                self.reconnect_soon()
            elif ev.kind == CONTROL_ERROR:
                log.error("feed: the exchange rejected a control request: %r", ev.body)
        elif n == 0:
            self._sync_error_counts()

    def _note_first_diffs(self, recs: np.ndarray) -> None:
        kinds = recs["kind"]
        for sid in np.unique(recs["symbol"][(kinds >= MD_DEPTH_BID) & (kinds <= MD_DEPTH_NONE)]):
            if int(sid) not in self._first_diff_seen:
                self._first_diff_seen.add(int(sid))
                self._resync_event.set()

    def _sync_error_counts(self) -> None:
        # the decoder counts by kind and logs each kind once; the stats show the kinds seen
        errs = self.decoder.errors
        de = self.stats.decode_errors
        for kind, count in errs.items():
            if count:
                de[kind] = count

    def _publish_status(self, symbol_ids, code: int) -> None:
        """One MD_STATUS record (``code`` in aux) per symbol id."""
        recs = np.zeros(len(symbol_ids), MD_EVENT)
        recs["recv_ns"] = self.clock()
        recs["kind"] = MD_STATUS
        recs["flags"] = FLAG_BEGIN | FLAG_END
        recs["aux"] = code
        recs["symbol"] = symbol_ids
        self.publish(recs)
        self.stats.records += len(recs)

    # -- control --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def request_resync(self, symbol: str | int) -> bool:
        """Fetch a fresh snapshot for ``symbol`` (asked by the book on a gap, cross or lap).

        Returns False (and does nothing) for a symbol not in the table.
        """
        if isinstance(symbol, str):
            sid = self.symbol_ids.get(symbol.upper(), -1)
        else:
            sid = int(symbol)
        if not 0 <= sid < len(self.symbols):
            log.warning("feed: resync requested for unknown symbol %r; ignored", symbol)
            return False
        self._resync_wanted.add(sid)
        self._resync_event.set()
        return True

    def reconnect_soon(self) -> None:
        """Drop the connection and reconnect without backoff (serverShutdown, age-out, operator)."""
        self._reconnect_now = True
        if self._transport is not None:
            self._transport.disconnect()

    # -- main loops -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a connection up and serve resyncs until ``stop`` is set."""
        self._http = httpx.AsyncClient(base_url=self.settings.rest_url, timeout=self.settings.rest_timeout_s)
        snapshots = asyncio.create_task(self._snapshot_loop(stop))
        try:
            await self._connection_loop(stop)
        finally:
            snapshots.cancel()
            try:
                await snapshots
            except asyncio.CancelledError:
                pass
            if self._recheck_handle is not None:
                self._recheck_handle.cancel()
            if self._transport is not None:
                self._transport.disconnect()
            await self._http.aclose()

    def backoff_delay(self, attempt: int) -> float:
        """Full-jitter exponential backoff for reconnect ``attempt`` (0-based), seconds."""
        s = self.settings
        return self.rng.uniform(0.0, min(s.reconnect_cap_s, s.reconnect_base_s * (2 ** min(attempt, 30))))

    async def _connection_loop(self, stop: asyncio.Event) -> None:
        s = self.settings
        attempt = 0
        url = s.stream_url()
        while not stop.is_set():
            try:
                transport, _ = await ws_connect(lambda: _Listener(self), url, websocket_handshake_timeout=10,
                                                enable_auto_pong=True)
            except Exception as exc:  # noqa: BLE001 - any connect failure (DNS, refused, TLS, HTTP 4xx) retries
                self.stats.connect_failures += 1
                delay = self.backoff_delay(attempt)
                attempt += 1
                log.warning("feed: connect to %s failed (%s: %s); retry in %.2fs", s.ws_url,
                            type(exc).__name__, exc, delay)
                await _sleep_or_stop(stop, delay)
                continue
            age_task = asyncio.create_task(self._age_out(transport))
            stop_task = asyncio.create_task(stop.wait())
            done_task = asyncio.create_task(transport.wait_disconnected())
            await asyncio.wait({stop_task, done_task}, return_when=asyncio.FIRST_COMPLETED)
            age_task.cancel()
            stop_task.cancel()
            if stop.is_set():
                transport.disconnect()
                await done_task
                return
            if time.monotonic() - self._connected_at >= s.healthy_after_s:
                attempt = 0  # it was a healthy connection: start the backoff over
            if self._reconnect_now:
                self._reconnect_now = False
                log.info("feed: reconnecting at once (planned)")
                continue
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.warning("feed: disconnected; reconnect in %.2fs (attempt %d)", delay, attempt)
            await _sleep_or_stop(stop, delay)

    async def _age_out(self, transport: WSTransport) -> None:
        await asyncio.sleep(self.settings.max_connection_age_s)
        log.info("feed: connection reached max age %.0fs; reconnecting", self.settings.max_connection_age_s)
        self.stats.age_reconnects += 1
        self.reconnect_soon()

    def _recheck_later(self, delay: float) -> None:
        """Wake the snapshot loop after ``delay`` s (one pending timer at a time)."""
        h = self._recheck_handle
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if h is not None and not h.cancelled() and h.when() <= when:
            return
        if h is not None:
            h.cancel()
        self._recheck_handle = loop.call_at(when, self._resync_event.set)

    async def _snapshot_loop(self, stop: asyncio.Event) -> None:
        s = self.settings
        while not stop.is_set():
            await self._resync_event.wait()
            self._resync_event.clear()
            if self._transport is None:
                continue  # snapshots wait for a live stream (diffs must be buffered first); connect sets the event
            now = time.monotonic()
            waited = now - self._connected_at
            # Binance's procedure: buffer the stream first, then snapshot. A quiet symbol
            # may send no diff for a while: after snapshot_wait_first_diff_s go anyway.
            ready = [sid for sid in sorted(self._resync_wanted)
                     if sid in self._first_diff_seen or waited >= s.snapshot_wait_first_diff_s]
            if len(ready) < len(self._resync_wanted):
                self._recheck_later(max(0.0, s.snapshot_wait_first_diff_s - waited))
            for sid in ready:
                if stop.is_set() or self._transport is None:
                    break
                self._resync_wanted.discard(sid)
                ok = await self._fetch_snapshot(sid)
                if not ok:
                    self._resync_wanted.add(sid)
                    self._publish_status([sid], STATUS_SNAPSHOT_FAILED)
                    self._recheck_later(self._rest_wait())

    def _rest_wait(self) -> float:
        return max(self._rest_blocked_until - time.monotonic(), self.settings.rest_retry_base_s)

    async def _rest_gate(self, weight: int) -> None:
        """Wait until a call of ``weight`` is allowed: Retry-After, then the per-minute weight budget."""
        s = self.settings
        while True:
            wait = self._rest_blocked_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            wall = time.time()
            minute = int(wall // 60)
            budget = s.rest_weight_share * s.rest_weight_limit_1m
            if minute == self._weight_minute and self.stats.rest_used_weight_1m + weight > budget:
                # Binance counts weight per wall-clock minute: wait for the next one
                self.stats.rest_weight_waits += 1
                wait = (minute + 1) * 60 - wall + 0.05
                log.warning("feed: REST weight %d/%d used this minute; waiting %.1fs before the next snapshot",
                            self.stats.rest_used_weight_1m, s.rest_weight_limit_1m, wait)
                await asyncio.sleep(wait)
                continue
            return

    async def _fetch_snapshot(self, sid: int) -> bool:
        """One snapshot for symbol ``sid``, honouring Retry-After and the weight budget; returns success."""
        s = self.settings
        symbol = self.symbols[sid]
        weight = depth_weight(s.snapshot_limit)
        attempt = 0
        while True:
            await self._rest_gate(weight)
            gen = self._conn_gen
            self.stats.snapshot_requests += 1
            try:
                resp = await self._http.get("/api/v3/depth", params={"symbol": symbol, "limit": s.snapshot_limit})
            except httpx.HTTPError as exc:
                self.stats.snapshot_failures += 1
                log.warning("feed: snapshot %s failed: %s: %s", symbol, type(exc).__name__, exc)
                attempt += 1
                if attempt >= SNAPSHOT_ATTEMPTS:
                    return False
                await asyncio.sleep(min(s.rest_retry_cap_s, s.rest_retry_base_s * 2 ** attempt))
                continue
            recv_ns = time.monotonic_ns()
            used = resp.headers.get("x-mbx-used-weight-1m")
            if used and used.isdigit():
                self.stats.rest_used_weight_1m = int(used)
                self._weight_minute = int(time.time() // 60)
            if resp.status_code in (429, 418):
                retry_after = _retry_after(resp)
                self.stats.rest_rate_limited += 1
                self._rest_blocked_until = time.monotonic() + retry_after
                log.warning("feed: REST %d for %s snapshot; no REST calls for %.1fs (Retry-After)",
                            resp.status_code, symbol, retry_after)
                continue
            if resp.status_code >= 500:
                self.stats.snapshot_failures += 1
                log.warning("feed: REST %d for %s snapshot; retrying", resp.status_code, symbol)
                attempt += 1
                if attempt >= SNAPSHOT_ATTEMPTS:
                    return False
                await asyncio.sleep(min(s.rest_retry_cap_s, s.rest_retry_base_s * 2 ** attempt))
                continue
            if resp.status_code != 200:
                self.stats.snapshot_failures += 1
                log.error("feed: REST %d for %s snapshot: %s", resp.status_code, symbol, resp.text[:200])
                return False
            body = resp.content
            if self.recorder is not None:
                self.recorder.write(recv_ns, "depth_snapshot", body, symbol=symbol)
            if gen != self._conn_gen:
                # the stream reconnected while we waited: the new connection asked for its own snapshot
                self.stats.snapshots_discarded += 1
                return True
            n = self.decoder.decode_snapshot(body, sid, recv_ns, self.out)
            if n <= 0:
                self.stats.snapshot_failures += 1
                self._sync_error_counts()
                return False
            self.publish(self.out[:n])
            self.stats.records += n
            self.stats.snapshots += 1
            return True


def _retry_after(resp: httpx.Response) -> float:
    value = resp.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = 60.0 if resp.status_code == 418 else 1.0
    return max(seconds, MIN_RETRY_AFTER_S)


async def _sleep_or_stop(stop: asyncio.Event, delay: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except asyncio.TimeoutError:
        pass

"""Execution against a venue (``sim``: the local simulator; ``live``: Binance) on an asyncio thread.

The execution stage's duty cycle hands each ORDER_REQUEST to ``VenueExecutor.submit`` (thread-safe:
``call_soon_threadsafe``) and publishes what ``take_reports`` returns; everything that talks to the venue
runs on one uvloop thread (``processes.venue_client``: one persistent WebSocket API session, signed,
rate-limited, clock-synced, with the user-data stream subscribed).

Reports come from one source: the user-data stream's ``executionReport`` events (NEW, TRADE, CANCELED,
EXPIRED), de-duplicated by execution id, so a duplicated or replayed event never counts twice. A request
the venue refuses becomes EX_REJECTED with the venue's code.

Exactly once (``_place``)
-------------------------
* The wire id is ``"<instance>-<client_order_id>"``; risk took the id from a block the journal reserved
  durably, so an id is never reused across restarts.
* An unknown outcome (time-out, 5xx, a connection lost mid-request) is settled by querying the order by
  ``origClientOrderId`` before anything else: found -> adopted (its state and fills are reconciled from the
  query and ``myTrades``, in case the events were lost with the connection); -2013 (proven absent) -> sent
  again with the same id, after exponential backoff with jitter, at most ``retry_attempts`` times.
* -1021 (timestamp): the client resynced its clock; one retry (the order was rejected, so it is safe).
* 429: the limiter pauses new orders for Retry-After; the order is retried after it (it was not executed).
  418: trading halts (an ``alert`` event and a ``halt`` event routed to risk); the order is rejected.

Transport (``execution.transport``): ``ws`` sends orders and queries on the WebSocket API session;
``rest`` sends them over REST (one keep-alive ``httpx`` client, ``rest_url``) with the same clock and
limiter. The user-data stream is always the session's (Binance has no other since the listenKey's end).

Reconciliation (at start, after every reconnect, and when a restarted risk stage asks): open orders and
fills since the last trade id seen per symbol are read from the venue (myTrades carries no client id:
the order id says whose a trade is); fills we never reported are reported, and every difference is
logged and counted (``reconcile_*``). ``reconciled`` is 1 once the first one completed; each one ends
with a ``reconciled`` event, routed to risk (it leaves REDUCE_ONLY after a restart). One that fails (a
429 or 5xx on a query, a lost connection) is tried again after a backoff (1 s doubling to 30 s) until one
completes.

Restart (``load_journal``, before ``start``): the journal's open orders of this epoch are tracked again
and settled by the start reconciliation (one the journal saw only as an intent and the venue does not
know expires: it never left); trades already journaled are never reported again. The first
reconciliation of an epoch records the venue's balances in the journal (its baseline); at shutdown
``check_positions`` compares the journal's positions with the balances' change since
(``position_mismatches``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import sys
import threading
import time
from typing import Any

from core.errors import RateLimitedError, VenueError
from core.fixedpoint import from_fixed, to_fixed
from core.latency import nb_record
from core.records import (
    EX_CANCELED,
    EX_EXPIRED,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    ORD_CANCEL,
    ORD_CANCEL_ALL,
    ORD_NEW,
    OS_CANCELED,
    OS_EXPIRED,
    OS_FILLED,
    OS_NEW,
    OS_PARTIALLY_FILLED,
    OS_REJECTED,
    OT_LIMIT,
    OT_LIMIT_MAKER,
    OT_MARKET,
    SIDE_BUY,
    TIF_FOK,
    TIF_GTC,
    TIF_IOC,
)

log = logging.getLogger("ringtrader.execution")

EXEC_TYPES = {"NEW": EX_NEW, "TRADE": EX_TRADE, "CANCELED": EX_CANCELED, "REJECTED": EX_REJECTED,
              "EXPIRED": EX_EXPIRED}
STATUSES = {"NEW": OS_NEW, "PARTIALLY_FILLED": OS_PARTIALLY_FILLED, "FILLED": OS_FILLED, "CANCELED": OS_CANCELED,
            "REJECTED": OS_REJECTED, "EXPIRED": OS_EXPIRED, "EXPIRED_IN_MATCH": OS_EXPIRED}
TYPES = {OT_LIMIT: "LIMIT", OT_MARKET: "MARKET", OT_LIMIT_MAKER: "LIMIT_MAKER"}
TIFS = {TIF_GTC: "GTC", TIF_IOC: "IOC", TIF_FOK: "FOK"}
FINAL = {OS_FILLED, OS_CANCELED, OS_REJECTED, OS_EXPIRED}
RETRY_ATTEMPTS = 3  # the original design's retry_attempts


def _assets(cfg) -> dict[str, tuple[str, str]]:
    """symbol -> (base, quote) from the resolved exchangeInfo, else a quote-suffix split."""
    out = {}
    info = None
    if getattr(cfg, "venue", ""):
        from core.filters import VenueInfo

        info = VenueInfo.from_json(cfg.venue)
    for i in cfg.instruments:
        if info is not None:
            s = info.symbol(i.symbol)
            out[i.symbol] = (s.base_asset, s.quote_asset)
        else:
            q = next((q for q in ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB", "EUR") if i.symbol.endswith(q)),
                     i.symbol[-4:])
            out[i.symbol] = (i.symbol[: -len(q)], q)
    return out


_PROGRESS = {OS_NEW: 0, OS_PARTIALLY_FILLED: 1}  # every other status is final (2)


def _later(a: int, b: int) -> int:
    """The further on of two order statuses (NEW < PARTIALLY_FILLED < a final one); ``a`` on a tie."""
    return b if _PROGRESS.get(b, 2) > _PROGRESS.get(a, 2) else a


RECONCILE_RETRY_FIRST_S = 1.0  # a failed reconciliation is tried again after this, doubling per failure
#: what the executor remembers to recognise a duplicate event or a trade already reported: the newest keys only,
#: so a run of weeks does not grow with every order. Duplicates come within seconds and reconciliation asks for
#: trades after the last one reported, so 16k keys (four per order: a few thousand orders) is far more than
#: either needs.
SEEN_CAP = 1 << 14
#: venue order id -> the order, for myTrades (which carries no client id) and a fill that arrives after its
#: order's final one: the newest finished orders and every open one (an open order is never forgotten)
KNOWN_CAP = 2048
KNOWN_FIELDS = ("client_order_id", "symbol", "side", "qty", "ref_px", "recv_ns", "pub_ns")
#: Both are reserved when the executor is made (_reserve): they start full of placeholders (keys no venue event
#: can have), which real keys push out oldest first. Their memory is then the same on a process's first day as
#: on its last; grown on demand, it rose with every order for hours (about 1.7 kB an order, scripts/soak.py).
_PLACEHOLDER = -(1 << 40)  # an id no venue gives (they are >= 0); beyond the small-int cache, as real ids are


def _reserve(add, size_of, placeholder, n: int) -> None:
    """Fill a bounded container with ``n`` placeholders (``add(placeholder(i))``), then turn them over until
    its hash table makes the one resize that steady turnover brings (a set grows to 4x its keys once deleted
    slots fill it: 0.5 -> 2 MB at 16k keys), at most ``2 n`` more: its memory is then taken at start."""
    for i in range(n):
        add(placeholder(i))
    size = size_of()
    for i in range(n, 3 * n):
        add(placeholder(i))
        if size_of() != size:
            return


class RecentSet:
    """A set that forgets its oldest keys beyond ``cap``: a set for lookups, a deque for the order they came.

    With ``reserve`` it starts full of placeholder keys (tuples shaped like the executor's real keys, which
    match none of them), so its memory is taken at once instead of growing until the cap. (A dict in insertion
    order would do with one structure, but dropping its first key scans past every key deleted before it: 18 us
    an add at 16k keys, against under 1 us here.)"""

    __slots__ = ("cap", "_d", "_q")

    def __init__(self, cap: int, *, reserve: bool = False):
        self.cap = cap
        self._q: collections.deque = collections.deque()
        self._d: set = set()
        if reserve:
            _reserve(self.add, lambda: sys.getsizeof(self._d),
                     lambda i: ("", "", _PLACEHOLDER - i, _PLACEHOLDER - i, "", _PLACEHOLDER - i), cap)

    def add(self, key) -> None:
        if key in self._d:
            return
        self._d.add(key)
        self._q.append(key)
        if len(self._q) > self.cap:
            self._d.discard(self._q.popleft())

    def __contains__(self, key) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)
RECONCILE_RETRY_MAX_S = 30.0


class VenueExecutor:
    def __init__(self, config, *, note_sent=None, hists=None):
        from processes.journal import client_order_id_str

        self.cfg = config
        self.instance = config.instance
        self.wire = lambda cid: client_order_id_str(config.instance, cid)
        self.symbols = [i.symbol for i in config.instruments]
        self.sym_id = {s: i for i, s in enumerate(self.symbols)}
        self.assets = _assets(config)
        self.note_sent = note_sent or (lambda cid, ns: None)
        self.reports: collections.deque = collections.deque()  # dicts of EXEC_REPORT fields, for the stage
        self.events: collections.deque = collections.deque()  # (type, fields) for ctx.event
        self.orders: dict[int, dict] = {}  # cid -> what we know (symbol, side, trace, state)
        self.seen = RecentSet(SEEN_CAP, reserve=True)  # execution ids (and trade ids) already reported, the newest
        self.last_trade: dict[str, int] = {}  # symbol -> last trade id reported
        self.stats: collections.Counter = collections.Counter()
        for k in ("sent", "acked", "fills", "rejects", "canceled", "unknown_outcomes", "adopted", "retries_429", "halts"):
            self.stats[k] = 0  # reported from the start (a metric family exists before its first event)
        self.rng = random.Random()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client = None
        self.api = None  # where orders and queries go: the WS API session, or a RestClient (execution.transport)
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.reconciled = False
        self._reconcile_retry: asyncio.Task | None = None  # a failed reconciliation, tried again after a backoff
        self._reconcile_backoff_s = RECONCILE_RETRY_FIRST_S
        self.last_error = ""
        self._lock = threading.Lock()
        self._up = False  # the session is up: submit() hands orders to the loop directly
        self._pending: collections.deque = collections.deque()
        # (symbol, venue order id) -> the order's key fields, for myTrades (_remember). Venue order ids are per
        # symbol (BTCUSDT's order 7 and ETHUSDT's order 7 are two orders), on Binance as in the simulator.
        self.known: dict[tuple[str, int], dict] = {}
        _reserve(lambda a: self._remember("", *a), lambda: sys.getsizeof(self.known),  # no open order's: first to go
                 lambda i: (_PLACEHOLDER - i, {**{k: _PLACEHOLDER - i - j for j, k in enumerate(KNOWN_FIELDS)},
                                               "client_order_id": 0}), KNOWN_CAP + KNOWN_CAP // 8)
        self.journal_path = None  # set by load_journal: the epoch's balance baseline is written there
        self.position_check: dict = {}
        self._placing: dict[int, dict] = {}  # cid -> the order's dict while _place_once runs
        # latency (core.latency arrays; the stage's hops VENUE_HOPS): tick -> order bytes on the socket,
        # order record published by risk -> bytes on the socket, bytes on the socket -> the venue's answer
        self.hists = hists

    # -- the stage's side (its duty-cycle thread) --------------------------------------------------
    def start(self, wait_s: float = 0.0) -> None:
        """Start the venue thread. It does not hold up the caller (the stage's duty cycle must not wait on the
        network): orders submitted before the session is up wait in a queue and go out once it is."""
        self._thread = threading.Thread(target=self._thread_main, name="venue", daemon=True)
        self._thread.start()
        if wait_s > 0:
            self._ready.wait(wait_s)
        if self._error is not None:
            raise RuntimeError(f"the venue session failed to start: {self._error}") from self._error

    def submit(self, rec: dict) -> None:
        """An ORDER_REQUEST (as a dict of its fields) for the venue; returns at once."""
        with self._lock:
            if not self._up:
                self._pending.append(rec)  # the venue thread sends these once the session is up
                return
        self.loop.call_soon_threadsafe(self._dispatch, rec)

    def load_journal(self, journal, skip_cids=()) -> int:
        """Before ``start``: what the journal knows of this epoch (restart after a crash, or a persistent
        venue account). Open orders are tracked again and settled by the start reconciliation (an order the
        journal saw only as an intent, not at the venue, expires); trades already journaled are never
        reported again; myTrades resumes after the last one. ``skip_cids``: intents still in the orders
        ring (the duty cycle hands them over as usual). Returns the open orders loaded."""
        self.journal_path = journal.path
        sides = {"BUY": SIDE_BUY, "SELL": 2}
        types = {v: k for k, v in TYPES.items()}
        now = time.monotonic()
        n = 0
        for o in journal.open_orders():
            if o["cid"] in skip_cids or o["symbol"] not in self.sym_id or o["qty"] is None:
                continue
            rec = {"action": ORD_NEW, "client_order_id": int(o["cid"]), "orig_client_order_id": 0,
                   "symbol": self.sym_id[o["symbol"]], "side": sides.get(o["side"], 0),
                   "order_type": types.get(o["type"], OT_MARKET), "tif": 0, "price": int(o["price"] or 0),
                   "qty": int(o["qty"]), "recv_ns": int(o["recv_ns"] or 0), "pub_ns": 0,
                   "ref_px": int(o["ref_px"] or 0), "state": OS_NEW, "cum_qty": int(o["cum_qty"] or 0),
                   "acked_at": now, "restored": o["state"]}
            self.orders[rec["client_order_id"]] = rec
            if o["order_id"] is not None and o["order_id"] >= 0:
                self._remember(o["symbol"], int(o["order_id"]), rec)
            n += 1
        for f in journal.fills(epoch=True):
            self.seen.add(("trade", f["symbol"], int(f["trade_id"])))
        for (sym, oid), o in journal.order_ids().items():
            if (sym, oid) not in self.known and sym in self.sym_id and o["qty"] is not None:
                self._remember(sym, oid, {"client_order_id": o["cid"], "symbol": self.sym_id[sym],
                                          "side": sides.get(o["side"], 0), "qty": int(o["qty"]), "ref_px": 0})
        for sym in self.symbols:
            t = journal.last_trade_id(sym)
            if t is not None:
                self.last_trade[sym] = t
        self.stats["restored_open_orders"] += n
        return n

    def request_reconcile(self, why: str) -> None:
        """From the stage's thread: reconcile now (a restarted risk asks); answered by a ``reconciled`` event."""
        if self.loop is not None and self._up:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._reconcile(why)))

    def clock_offset_ms(self) -> int | None:
        """Venue clock minus ours (ms, rounded) once synced, else None."""
        c = self.client.clock if self.client is not None else None
        return int(round(c.offset_ms)) if c is not None and c.synced else None

    def call(self, coro_fn, timeout_s: float = 5.0):
        """Run ``coro_fn()`` on the venue loop from another thread and wait for it (None when not up)."""
        if self.loop is None or not self._up:
            return None
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), self.loop)
        return fut.result(timeout_s)

    def take_reports(self, max_n: int = 4096) -> list[dict]:
        out = []
        while self.reports and len(out) < max_n:
            out.append(self.reports.popleft())
        return out

    def close(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def counters(self) -> dict:
        out = {f"venue_{k}": int(v) for k, v in self.stats.items()}
        out["reconciled"] = int(self.reconciled)
        off = self.clock_offset_ms()
        if off is not None:
            out["clock_offset_ms"] = off
        lim = getattr(self.client, "limiter", None) if self.client is not None else None
        if lim is not None:  # the venue's rate-limit windows as we count them (headers / rateLimits + in flight)
            for (kind, ms), w in list(lim.windows.items()):
                what = "weight" if kind == "REQUEST_WEIGHT" else "orders"
                out[f"{what}_used.{ms}"] = int(lim.used(kind, ms))
                if w.limit:
                    out[f"{what}_limit.{ms}"] = int(w.limit)
        pc = self.position_check
        if pc:
            out["positions_checked"] = int(bool(pc.get("checked")))
            out["position_mismatches"] = int(pc.get("mismatches", 0))
        if self.client is not None:
            out["venue_connected"] = int(self.client.connected)
        return out

    # -- the venue thread ---------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the stage through start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    def _credentials(self):
        from core.signing import load_credentials

        ex = self.cfg.execution
        if self.cfg.mode == "sim":
            accs = self.cfg.simulator.get("accounts") if isinstance(self.cfg.simulator, dict) else None
            acc = accs[0] if isinstance(accs, list) and accs else {}
            return load_credentials(acc.get("api_key_env", "BINANCE_SIM_API_KEY"),
                                    acc.get("api_secret_env", "BINANCE_SIM_API_SECRET"), key_type="hmac")
        return load_credentials(ex.api_key_env, ex.api_secret_env, key_type="hmac")

    async def _main(self) -> None:
        from core.filters import VenueInfo
        from processes.venue_client import RateLimiter, WsApiClient

        self._stop = asyncio.Event()
        cred = self._credentials()
        ex = self.cfg.execution
        limits = VenueInfo.from_json(self.cfg.venue) if getattr(self.cfg, "venue", "") else None
        limiter = RateLimiter(limits, rate_limit_per_second=ex.rate_limit_per_second,
                              on_halt=lambda why: self._halt(f"venue ban (418): {why}"))
        self.client = WsApiClient(ws_api_url(self.cfg), cred.api_key, cred.signer, on_event=self._on_event,
                                  on_reconnect=self._on_reconnect, limiter=limiter,
                                  recv_window_ms=ex.recv_window_ms, order_timeout_s=ex.order_timeout_ms / 1000)
        limiter.clock_ms = self.client.clock.now_ms
        if self.cfg.risk.max_clock_offset_ms > 0:  # an offset risk refuses to trade at is re-measured every 2 s
            self.client.clock.fast_above_ms = self.cfg.risk.max_clock_offset_ms
        self.api = self.client
        self.client.on_sent = self._on_sent
        if ex.transport == "rest":  # orders and queries over REST; the user-data stream stays on the session
            from processes.venue_client import RestClient

            self.api = RestClient(rest_url(self.cfg), cred.api_key, cred.signer, recv_window_ms=ex.recv_window_ms,
                                  order_timeout_s=ex.order_timeout_ms / 1000, clock=self.client.clock,
                                  limiter=limiter)
            self.client.on_sent = None
            self.api.on_sent = self._on_sent
        delay = 0.5
        while True:  # the venue may be down at start: keep trying (orders wait in the queue meanwhile)
            try:
                await self.client.start()
                if self.api is not self.client:
                    await self.api.start()
                break
            except Exception as exc:  # noqa: BLE001 - logged, retried with backoff until stopped
                self.stats["start_failures"] += 1
                self.last_error = repr(exc)
                log.error("venue session did not start (%s); retrying in %.1f s", exc, delay)
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    return
                except asyncio.TimeoutError:
                    delay = min(delay * 2, 10.0)
        await self._reconcile("start")
        with self._lock:
            self._up = True
            queued = list(self._pending)
            self._pending.clear()
        for rec in queued:  # before any later submit's callback: they run on this loop after _main yields
            self._dispatch(rec)
        self._ready.set()
        sweeper = asyncio.get_running_loop().create_task(self._sweep())
        await self._stop.wait()
        sweeper.cancel()
        if self.api is not self.client:
            await self.api.aclose()
        await self.client.close()

    async def _sweep(self, every_s: float = 1.0, quiet_s: float = 2.0) -> None:
        """Orders the venue acknowledged whose events stopped (lost with a connection): settle them by query."""
        while True:
            await asyncio.sleep(every_s)
            now = time.monotonic()
            for cid, o in list(self.orders.items()):
                if o.get("acked_at") and now - o["acked_at"] > quiet_s and o.get("state") not in FINAL:
                    o["acked_at"] = now
                    await self._resettle(o)

    async def _resettle(self, o: dict) -> None:
        self.stats["resettled"] += 1
        found = await self._settle(self.symbols[o["symbol"]], self.wire(o["client_order_id"]))
        if found is None:
            if o.get("restored") in ("INTENT", "SENT"):  # from the journal; it never reached the venue
                self.stats["restored_never_sent"] += 1
                log.warning("order %s (journaled as %s before the restart) never reached the venue: expired",
                            self.wire(o["client_order_id"]), o["restored"])
                self._report(o, exec_type=EX_EXPIRED, status=OS_EXPIRED, reject_code=-2013)
                self.orders.pop(o["client_order_id"], None)
                return
            log.error("order %s was acknowledged but the venue does not know it", o["client_order_id"])
            self._reject(o, -2013)
            return
        await self._adopt(o, found)

    def _on_sent(self, wire: str, ns: int) -> None:
        cid = _cid_of(wire, self.instance)
        o = self._placing.get(cid) if cid is not None else None
        if o is None or self.hists is None or o.get("wire_ns"):
            return  # a retry's resend is not the order's latency
        o["wire_ns"] = ns
        if o.get("recv_ns", 0) > 0:
            nb_record(self.hists[0], ns - o["recv_ns"])
        if o.get("pub_ns", 0) > 0:
            nb_record(self.hists[1], ns - o["pub_ns"])

    def _halt(self, why: str) -> None:
        self.stats["halts"] += 1
        log.error("trading halted: %s", why)
        self.events.append(("alert", {"kind": "venue", "reason": why}))
        self.events.append(("halt", {"reason": why}))

    def _dispatch(self, rec: dict) -> None:
        act = rec["action"]
        if act == ORD_NEW:
            self.orders[rec["client_order_id"]] = {**rec, "state": OS_NEW, "cum_qty": 0}
            self.loop.create_task(self._place(rec))
        elif act == ORD_CANCEL:
            self.loop.create_task(self._cancel(rec))
        elif act == ORD_CANCEL_ALL:
            self.loop.create_task(self._cancel_all())

    def _params(self, rec: dict) -> dict:
        p = {"symbol": self.symbols[rec["symbol"]], "side": "BUY" if rec["side"] == SIDE_BUY else "SELL",
             "type": TYPES.get(rec["order_type"], "MARKET"), "quantity": from_fixed(rec["qty"]),
             "newClientOrderId": self.wire(rec["client_order_id"]), "newOrderRespType": "ACK"}
        if rec["order_type"] != OT_MARKET:
            p["price"] = from_fixed(rec["price"])
        if rec["order_type"] == OT_LIMIT:
            p["timeInForce"] = TIFS.get(rec["tif"], "GTC")
        return p

    def _reject(self, rec: dict, code: int) -> None:
        self.stats["rejects"] += 1
        self._report(rec, exec_type=EX_REJECTED, status=OS_REJECTED, reject_code=code)
        self.orders.pop(rec["client_order_id"], None)

    async def _place(self, rec: dict) -> None:
        try:
            await self._place_once(rec)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave an order unaccounted: settle it loudly
            self.stats["place_errors"] += 1
            log.exception("placing %s failed unexpectedly", rec["client_order_id"])
            self.last_error = repr(exc)
            try:
                found = await self._settle(self.symbols[rec["symbol"]], self.wire(rec["client_order_id"]))
            except Exception:  # noqa: BLE001
                found = None
            if found is None:
                self._reject(rec, -1)
            else:
                await self._adopt(rec, found)

    async def _place_once(self, rec: dict) -> None:
        params = self._params(rec)
        cid = rec["client_order_id"]
        o = self.orders.get(cid, {})
        self._placing[cid] = o  # for _on_sent: the final event may remove the order before its bytes are timed
        try:
            await self._place_loop(rec, params, cid, o)
        finally:
            self._placing.pop(cid, None)

    async def _place_loop(self, rec: dict, params: dict, cid: int, o: dict) -> None:
        attempts = 0
        clock_retried = False
        while True:
            try:
                o["phase"] = f"sending#{attempts}"
                self.note_sent(cid, time.monotonic_ns())
                self.stats["sent"] += 1
                await self.api.place_order(**params)
                self.stats["acked"] += 1
                if self.hists is not None and o.get("wire_ns"):  # (o: this order's dict, even if final already)
                    nb_record(self.hists[2], time.monotonic_ns() - o["wire_ns"])
                cur = self.orders.get(cid)
                if cur is not None:
                    cur["acked_at"] = time.monotonic()
                return
            except RateLimitedError as exc:
                if exc.status == 418:
                    self._halt(exc.msg)
                    self._reject(rec, exc.code or -1003)
                    return
                attempts += 1
                if attempts > RETRY_ATTEMPTS:
                    self._reject(rec, exc.code or -1015)
                    return
                self.stats["retries_429"] += 1
                o["phase"] = f"paused#{attempts}"
                await asyncio.sleep(max(exc.retry_after_s or 1.0, 0.05))
            except VenueError as exc:
                if exc.code == -1021 and not clock_retried:  # the client resynced its clock: safe, it was rejected
                    clock_retried = True
                    self.stats["retries_1021"] += 1
                    continue
                self._reject(rec, exc.code or -1)
                return
            except Exception as exc:  # UnknownOutcomeError / transport: the order may exist
                if not _unknown(exc):
                    raise
                self.stats["unknown_outcomes"] += 1
                o["phase"] = f"settling#{attempts}:{type(exc).__name__}"
                found = await self._settle(params["symbol"], params["newClientOrderId"])
                if found is not None:
                    self.stats["adopted"] += 1
                    await self._adopt(rec, found)
                    return
                attempts += 1
                if attempts > RETRY_ATTEMPTS:
                    self._reject(rec, -2013)
                    return
                self.stats["retries_absent"] += 1
                await asyncio.sleep(min(2.0, 0.05 * 2 ** attempts) * (0.5 + self.rng.random()))

    async def _settle(self, symbol: str, wire: str) -> dict | None:
        """The order by origClientOrderId: its dict, or None when the venue proves it absent (-2013)."""
        delay = 0.05
        while True:
            try:
                return await self.api.query_order(symbol, orig_client_order_id=wire)
            except VenueError as exc:
                if exc.code == -2013:
                    return None
                self.stats["settle_retries"] += 1
                log.warning("settling %s: %s; asking again", wire, exc)
            except Exception as exc:  # noqa: BLE001 - transport trouble: ask again until the venue answers
                if not _unknown(exc):
                    raise
                self.stats["settle_retries"] += 1
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)

    async def _read(self, fn, *args, **kw):
        """A read request (query, open orders, trades), asked again until the venue answers: a dropped
        connection must not leave an order unsettled."""
        delay = 0.05
        while True:
            try:
                return await fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - transport trouble only; anything else is raised
                if not _unknown(exc):
                    raise
                self.stats["read_retries"] += 1
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)

    async def _adopt(self, rec: dict, order: dict) -> None:
        """An order the venue has although we never saw its answer: report what the events may have missed."""
        symbol = order["symbol"]
        self._remember(symbol, int(order["orderId"]), rec)
        trades = await self._read(self.api.my_trades, symbol, orderId=int(order["orderId"]))
        for t in trades:
            self._trade_from_rest(rec, order, t)
        st = STATUSES.get(order.get("status", ""), OS_NEW)
        key = ("status", symbol, int(order["orderId"]), st)
        if st in FINAL and st != OS_FILLED and key not in self.seen:
            self.seen.add(key)
            self._report(rec, exec_type=EX_CANCELED if st == OS_CANCELED else EX_EXPIRED, status=st,
                         order_id=int(order["orderId"]), cum_qty=to_fixed(order["executedQty"]),
                         cum_quote=to_fixed(order["cummulativeQuoteQty"]))
        if st in FINAL:
            self.orders.pop(rec["client_order_id"], None)
        else:
            o = self.orders.get(rec["client_order_id"])
            if o is not None:
                o["acked_at"] = time.monotonic()  # open at the venue: events (or the sweeper) follow

    def _remember(self, symbol: str, order_id: int, rec: dict) -> None:
        """``known[(symbol, order_id)]``: the fields a trade report needs (not the whole record), within
        ``KNOWN_CAP``. Keyed by the symbol too: venue order ids are per symbol.

        Beyond the cap the oldest finished orders are forgotten, a batch at a time; open ones stay.
        """
        if (symbol, order_id) in self.known:
            return
        self.known[(symbol, order_id)] = {k: rec.get(k, 0) for k in KNOWN_FIELDS}
        if len(self.known) > KNOWN_CAP + KNOWN_CAP // 8:
            for oid in list(self.known):
                if len(self.known) <= KNOWN_CAP:
                    break
                if self.known[oid]["client_order_id"] not in self.orders:
                    del self.known[oid]

    def _trade_from_rest(self, rec: dict, order: dict, t: dict) -> None:
        key = ("trade", t["symbol"], int(t["id"]))
        if key in self.seen:
            return
        self.seen.add(key)
        base, quote = self.assets[t["symbol"]]
        asset = t["commissionAsset"]
        o = self.orders.get(rec["client_order_id"], rec)
        o["cum_qty"] = o.get("cum_qty", 0) + to_fixed(t["qty"])
        self.last_trade[t["symbol"]] = max(self.last_trade.get(t["symbol"], 0), int(t["id"]))
        self.stats["fills"] += 1
        self.stats["fills_reconciled"] += 1
        self._report(rec, exec_type=EX_TRADE, status=OS_FILLED if o["cum_qty"] >= rec["qty"] else OS_PARTIALLY_FILLED,
                     order_id=int(t["orderId"]), trade_id=int(t["id"]), last_px=to_fixed(t["price"]),
                     last_qty=to_fixed(t["qty"]), cum_qty=o["cum_qty"], commission=to_fixed(t["commission"]),
                     commission_asset=0 if asset == quote else (1 if asset == base else 2),
                     is_maker=int(bool(t["isMaker"])), exch_ms=int(t["time"]))

    async def _cancel(self, rec: dict) -> None:
        try:
            await self.api.cancel_order(self.symbols[rec["symbol"]],
                                           orig_client_order_id=self.wire(rec["orig_client_order_id"]))
        except Exception as exc:  # noqa: BLE001 - counted; the stream or reconciliation tells the truth
            self.stats["cancel_errors"] += 1
            log.warning("cancel of %s: %s", rec["orig_client_order_id"], exc)

    async def _cancel_all(self) -> None:
        for symbol in self.symbols:
            try:
                await self.api.cancel_all(symbol)
                self.stats["cancel_all"] += 1
            except VenueError as exc:
                if exc.code != -2011:  # "Unknown order sent": nothing was open
                    log.warning("cancel-all %s: %s", symbol, exc)
            except Exception as exc:  # noqa: BLE001
                log.warning("cancel-all %s: %s", symbol, exc)

    def _on_reconnect(self) -> None:
        self.stats["reconnects"] += 1
        self.loop.create_task(self._reconcile("reconnect"))

    async def _reconcile(self, why: str) -> None:
        """Open orders and fills since the last trade id we reported, from the venue; report what we missed."""
        try:
            for symbol in self.symbols:
                opened = await self._read(self.api.open_orders, symbol)
                theirs = {o["clientOrderId"] for o in opened}
                ours = {self.wire(c) for c, o in self.orders.items() if o["symbol"] == self.sym_id[symbol]
                        and o.get("state") not in FINAL}
                for cid, o in list(self.orders.items()):
                    if o["symbol"] == self.sym_id[symbol] and o.get("acked_at") and self.wire(cid) not in theirs:
                        self.stats["reconcile_not_open"] += 1
                        await self._resettle(o)  # finished while we were not listening: its fills and status
                for w in sorted(theirs - ours):
                    self.stats["reconcile_unknown_open"] += 1
                    log.warning("reconcile (%s): the venue has an open order we do not track: %s", why, w)
                since = self.last_trade.get(symbol)
                if since is not None:  # myTrades carries no client id: the order id says whose it is
                    for t in await self._read(self.api.my_trades, symbol, from_id=since + 1):
                        rec = self.known.get((symbol, int(t["orderId"])))
                        if rec is None or ("trade", symbol, int(t["id"])) in self.seen:
                            continue  # not ours (the account's other trades), or reported already
                        rec = self.orders.get(rec["client_order_id"], rec)  # an open order: its live record
                        self.stats["reconcile_missed_fills"] += 1
                        self._trade_from_rest(rec, {"orderId": t["orderId"]}, t)
            if self.journal_path is not None and not self.stats.get("baseline_checked"):
                await self._baseline()
            self.reconciled = True
            self._reconcile_backoff_s = RECONCILE_RETRY_FIRST_S
            self.stats[f"reconciles_{why}"] += 1
            self.events.append(("reconciled", {"reason": why}))
        except Exception as exc:  # noqa: BLE001 - reported; trading goes on, tried again after a backoff
            self.stats["reconcile_errors"] += 1
            self.last_error = repr(exc)
            delay = self._reconcile_backoff_s
            log.error("reconciliation (%s) failed: %s; trying again in %.1f s", why, exc, delay)
            self._retry_reconcile(delay)

    def _retry_reconcile(self, delay: float) -> None:
        """A reconciliation that failed (a 429 or a 5xx on one of its queries, a connection lost) is tried again
        after ``delay``, doubling up to ``RECONCILE_RETRY_MAX_S``, until one completes: without it, one
        transient error at the start left the run unreconciled (no balance baseline, so no position check at
        shutdown; a restarted risk stage waiting for ``reconciled`` stayed REDUCE_ONLY) until a reconnect
        that might never come. One retry is pending at a time; a reconnect's reconciliation meanwhile is
        not held back."""
        if self._reconcile_retry is not None and not self._reconcile_retry.done():
            return
        self._reconcile_backoff_s = min(delay * 2, RECONCILE_RETRY_MAX_S)

        async def later() -> None:
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return  # stopping
            except asyncio.TimeoutError:
                pass
            self._reconcile_retry = None
            await self._reconcile("retry")

        self._reconcile_retry = asyncio.get_running_loop().create_task(later())

    async def _balances(self) -> dict[str, int]:
        """asset -> free + locked (fixed point) of the assets of our instruments, from the venue."""
        acc = await self._read(self.api.account)
        assets = {a for pair in self.assets.values() for a in pair}
        return {b["asset"]: to_fixed(b["free"]) + to_fixed(b["locked"]) for b in acc.get("balances", ())
                if b["asset"] in assets}

    async def _baseline(self) -> None:
        """The epoch's balances when its trading began (once per epoch): ``check_positions`` compares the
        journal's positions with the change since."""
        from processes.journal import Journal

        bal = await self._balances()
        with Journal(self.journal_path, instance=self.instance, create=False) as j:
            if j.set_baseline(bal):
                log.info("journal epoch baseline: venue balances %s", {k: from_fixed(v) for k, v in bal.items()})
        self.stats["baseline_checked"] = 1

    async def check_positions(self, journal) -> dict:
        """The journal's positions of this epoch against the venue's balances: for each base asset, the
        balance's change since the epoch's baseline must equal the sum of the journaled positions in it."""
        ep = journal.epoch()
        base_bal = ep.get("baseline")
        if base_bal is None:
            return {"checked": False, "why": "no balance baseline for this epoch"}
        bal = await self._balances()
        pos = journal.positions("fifo", epoch=True)
        want: dict[str, int] = collections.defaultdict(int)
        for sym, (base, _quote) in self.assets.items():
            want[base] += to_fixed(str(pos[sym]["position"])) if sym in pos else 0
        out = {"checked": True, "mismatches": 0, "assets": {}}
        for asset, p in sorted(want.items()):
            delta = bal.get(asset, 0) - int(base_bal.get(asset, 0))
            out["assets"][asset] = {"journal": from_fixed(p), "venue_change": from_fixed(delta)}
            if delta != p:
                out["mismatches"] += 1
                log.error("position mismatch in %s: the journal says %s, the venue's balance changed by %s",
                          asset, from_fixed(p), from_fixed(delta))
        return out

    def _on_event(self, ev: dict) -> None:
        if ev.get("e") != "executionReport":
            return
        try:
            self._execution_report(ev)
        except Exception:  # noqa: BLE001 - a bad event is counted and logged, never raised into the client
            self.stats["bad_events"] += 1
            log.exception("bad executionReport: %r", ev)

    def _execution_report(self, ev: dict) -> None:
        x = EXEC_TYPES.get(ev["x"])
        if x is None:
            return
        key = ("exec", ev["s"], int(ev.get("I", 0)), int(ev["i"]), ev["x"], int(ev.get("t", -1)))
        st_key = ("status", ev["s"], int(ev["i"]), STATUSES.get(ev["X"], OS_NEW))
        if key in self.seen or (x == EX_TRADE and ("trade", ev["s"], int(ev["t"])) in self.seen) or \
                (x in (EX_CANCELED, EX_EXPIRED) and st_key in self.seen):
            self.stats["duplicate_events"] += 1
            return
        self.seen.add(key)
        if x in (EX_CANCELED, EX_EXPIRED):
            self.seen.add(st_key)
        wire = ev["C"] if x == EX_CANCELED and ev.get("C") else ev["c"]
        cid = _cid_of(wire, self.instance)
        rec = self.orders.get(cid) if cid is not None else None
        late = False
        if rec is None and cid is not None and x == EX_TRADE:
            # the stream may deliver an order's final fill before an earlier one: the order is finished (and
            # no longer open) when that earlier fill comes, but it is still a fill of ours, never to be dropped
            known = self.known.get((ev["s"], int(ev["i"])))
            if known is not None and known["client_order_id"] == cid:
                rec, late = known, True
        if rec is None:
            self.stats["foreign_events"] += 1
            return
        self._remember(ev["s"], int(ev["i"]), rec)
        st = STATUSES.get(ev["X"], OS_NEW)
        cum_qty = to_fixed(ev["z"])
        if late:
            self.stats["late_fills"] += 1
        else:
            # an event older than one already applied must not move the order back (re-ordered stream)
            st = _later(rec.get("state", OS_NEW), st)
            cum_qty = max(cum_qty, rec.get("cum_qty", 0) or 0)
        base, quote = self.assets[ev["s"]]
        fields = dict(exec_type=x, status=st, order_id=int(ev["i"]), cum_qty=cum_qty,
                      cum_quote=to_fixed(ev["Z"]), exch_ms=int(ev.get("T") or ev.get("E") or 0))
        if x == EX_TRADE:
            self.seen.add(("trade", ev["s"], int(ev["t"])))
            self.last_trade[ev["s"]] = max(self.last_trade.get(ev["s"], 0), int(ev["t"]))
            n_asset = ev.get("N") or quote
            fields.update(trade_id=int(ev["t"]), last_px=to_fixed(ev["L"]), last_qty=to_fixed(ev["l"]),
                          commission=to_fixed(ev["n"]), commission_asset=0 if n_asset == quote else
                          (1 if n_asset == base else 2), is_maker=int(bool(ev.get("m"))))
            self.stats["fills"] += 1
        elif x == EX_CANCELED:
            self.stats["canceled"] += 1
        if not late:
            rec["state"] = st
            rec["cum_qty"] = cum_qty
        self._report(rec, **fields)
        if st in FINAL:
            self.orders.pop(cid, None)

    def _report(self, rec: dict, **fields: Any) -> None:
        r = {"recv_ns": rec.get("recv_ns", 0), "in_pub_ns": rec.get("pub_ns", 0),
             "client_order_id": rec["client_order_id"], "symbol": rec["symbol"], "side": rec["side"],
             "order_id": -1, "trade_id": -1, "ref_px": rec.get("ref_px", 0)}
        r.update(fields)
        self.reports.append(r)
        self.stats["reports"] += 1


def ws_api_url(cfg) -> str:
    """``execution.ws_api_url``, or: sim -> the simulator's own server (``market_data.ws_url``); live -> Binance."""
    if cfg.execution.ws_api_url:
        return cfg.execution.ws_api_url
    if cfg.mode == "sim":
        return cfg.market_data.ws_url.rstrip("/") + "/ws-api/v3"
    return "wss://ws-api.binance.com:443/ws-api/v3"


def rest_url(cfg) -> str:
    """The REST base of ``execution.transport: "rest"``: sim -> the simulator's own server
    (``market_data.rest_url``); live -> ``execution.rest_url``."""
    if cfg.mode == "sim":
        return cfg.market_data.rest_url.rstrip("/")
    return cfg.execution.rest_url.rstrip("/")


def _unknown(exc: BaseException) -> bool:
    from processes.venue_client import VenueTransportError

    return isinstance(exc, VenueTransportError)


def _cid_of(wire: str | None, instance: str) -> int | None:
    if not wire or not wire.startswith(instance + "-"):
        return None
    tail = wire[len(instance) + 1:]
    return int(tail) if tail.isdigit() else None

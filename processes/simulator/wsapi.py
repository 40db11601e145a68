"""The simulator's Binance Spot WebSocket API (``/ws-api/v3``): order entry, queries, sessions and the user data stream.

One aiohttp WebSocket per connection on the simulator's host:port. Requests
and responses are Binance's envelopes, one JSON object per text frame::

    -> {"id": 7, "method": "order.place", "params": {"symbol": "BTCUSDT", ..., "timestamp": ..}}
    <- {"id": 7, "status": 200, "result": {...}, "rateLimits": [...]}
    <- {"id": 7, "status": 400, "error": {"code": -2010, "msg": "..."}, "rateLimits": [...]}
    <- {"subscriptionId": 0, "event": {"e": "executionReport", ...}}     (user data, no id)
    <- {"event": {"e": "serverShutdown", "E": 1770123456789}}           (no subscriptionId)

The work is ``orders.OrderService`` (the same operations as the REST
endpoints, ``dispatch(op, account, params)``) and ``auth.Authenticator``;
this module is the transport: envelopes, sessions, subscriptions, weights,
the connection rules and the WS-side faults.

Methods (weight; security)
--------------------------
``ping`` (1) ``{}``; ``time`` (1) ``{"serverTime"}``;
``order.place`` / ``order.cancel`` / ``openOrders.cancelAll`` (0 when they
succeed, 1 when they fail; TRADE), ``order.test`` (1, 20 with
``computeCommissionRates``), ``order.status`` (4), ``openOrders.status`` (6
with symbol, 80 without), ``allOrders`` (20), ``myTrades`` (20, 5 with
orderId), ``account.status`` (20), ``account.rateLimits.orders`` (40)
(USER_DATA); ``session.logon`` / ``session.status`` / ``session.logout`` /
``session.subscriptions`` (2); ``userDataStream.subscribe`` /
``userDataStream.subscribe.signature`` / ``userDataStream.unsubscribe`` (2).
A ``"v3/"`` prefix on a method name is accepted.

Authentication
--------------
* Per request: ``apiKey``, ``timestamp``, ``signature`` (+ ``recvWindow``)
  in ``params``, signed over every param but ``signature`` sorted by name
  (``auth.ws_payload``; ``returnRateLimits`` is signed like any param). HMAC
  or Ed25519, by the key's type.
* ``session.logon`` (Ed25519 keys only; an HMAC key gets 401 -2015): later
  requests on the connection may omit ``apiKey`` and ``signature`` but still
  carry ``timestamp``. A request that does carry a ``signature`` is checked
  on its own and acts for its own key (overrides the session key). A second
  logon swaps the key; ``session.logout`` forgets it (the connection stays).
* A signed request without ``apiKey`` on a connection that is not logged on:
  -1102 "Mandatory parameter 'apiKey' ..." [inference: the WS API takes the
  key as a param]. Key revocation (401 with id null) is not simulated: keys
  are fixed at start.

User data stream
----------------
``userDataStream.subscribe.signature`` (any key type, no logon needed) or
``userDataStream.subscribe`` (needs a logon, else -1002) answer
``{"subscriptionId": N}``, N counting from 0 per connection. One
subscription per account per connection (a second: -2035); at most 65,535
over a connection's life (then -2042). Every ``executionReport``,
``outboundAccountPosition`` and ``balanceUpdate`` of the account
(``OrderService.add_listener``; built there with every documented field)
then goes to every connection subscribed to it, wrapped as
``{"subscriptionId": N, "event": ...}``, in exchange order. Events caused by
a request on the same connection are queued before its response, so they
arrive first (unless a fault below says otherwise).
``userDataStream.unsubscribe`` (``subscriptionId`` or none = all; an unknown
id is not an error: ``{}``) and ``session.logout`` (only the logon-based
subscription; so does a logon that swaps to another account) end a
subscription with ``{"subscriptionId": N, "event": {"e":
"eventStreamTerminated", "E": ms}}``, queued before the method's response:
once the response is read, nothing more comes from that subscription.
Not simulated: ``listStatus`` and ``externalLockUpdate`` (no order lists,
no external locks), and ``executionReport`` with ``x=REJECTED`` (Binance
sends it only for cancelReplace; an order the engine refuses is answered
-2010 with no event).

Rate limits
-----------
``REQUEST_WEIGHT`` is ``Simulator.limiter``: per IP, shared with REST (a
connection costs 2 when it opens). Responses carry ``rateLimits``:
REQUEST_WEIGHT (count after this request), plus both ORDERS entries (per
account, ``OrderService.rate_limits``) for ``order.place`` once the account
is known. ``returnRateLimits`` (URL query or per request) hides them. Past
the weight limit: 429 -1003; banned: 418 -1003 and the connection is closed
after the answer (Binance drops the WS session of a banned IP); both carry
``error.data = {"serverTime", "retryAfter"}`` (ms), as does 429 -1015
(ORDERS). Connection attempts: 300 per 5 minutes per IP, beyond that the
HTTP upgrade is refused with 429.

Malformed requests [inference: Binance documents the envelope, not these
answers; the codes are errors.md's]: a frame that is not a JSON object
(binary frames included) -> id null, 400, -1135 "Invalid JSON Request";
``id`` missing or not an int64 / ``[A-Za-z0-9_-]{1,36}`` string / null ->
id null, 400, -1102 for 'id'; ``method`` missing -> -1102 for 'method';
unknown method -> -1020; ``params`` not an object -> -1135 "JSON sent for
parameter 'params' is not valid"; a param that is an object or array ->
-1100; an unexpected param on a session method -> -1104. These envelope
errors charge no weight and carry no ``rateLimits``. The connection stays
open after any of them.

Connection rules
----------------
Like the market streams: a ping frame every ``ping_interval_s`` (payload:
the send time in ms); a connection whose pong (echoing a ping's payload) is
``pong_timeout_s`` late is dropped (unsolicited pongs do not count, as on
Binance); client pings are answered with pongs. A connection is closed with
1001 "going away" after ``ws_api_max_lifetime_s`` (Binance: 24 h).
``POST /sim/shutdown_notice`` sends ``{"event": {"e": "serverShutdown",
"E": ms}}``; ``POST /sim/disconnect`` drops every connection (TCP abort).
A client that lets ``MAX_QUEUED_FRAMES`` frames pile up unread is dropped.

Faults (``simulator.faults`` / ``POST /sim/fault``; faults.py documents the keys)
--------------------------------------------------------------------------
Order entry (``order.place``, ``order.cancel``, ``openOrders.cancelAll``)
takes the next entry of the one ``order_fault_sequence`` shared with REST
(``Simulator.next_order_fault``), after authentication:

* ``drop``: the request IS executed; the connection is then aborted (TCP,
  no close frame) before its response. Frames queued before the request
  still go out; nothing caused by the request reaches this connection
  (its user-data events are not delivered here; other connections
  subscribed to the account get them). ``order.status`` by
  ``origClientOrderId`` on a new connection shows what happened.
* ``hang``: executed; the response is held ``order_hang_s``, then it is
  504 -1007 (if the connection is still open). Other requests on the
  connection are answered meanwhile.
* ``500`` / ``502`` / ``503`` / ``504``: executed; answered with that
  status and REST's code for it (-1001 / -1007 / -1008 / -1007).
* ``429`` / ``418``: NOT executed; 429 -1015 (order.place, else -1003) /
  418 -1003, ``error.data.retryAfter`` = now + ``retry_after_s``; after a
  418 the connection is closed (1008), as for a real ban.
* ``order_ack_delay_ms``: executed on arrival, the response sent that much
  later (the user-data events go out at once, before it).
* ``clock_skew_ms`` moves the server clock of ``time``, the timestamp check
  and every event / response time, as on REST.

User-data events (per connection, a ``random.Random`` seeded by (simulator
seed, connection number), so a run replays; a probability of 0 never draws):

* ``user_event_duplicate_probability``: the event frame is sent twice in a
  row (byte-identical: same ``subscriptionId``, same ``I`` execution id).
* ``user_event_reorder_probability``: the frame is held back and sent right
  after the next event frame of this connection (and that frame's
  duplicate, if any); if no other event follows in the same burst (the
  events of one request or one market step), it is sent at the end of the
  burst, which can be after the request's response. With probability 1
  every pair of events is swapped (1,2,3,4 -> 2,1,4,3). A subscription's
  held frame is sent before its ``eventStreamTerminated``.

``rest_status_sequence`` and the market-stream faults do not apply here.
Not simulated: ``timeUnit=MICROSECOND`` (times are ms), SBE, order lists,
``order.cancelReplace`` / amend, ``exchangeInfo`` and market-data methods
(REST has them), WAF 403s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from processes.simulator.auth import BinanceError, err_mandatory
from processes.simulator.faults import order_fault_body, rest_error_body
from processes.simulator.orders import OPS, ZERO_WEIGHT_ON_SUCCESS, normalize_params, request_weight

log = logging.getLogger("ringtrader.simulator.wsapi")

WS_API_PATH = "/ws-api/v3"
CONNECT_WEIGHT = 2  # "Connecting to WebSocket API costs 2 weight"
CONNECTIONS_PER_WINDOW = 300  # connection attempts per IP ...
CONNECTION_WINDOW_S = 300.0  # ... per 5 minutes
MAX_ACTIVE_SUBSCRIPTIONS = 1000  # per connection
MAX_SUBSCRIPTION_IDS = 65_535  # per connection, over its life
MAX_QUEUED_FRAMES = 10_000  # unsent frames before a connection is dropped as too slow
MAX_MSG_BYTES = 1 << 20
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")  # the docs' "alphanumeric, up to 36" incl. UUIDs' dashes

# weights of the methods that are not order operations (orders.request_weight has the others)
SESSION_WEIGHTS = {
    "ping": 1, "time": 1, "session.logon": 2, "session.status": 2, "session.logout": 2,
    "session.subscriptions": 2, "userDataStream.subscribe": 2, "userDataStream.subscribe.signature": 2,
    "userDataStream.unsubscribe": 2,
}  # fmt: skip
SIGNED_SESSION_PARAMS = frozenset({"apiKey", "timestamp", "signature", "recvWindow"})
SESSION_PARAMS: dict[str, frozenset[str]] = {
    "ping": frozenset(), "time": frozenset(), "session.status": frozenset(), "session.logout": frozenset(),
    "session.subscriptions": frozenset(), "userDataStream.subscribe": frozenset(),
    "session.logon": SIGNED_SESSION_PARAMS, "userDataStream.subscribe.signature": SIGNED_SESSION_PARAMS,
    "userDataStream.unsubscribe": frozenset({"subscriptionId"}),
}  # fmt: skip

# queue sentinels (everything else in a session's queue is a text frame, bytes)
_ABORT = "abort"  # drop the TCP connection after the frames before it
_CLOSE = "close"  # send a close frame after the frames before it

MSG_INVALID_JSON = "Invalid JSON Request"
MSG_UNSUPPORTED = "This operation is not supported."
MSG_UNAUTHORIZED = "You are not authorized to execute this request."
MSG_SUB_ACTIVE = "User Data Stream subscription already active."
MSG_MAX_SUB_IDS = "Maximum subscription ID reached for this connection."


class _Limited(BinanceError):
    """A 429 / 418 answer: ``error.data`` carries ``serverTime`` and ``retryAfter`` (ms)."""

    def __init__(self, code: int, msg: str, status: int, server_ms: int, retry_after_ms: int):
        super().__init__(code, msg, status)
        self.data = {"serverTime": server_ms, "retryAfter": retry_after_ms}


def _unread(n_read: int, n_sent: int) -> BinanceError:
    return BinanceError(-1104, f"Not all sent parameters were read; read '{n_read}' parameter(s) but was sent "
                               f"'{n_sent}'.")  # fmt: skip


def _valid_id(rid: Any) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**63
    return isinstance(rid, str) and ID_RE.match(rid) is not None


@dataclass(slots=True)
class Logon:
    """The key a connection is logged on with (``session.logon``)."""

    api_key: str
    account: str
    since_ms: int  # server clock


@dataclass(slots=True)
class Subscription:
    """One user-data subscription of a connection."""

    sub_id: int
    account: str
    by_logon: bool  # userDataStream.subscribe (ends at logout) vs .subscribe.signature
    listener: Callable[[dict], None]


class WsApiSession:
    """One ``/ws-api/v3`` connection: its logon, subscriptions, send queue and fault state.

    Everything runs on the simulator's event loop. Requests are handled in
    arrival order, synchronously (the order service answers at once); only
    a held answer (ack delay, ``hang``) waits in a task. Every frame goes
    through one queue drained by one writer task, so responses and events
    leave in the order they were made.
    """

    def __init__(self, api: "WsApi", request: web.Request, ws: web.WebSocketResponse, conn_no: int, ip: str):
        self.api = api
        self.sim = api.sim
        self.request = request
        self.ws = ws
        self.conn_no = conn_no
        self.ip = ip
        self.connected_ms = self.sim.server_ms()
        self.return_rate_limits = request.query.get("returnRateLimits", "true").lower() != "false"
        self.queue: asyncio.Queue = asyncio.Queue()
        self.logon: Logon | None = None
        self.subs: dict[int, Subscription] = {}
        self.next_sub_id = 0
        self.closed = False
        self.muted = False  # a "drop"-faulted request is running: its events do not reach this connection
        self.pending_pings: set[bytes] = set()
        self.unanswered_since: float | None = None  # monotonic time of the oldest ping without its pong
        self.tasks: set[asyncio.Task] = set()
        self.rng = random.Random((self.sim.cfg.seed * 1_000_003 + conn_no) ^ 0x5EED_0A91)
        self.held: bytes | None = None  # a user-data frame held back by the reorder fault
        self.held_sub: int = -1

    # -- output ---------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= MAX_QUEUED_FRAMES:
            log.warning("ws-api connection %d too slow (%d frames queued): dropping it", self.conn_no,
                        self.queue.qsize())  # fmt: skip
            self.api.stats["slow_drops"] += 1
            self.abort()
            return
        self.queue.put_nowait(item)

    def send(self, frame: bytes) -> None:
        self._put(frame)

    def abort(self) -> None:
        """Drop the TCP connection now (no close frame), unsent frames lost."""
        self.closed = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self.queue.put_nowait(_ABORT)

    def close_after_queued(self, code: int, message: bytes) -> None:
        """Send what is queued, then a close frame; nothing more is queued or read."""
        self._put((_CLOSE, code, message))
        self.closed = True

    def abort_after_queued(self) -> None:
        """Send what is queued, then drop the TCP connection without a close frame; nothing more is read."""
        self._put(_ABORT)
        self.closed = True

    async def writer(self) -> None:
        ws = self.ws
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, bytes):
                    if ws.closed:
                        return
                    await ws.send_frame(item, WSMsgType.TEXT)
                    continue
                if item == _ABORT:
                    self.closed = True
                    transport = self.request.transport
                    if transport is not None:
                        transport.abort()
                    return
                _, code, message = item
                self.closed = True
                await ws.close(code=code, message=message)
                return
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: aiohttp refuses a closing transport
            log.debug("ws-api connection %d writer ended: %r", self.conn_no, exc)
        finally:
            self.closed = True

    async def pinger(self) -> None:
        cfg = self.sim.cfg
        interval, timeout = cfg.ping_interval_s, cfg.pong_timeout_s
        while not self.closed and not self.ws.closed:
            await asyncio.sleep(interval)
            if self.closed or self.ws.closed:
                return
            now = time.monotonic()
            if self.unanswered_since is not None and now - self.unanswered_since > timeout:
                log.info("ws-api connection %d: no pong for %.1f s, dropping it", self.conn_no, timeout)
                self.api.stats["pong_timeouts"] += 1
                self.abort()
                return
            payload = str(time.time_ns() // 1_000_000).encode()
            self.pending_pings.add(payload)
            if self.unanswered_since is None:
                self.unanswered_since = now
            try:
                await self.ws.ping(payload)
                self.api.stats["pings_sent"] += 1
            except (ConnectionError, RuntimeError) as exc:
                log.debug("ws-api connection %d ping failed: %r", self.conn_no, exc)
                return

    def on_pong(self, payload: bytes) -> None:
        """A pong counts only if it echoes one of our pings (Binance: unsolicited pongs do not keep it alive)."""
        if payload in self.pending_pings:
            self.pending_pings.clear()
            self.unanswered_since = None

    def _respond(self, rid: Any, status: int, result: Any = None, error: dict | None = None,
                 rate_limits: list | None = None, show_limits: bool = True) -> bytes:  # fmt: skip
        d: dict[str, Any] = {"id": rid, "status": status}
        if error is None:
            d["result"] = result
        else:
            d["error"] = error
        if show_limits and rate_limits is not None:
            d["rateLimits"] = rate_limits
        self.api.stats["responses"] += 1
        if status != 200:
            self.api.stats["errors"] += 1
        return orjson.dumps(d)

    def _envelope_error(self, rid: Any, code: int, msg: str) -> None:
        self.send(self._respond(rid, 400, error={"code": code, "msg": msg}))

    # -- user data -------------------------------------------------------------------------------
    def _deliver(self, sub_id: int, ev: dict) -> None:
        """An account event for subscription ``sub_id`` (OrderService listener; synchronous, never raises)."""
        if self.closed or self.muted:
            return
        frame = b'{"subscriptionId":%d,"event":%s}' % (sub_id, orjson.dumps(ev))
        stats = self.api.stats
        f = self.sim.hub.faults
        p_reorder, p_dup = f.user_event_reorder_probability, f.user_event_duplicate_probability
        if self.held is None and p_reorder > 0.0 and self.rng.random() < p_reorder:
            self.held, self.held_sub = frame, sub_id
            stats["event_reorders"] += 1
            asyncio.get_running_loop().call_soon(self._flush_held)  # the end of this burst
            return
        self.send(frame)
        stats["events_sent"] += 1
        if p_dup > 0.0 and self.rng.random() < p_dup:
            self.send(frame)
            stats["event_duplicates"] += 1
        self._flush_held()

    def _flush_held(self) -> None:
        if self.held is not None:
            frame, self.held = self.held, None
            self.send(frame)
            self.api.stats["events_sent"] += 1

    def _subscribe(self, account: str, by_logon: bool) -> int:
        if any(s.account == account for s in self.subs.values()):
            raise BinanceError(-2035, MSG_SUB_ACTIVE)
        if self.next_sub_id >= MAX_SUBSCRIPTION_IDS or len(self.subs) >= MAX_ACTIVE_SUBSCRIPTIONS:
            raise BinanceError(-2042, MSG_MAX_SUB_IDS)
        sub_id = self.next_sub_id
        self.next_sub_id += 1

        def listener(ev: dict, sub_id=sub_id) -> None:
            self._deliver(sub_id, ev)

        self.subs[sub_id] = Subscription(sub_id, account, by_logon, listener)
        self.sim.orders.add_listener(account, listener)
        self.api.stats["subscriptions"] += 1
        return sub_id

    def _terminate(self, sub_id: int, notify: bool = True) -> None:
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            return
        self.sim.orders.remove_listener(sub.account, sub.listener)
        if self.held is not None and self.held_sub == sub_id:
            self._flush_held()
        if notify:
            self.send(b'{"subscriptionId":%d,"event":%s}' % (
                sub_id, orjson.dumps({"e": "eventStreamTerminated", "E": self.sim.server_ms()})))

    def drop_subscriptions(self) -> None:
        """The connection is gone: its subscriptions end with it (no event: there is no one to tell)."""
        for sub_id in list(self.subs):
            self._terminate(sub_id, notify=False)

    # -- requests ---------------------------------------------------------------------------------
    def on_text(self, text: str | bytes) -> None:
        """Handle one request frame; every outcome is a response frame (or a documented fault)."""
        self.api.stats["requests"] += 1
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self._envelope_error(None, -1135, MSG_INVALID_JSON)
        if not isinstance(req, dict):
            return self._envelope_error(None, -1135, MSG_INVALID_JSON)
        if "id" not in req or not _valid_id(req["id"]):
            return self._envelope_error(None, -1102, err_mandatory("id").msg)
        rid = req["id"]
        method = req.get("method")
        if not isinstance(method, str) or not method:
            return self._envelope_error(rid, -1102, err_mandatory("method").msg)
        if method.startswith("v3/"):
            method = method[3:]
        if method not in SESSION_WEIGHTS and method not in OPS:
            return self._envelope_error(rid, -1020, MSG_UNSUPPORTED)
        raw = req.get("params", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return self._envelope_error(rid, -1135, "JSON sent for parameter 'params' is not valid")
        for k, v in raw.items():
            if isinstance(v, (dict, list)):
                return self._envelope_error(rid, -1100, f"Illegal characters found in parameter '{k}'.")
        show = self.return_rate_limits
        rrl = raw.get("returnRateLimits")
        if rrl is not None:
            if rrl in (True, "true"):
                show = True
            elif rrl in (False, "false"):
                show = False
            else:
                return self._envelope_error(rid, -1100, "Illegal characters found in parameter "
                                                        "'returnRateLimits'; legal range is 'true, false'.")
        if method in OPS:
            self._order_op(rid, method, raw, show)
        else:
            self._session_op(rid, method, raw, show)

    def _charge(self, weight: int) -> tuple[int, BinanceError | None, bool]:
        """Charge REQUEST_WEIGHT; (used, the 429/418 error if over the limit, banned)."""
        used, status, retry_after = self.sim.limiter.charge(self.ip, weight)
        if status == 200:
            return used, None, False
        now = self.sim.server_ms()
        until = now + math.ceil(retry_after * 1000)
        body = rest_error_body(status, limit=self.sim.limiter.limit, until_ms=until)
        self.api.stats[f"rate_limited_{status}"] += 1
        return used, _Limited(body["code"], body["msg"], status, now, until), status == 418

    def _weight_limits(self, used: int) -> list[dict[str, Any]]:
        return [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": self.sim.limiter.limit, "count": used}]  # fmt: skip

    def _error(self, rid: Any, exc: BinanceError, limits: list | None, show: bool) -> bytes:
        err: dict[str, Any] = exc.body()
        data = exc.data if isinstance(exc, _Limited) else None
        if data is None and exc.status in (418, 429):  # -1015 from the order service: Retry-After in s
            now = self.sim.server_ms()
            ra = exc.headers.get("Retry-After")
            data = {"serverTime": now, "retryAfter": now + 1000 * int(ra) if ra and ra.isdigit() else now}
        if data is not None:
            err["data"] = data
        return self._respond(rid, exc.status, error=err, rate_limits=limits, show_limits=show)

    def _account(self, raw: Mapping[str, Any]) -> str:
        """The account a signed request acts for: its own signature, else the session's logon."""
        auth = self.sim.auth
        logon = self.logon
        key = raw.get("apiKey")
        if "signature" in raw or logon is None or (key is not None and key != logon.api_key):
            if key is None:
                raise err_mandatory("apiKey")
            return auth.ws(raw)
        auth.check_timestamp(raw)
        return logon.account

    def _order_op(self, rid: Any, op: str, raw: dict, show: bool) -> None:
        """An order-service operation: weight, authentication, the order fault due, dispatch, answer."""
        params = normalize_params(raw)
        params.pop("returnRateLimits", None)
        used, limited, banned = self._charge(request_weight(op, params))
        if limited is not None:
            self.send(self._error(rid, limited, self._weight_limits(used), show))
            if banned:
                self.close_after_queued(WSCloseCode.POLICY_VIOLATION, b"IP banned")
            return
        account: str | None = None
        try:
            account = self._account(raw)
        except BinanceError as exc:
            self._fail(rid, op, exc, None, show)
            return
        faults = self.sim.hub.faults
        fault = self.sim.next_order_fault(op)
        if fault in ("418", "429"):  # refused before the engine
            now = self.sim.server_ms()
            until = now + faults.retry_after_s * 1000
            status, body = order_fault_body(fault, is_new_order=op == "order.place", until_ms=until,
                                            limit_10s=self.sim.cfg.orders_per_10s)  # fmt: skip
            self._fail(rid, op, _Limited(body["code"], body["msg"], status, now, until), account, show)
            if fault == "418":
                self.close_after_queued(WSCloseCode.POLICY_VIOLATION, b"IP banned")
            return
        if fault == "drop":
            self.muted = True
        try:
            reply = self.sim.orders.dispatch(op, account, params)
            error = None
        except BinanceError as exc:
            reply, error = None, exc
        finally:
            self.muted = False
        if fault == "drop":
            self._drop()
            return
        if fault != "ok":
            self._faulted_answer(rid, op, fault)
            return
        if error is not None:
            frame = self._fail_frame(rid, op, error, account, show)
        else:
            limits = self._weight_limits(used)
            if op == "order.place":
                limits = self.sim.orders.rate_limits(account) + limits
            frame = self._respond(rid, 200, result=reply.body, rate_limits=limits, show_limits=show)
        delay_ms = faults.order_ack_delay_ms if op in ZERO_WEIGHT_ON_SUCCESS else 0
        if delay_ms:  # as REST: the answer (success or refusal) is late, the events are not
            self._later(delay_ms / 1000.0, frame)
        else:
            self.send(frame)

    def _fail(self, rid: Any, op: str, exc: BinanceError, account: str | None, show: bool) -> None:
        self.send(self._fail_frame(rid, op, exc, account, show))

    def _fail_frame(self, rid: Any, op: str, exc: BinanceError, account: str | None, show: bool) -> bytes:
        used = self.sim.limiter.add(self.ip, 1 if op in ZERO_WEIGHT_ON_SUCCESS else 0)  # failures pay weight 1
        limits = self._weight_limits(used)
        if op == "order.place" and account is not None:
            limits = self.sim.orders.rate_limits(account) + limits
        return self._error(rid, exc, limits, show)

    def _drop(self) -> None:
        self.api.stats["order_drops"] += 1
        self.abort_after_queued()

    def _faulted_answer(self, rid: Any, op: str, fault: str) -> None:
        """``hang`` or a 5xx: the request happened; the answer says the outcome is unknown."""
        status, body = order_fault_body(fault, is_new_order=op == "order.place")
        frame = self._respond(rid, status, error=body)
        if fault == "hang":
            self._later(self.sim.hub.faults.order_hang_s, frame)
        else:
            self.send(frame)

    def _later(self, delay_s: float, frame: bytes) -> None:
        async def send_later() -> None:
            await asyncio.sleep(delay_s)
            self.send(frame)

        task = asyncio.get_running_loop().create_task(send_later())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- session methods --------------------------------------------------------------------------
    def _status_body(self) -> dict[str, Any]:
        logon = self.logon
        return {
            "apiKey": logon.api_key if logon else None,
            "authorizedSince": logon.since_ms if logon else None,
            "connectedSince": self.connected_ms,
            "returnRateLimits": self.return_rate_limits,
            "serverTime": self.sim.server_ms(),
            "userDataStream": bool(self.subs),
        }

    def _session_op(self, rid: Any, method: str, raw: dict, show: bool) -> None:
        used, limited, banned = self._charge(SESSION_WEIGHTS[method])
        limits = self._weight_limits(used)
        if limited is not None:
            self.send(self._error(rid, limited, limits, show))
            if banned:
                self.close_after_queued(WSCloseCode.POLICY_VIOLATION, b"IP banned")
            return
        try:
            allowed = SESSION_PARAMS[method]
            sent = [k for k in raw if k != "returnRateLimits"]
            if any(k not in allowed for k in sent):
                raise _unread(sum(k in allowed for k in sent), len(sent))
            result = getattr(self, "_m_" + method.replace(".", "_"))(raw)
        except BinanceError as exc:
            self.send(self._error(rid, exc, limits, show))
            return
        self.send(self._respond(rid, 200, result=result, rate_limits=limits, show_limits=show))

    def _m_ping(self, raw: dict) -> dict:
        return {}

    def _m_time(self, raw: dict) -> dict:
        return {"serverTime": self.sim.server_ms()}

    def _m_session_logon(self, raw: dict) -> dict:
        if raw.get("apiKey") is None:
            raise err_mandatory("apiKey")
        account = self.sim.auth.ws_logon(raw)
        old = self.logon
        if old is not None and old.account != account:  # the logon subscription belonged to the old key
            for sub in [s for s in self.subs.values() if s.by_logon]:
                self._terminate(sub.sub_id)
        self.logon = Logon(str(raw["apiKey"]), account, self.sim.server_ms())
        self.api.stats["logons"] += 1
        return self._status_body()

    def _m_session_status(self, raw: dict) -> dict:
        return self._status_body()

    def _m_session_logout(self, raw: dict) -> dict:
        for sub in [s for s in self.subs.values() if s.by_logon]:
            self._terminate(sub.sub_id)
        self.logon = None
        return self._status_body()

    def _m_session_subscriptions(self, raw: dict) -> list:
        return [{"subscriptionId": i} for i in sorted(self.subs)]

    def _m_userDataStream_subscribe(self, raw: dict) -> dict:
        if self.logon is None:
            raise BinanceError(-1002, MSG_UNAUTHORIZED)
        return {"subscriptionId": self._subscribe(self.logon.account, by_logon=True)}

    def _m_userDataStream_subscribe_signature(self, raw: dict) -> dict:
        if raw.get("apiKey") is None:
            raise err_mandatory("apiKey")
        account = self.sim.auth.ws(raw)
        return {"subscriptionId": self._subscribe(account, by_logon=False)}

    def _m_userDataStream_unsubscribe(self, raw: dict) -> dict:
        sid = raw.get("subscriptionId")
        if sid is None:
            for sub_id in sorted(self.subs):
                self._terminate(sub_id)
            return {}
        if isinstance(sid, bool) or not isinstance(sid, (int, str)) or not str(sid).isdigit():
            raise BinanceError(-1100, "Illegal characters found in parameter 'subscriptionId'; legal range is "
                                      "'^[0-9]{1,20}$'.")  # fmt: skip
        self._terminate(int(sid))
        return {}

    def cancel_tasks(self) -> None:
        for t in list(self.tasks):
            t.cancel()


class WsApi:
    """Every ``/ws-api/v3`` connection of one simulator (``Simulator.wsapi``)."""

    def __init__(self, sim: Any):
        self.sim = sim
        self.sessions: set[WsApiSession] = set()
        self._conn_no = 0
        self._attempts: dict[str, collections.deque] = {}
        self.stats: collections.Counter = collections.Counter()

    def _connection_allowed(self, ip: str) -> bool:
        now = time.monotonic()
        q = self._attempts.setdefault(ip, collections.deque())
        while q and now - q[0] > CONNECTION_WINDOW_S:
            q.popleft()
        if len(q) >= CONNECTIONS_PER_WINDOW:
            return False
        q.append(now)
        return True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of ``GET /ws-api/v3``."""
        sim = self.sim
        ip = request.remote or "?"
        if not self._connection_allowed(ip):
            self.stats["connections_refused"] += 1
            body = {"code": -1003, "msg": f"Too many connection attempts from IP; current limit is "
                                          f"{CONNECTIONS_PER_WINDOW} per 5 MINUTE."}  # fmt: skip
            return web.Response(status=429, body=orjson.dumps(body), content_type="application/json")
        used, status, retry_after = sim.limiter.charge(ip, CONNECT_WEIGHT)
        if status != 200:
            self.stats["connections_refused"] += 1
            body = rest_error_body(status, limit=sim.limiter.limit,
                                   until_ms=sim.server_ms() + math.ceil(retry_after * 1000))  # fmt: skip
            return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                                headers={"Retry-After": str(max(0, math.ceil(retry_after)))})  # fmt: skip
        # autoping off: pongs to our pings are tracked here, client pings answered below; a short close
        # handshake so a dead peer cannot hold up shutdown
        ws = web.WebSocketResponse(autoping=False, max_msg_size=MAX_MSG_BYTES, compress=False, timeout=2.0)
        await ws.prepare(request)
        self._conn_no += 1
        session = WsApiSession(self, request, ws, self._conn_no, ip)
        self.sessions.add(session)
        self.stats["connections"] += 1
        loop = asyncio.get_running_loop()
        writer = loop.create_task(session.writer())
        pinger = loop.create_task(session.pinger())
        lifetime = loop.call_later(sim.cfg.ws_api_max_lifetime_s, self._expire, session)
        try:
            async for msg in ws:
                if session.closed:
                    break
                if msg.type == WSMsgType.TEXT:
                    try:
                        session.on_text(msg.data)
                    except Exception:  # a handler bug answers -1000 and is logged; the connection lives on
                        self.stats["handler_errors"] += 1
                        log.exception("ws-api connection %d: request failed", session.conn_no)
                        session.send(session._respond(None, 500, error={
                            "code": -1000, "msg": "An unknown error occurred while processing the request."}))
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    session.on_pong(bytes(msg.data))  # aiohttp hands a bytearray
                elif msg.type == WSMsgType.BINARY:
                    session._envelope_error(None, -1135, MSG_INVALID_JSON)
        except ConnectionError as exc:
            log.debug("ws-api connection %d reader ended: %r", session.conn_no, exc)
        finally:
            lifetime.cancel()
            self.sessions.discard(session)
            session.drop_subscriptions()
            session.cancel_tasks()
            if not session.closed:
                session.closed = True
                session.queue.put_nowait(_ABORT if ws.closed else (_CLOSE, WSCloseCode.GOING_AWAY, b""))
            pinger.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(writer), 2.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                writer.cancel()
            await asyncio.gather(writer, pinger, return_exceptions=True)
        return ws

    def _expire(self, session: WsApiSession) -> None:
        self.stats["lifetime_closes"] += 1
        session.close_after_queued(WSCloseCode.GOING_AWAY, b"connection lifetime reached")

    def shutdown_notice(self) -> int:
        """Send ``serverShutdown`` to every connection; returns how many."""
        frame = orjson.dumps({"event": {"e": "serverShutdown", "E": self.sim.server_ms()}})
        for s in self.sessions:
            s.send(frame)
        return len(self.sessions)

    def disconnect_all(self) -> int:
        """Abort every connection (no close frame); returns how many."""
        n = len(self.sessions)
        for s in list(self.sessions):
            s.abort()
        return n

    async def stop(self) -> None:
        """Close every connection (1001): the simulator is stopping."""
        for s in list(self.sessions):
            s.cancel_tasks()
            s.closed = True
            try:
                await s.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
            except (ConnectionError, RuntimeError) as exc:
                log.debug("ws-api close on stop failed: %r", exc)

    def stats_dict(self) -> dict[str, int]:
        return {"open": len(self.sessions), **self.stats}

"""The simulator's aiohttp app: Binance Spot market streams, public REST, and a control API.

Endpoints (all on one host:port):

WebSocket (text frames, exactly as Binance sends them)
  /ws/<stream>[/<stream>...]     raw streams: bare payloads
  /ws                            raw, subscribe later
  /stream?streams=<s1>/<s2>      combined: {"stream":<name>,"data":<payload>}
  control frames: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY /
  GET_PROPERTY ["combined"]; the server pings every ping_interval_s and drops
  a connection whose pong is pong_timeout_s late.
REST (Binance bodies, X-MBX-USED-WEIGHT-1M on every answer, 429/418 + Retry-After)
  GET /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo, /api/v3/depth
  SIGNED (X-MBX-APIKEY + signature, auth.py; orders.py does the work):
  POST /api/v3/order, /api/v3/order/test; GET/DELETE /api/v3/order;
  GET/DELETE /api/v3/openOrders; GET /api/v3/allOrders, /api/v3/myTrades,
  /api/v3/account, /api/v3/rateLimit/order
WebSocket API (wsapi.py: order entry, queries, session.logon, the user data stream)
  /ws-api/v3[?returnRateLimits=false]
Control (not rate limited, not faulted; for tests and operators)
  GET  /sim/stats                   counters as JSON
  GET  /sim/accounts                balances, fees collected, conservation check
  POST /sim/balance                 {"account", "asset", "delta"}: deposit/withdraw (balanceUpdate event)
  POST /sim/fault                   JSON object merged into the fault config
  POST /sim/shutdown_notice         send serverShutdown to every WS client (streams and WS API)
  POST /sim/disconnect              drop every WS connection now (streams and WS API)
  POST /sim/pause, /sim/resume      freeze / resume the generated market (diffs
                                    still flush, so a client can catch up to a snapshot)

Sources: ``GeneratorSource`` (seeded market) or ``replay.ReplaySource``
(recorded sessions). Both hand ordered (stream, payload) frames to the
``Hub``, which fans them out to the connections that subscribed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

import numpy as np
import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from core.errors import ConfigError
from core.fixedpoint import from_fixed, to_fixed
from core.venue import depth_weight
from processes.simulator.accounts import Ledger, default_account
from processes.simulator.auth import Authenticator, BinanceError, load_keys, parse_rest
from processes.simulator.config import FaultConfig, SimulatorConfig, SymbolSpec, resolve_symbols
from processes.simulator.faults import (
    ACT_ABORT,
    ACT_CLOSE,
    BinaryFrame,
    ConnectionFaults,
    FaultStats,
    order_fault_body,
    rest_error_body,
)
from processes.simulator.orders import (
    ORDER_ENTRY_OPS,
    ORDER_TYPES,
    REST_ROUTES,
    ZERO_WEIGHT_ON_SUCCESS,
    GeneratedBook,
    OrderService,
    ReplayedBook,
    request_weight,
    split_symbol,
    symbol_filters,
)
from processes.simulator import market_kernels as mk
from processes.simulator.market import MarketGenerator, SymbolFlow
from processes.simulator.streams import StreamBuilder, canonical_stream, is_depth_stream, snapshot_payload
from processes.simulator.wsapi import WS_API_PATH, WsApi

log = logging.getLogger("ringtrader.simulator")

MAX_STREAMS_PER_CONNECTION = 1024  # Binance's limit
SHUTDOWN_STREAM = "!serverShutdown"
DEPTH_DEFAULT_LIMIT = 100
DEPTH_MAX_LIMIT = 5000
ROUTE_WEIGHTS = {"/api/v3/ping": 1, "/api/v3/time": 1, "/api/v3/exchangeInfo": 20}

Frame = tuple[str, bytes]  # (canonical stream name, raw payload)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------
# WebSocket side
# ---------------------------------------------------------------------------------------------
class WsClient:
    """One WebSocket connection: its subscriptions, its send queue and its fault state."""

    def __init__(self, hub: "Hub", request: web.Request, ws: web.WebSocketResponse, conn_no: int, combined: bool):
        self.hub = hub
        self.request = request
        self.ws = ws
        self.conn_no = conn_no
        self.combined = combined
        self.subs: dict[str, str] = {}  # canonical -> name as the client spelled it
        self.queue: asyncio.Queue = asyncio.Queue()
        self.faults = ConnectionFaults(hub.seed, conn_no, hub.fault_stats)
        self.last_pong = time.monotonic()
        self.frames_sent = 0
        self.closed = False

    def enqueue_frames(self, frames: list[Frame]) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self.hub.max_queue:
            log.warning("ws client %d too slow (%d batches queued): dropping it", self.conn_no, self.queue.qsize())
            self.hub.stats["slow_drops"] += 1
            self.abort()
            return
        self.queue.put_nowait(("data", frames))

    def enqueue_control(self, payload: bytes) -> None:
        if not self.closed:
            self.queue.put_nowait(("ctrl", payload))

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.closed = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self.queue.put_nowait(("stop", None))

    async def writer(self) -> None:
        ws = self.ws
        out: list[bytes] = []
        try:
            while True:
                kind, item = await self.queue.get()
                if kind == "stop" or ws.closed:
                    return
                if kind == "ctrl":
                    await ws.send_frame(item, WSMsgType.TEXT)
                    continue
                faults = self.hub.faults
                faulty = self.hub.faults_active
                action = 0
                for stream, raw in item:
                    given = self.subs.get(stream)
                    if given is None:
                        continue
                    frame = b'{"stream":"' + given.encode() + b'","data":' + raw + b"}" if self.combined else raw
                    if faulty:
                        action = self.faults.apply(faults, is_depth_stream(stream), frame, out)
                        if action == ACT_ABORT:
                            break
                    else:
                        out.append(frame)
                    if action == ACT_CLOSE:
                        break
                if faulty and action != ACT_ABORT:
                    self.faults.flush(out)
                for frame in out:
                    await ws.send_frame(frame, WSMsgType.BINARY if type(frame) is BinaryFrame else WSMsgType.TEXT)
                self.frames_sent += len(out)
                self.hub.stats["frames_sent"] += len(out)
                out.clear()
                if action == ACT_ABORT:
                    self.abort()
                    return
                if action == ACT_CLOSE:
                    self.closed = True
                    await ws.close(code=WSCloseCode.GOING_AWAY, message=b"disconnect_after_messages")
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError) as exc:
            # RuntimeError: aiohttp refuses to write to a closing transport
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("ws client %d writer ended: %r", self.conn_no, exc)
        finally:
            self.closed = True

    async def pinger(self, interval: float, timeout: float) -> None:
        ws = self.ws
        while not ws.closed and not self.closed:
            await asyncio.sleep(interval)
            if ws.closed or self.closed:
                return
            if time.monotonic() - self.last_pong > timeout + interval:
                log.info("ws client %d: no pong for %.1f s, closing", self.conn_no, timeout)
                self.hub.stats["pong_timeouts"] += 1
                self.abort()
                return
            try:
                await ws.ping(str(now_ms()).encode())
                self.hub.stats["pings_sent"] += 1
            except (ConnectionError, RuntimeError) as exc:
                log.debug("ws client %d ping failed: %r", self.conn_no, exc)
                return

    def handle_control(self, text: str) -> bytes:
        """Answer one JSON control frame (SUBSCRIBE & co), Binance's replies and error codes."""
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return orjson.dumps({"code": 3, "msg": f"Invalid JSON: {exc}"})
        if not isinstance(req, dict):
            return orjson.dumps({"code": 3, "msg": "Invalid JSON: expected an object"})
        rid = req.get("id")
        if rid is not None and not (
            (isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**63)
            or (isinstance(rid, str) and 0 < len(rid) <= 36 and rid.isalnum())
        ):
            return orjson.dumps({"code": 2, "msg": "Invalid request: request ID must be an unsigned integer", "id": None})
        method = req.get("method")
        params = req.get("params", [])
        if not isinstance(method, str):
            return orjson.dumps({"code": 2, "msg": "Invalid request: missing field `method`", "id": rid})
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return orjson.dumps({"code": 2, "msg": "Invalid request: params must be a list of strings", "id": rid})
            canon = []
            for p in params:
                c = canonical_stream(p)
                if c is None:
                    return orjson.dumps({"code": 2, "msg": f"Invalid request: unknown stream name {p!r}", "id": rid})
                canon.append((c, p))
            if method == "SUBSCRIBE":
                if len(self.subs.keys() | {c for c, _ in canon}) > MAX_STREAMS_PER_CONNECTION:
                    return orjson.dumps({"code": 2, "msg": "Invalid request: too many streams", "id": rid})
                for c, p in canon:
                    self.subs[c] = p
            else:
                for c, _ in canon:
                    self.subs.pop(c, None)
            self.hub.subscriptions_changed()
            return orjson.dumps({"result": None, "id": rid})
        if method == "LIST_SUBSCRIPTIONS":
            return orjson.dumps({"result": list(self.subs.values()), "id": rid})
        if method == "SET_PROPERTY":
            if (
                not isinstance(params, list) or len(params) != 2 or params[0] != "combined"
                or not isinstance(params[1], bool)
            ):  # fmt: skip
                return orjson.dumps({"code": 1, "msg": "Invalid value type: expected Boolean", "id": rid})
            self.combined = params[1]
            return orjson.dumps({"result": None, "id": rid})
        if method == "GET_PROPERTY":
            if not isinstance(params, list) or params != ["combined"]:
                return orjson.dumps({"code": 0, "msg": "Unknown property", "id": rid})
            return orjson.dumps({"result": self.combined, "id": rid})
        return orjson.dumps({"code": 2, "msg": f"Invalid request: unknown variant `{method}`", "id": rid})


class Hub:
    """All WebSocket connections; fans frames out to those subscribed."""

    def __init__(self, cfg: SimulatorConfig):
        self.seed = cfg.seed
        self.max_queue = cfg.max_client_queue
        self.ping_interval_s = cfg.ping_interval_s
        self.pong_timeout_s = cfg.pong_timeout_s
        self.clients: set[WsClient] = set()
        self.faults: FaultConfig = cfg.faults
        self.fault_stats = FaultStats()
        self.stats = {"connections": 0, "frames_sent": 0, "pings_sent": 0, "pong_timeouts": 0, "slow_drops": 0}
        self.wanted: set[str] = set()
        self._conn_no = 0
        self.on_first_client: Callable[[], None] | None = None
        self.taps: list[Callable[[list[Frame]], None]] = []  # see every broadcast batch (replayed books)

    @property
    def faults_active(self) -> bool:
        f = self.faults
        return bool(
            f.disconnect_after_messages or f.disconnect_probability or f.gap_probability
            or f.duplicate_probability or f.reorder_probability or f.malformed_probability
            or f.hostile_probability
        )  # fmt: skip

    def subscriptions_changed(self) -> None:
        wanted: set[str] = set()
        for c in self.clients:
            wanted.update(c.subs)
        self.wanted = wanted
        if wanted and self.on_first_client is not None:
            cb, self.on_first_client = self.on_first_client, None
            cb()

    def broadcast(self, frames: list[Frame]) -> None:
        if not frames:
            return
        for tap in self.taps:
            try:
                tap(frames)
            except Exception:  # a tap must not stop the market: logged, the frames still go out
                self.stats["tap_errors"] = self.stats.get("tap_errors", 0) + 1
                log.exception("broadcast tap failed")
        for c in list(self.clients):
            c.enqueue_frames(frames)

    def max_backlog(self) -> int:
        return max((c.queue.qsize() for c in self.clients), default=0)

    def shutdown_notice(self) -> int:
        payload = orjson.dumps({"e": "serverShutdown", "E": now_ms()})
        wrapped = b'{"stream":"' + SHUTDOWN_STREAM.encode() + b'","data":' + payload + b"}"
        for c in self.clients:
            c.enqueue_control(wrapped if c.combined else payload)
        return len(self.clients)

    def disconnect_all(self) -> int:
        n = len(self.clients)
        for c in list(self.clients):
            c.abort()
        return n

    async def handle(self, request: web.Request, streams: list[str], combined: bool) -> web.StreamResponse:
        canon = []
        for s in streams:
            c = canonical_stream(s)
            if c is None:
                return web.json_response({"code": -1121, "msg": f"Invalid stream name: {s}"}, status=400)
            canon.append((c, s))
        if len(canon) > MAX_STREAMS_PER_CONNECTION:
            return web.json_response({"code": -1101, "msg": "Too many streams."}, status=400)
        # autoping off: we answer client pings ourselves and track pongs to our pings
        # no permessage-deflate (Binance market streams are not compressed); a short close
        # handshake so a dead peer cannot hold up shutdown
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20, compress=False, timeout=2.0)
        await ws.prepare(request)
        self._conn_no += 1
        client = WsClient(self, request, ws, self._conn_no, combined)
        for c, s in canon:
            client.subs[c] = s
        self.clients.add(client)
        self.stats["connections"] += 1
        self.subscriptions_changed()
        writer = asyncio.create_task(client.writer())
        pinger = asyncio.create_task(client.pinger(self.ping_interval_s, self.pong_timeout_s))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    client.enqueue_control(client.handle_control(msg.data))
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    client.last_pong = time.monotonic()
                elif msg.type == WSMsgType.BINARY:
                    client.enqueue_control(orjson.dumps({"code": 3, "msg": "Invalid JSON: binary frame"}))
        except (ConnectionError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.clients.discard(client)
            self.subscriptions_changed()
            client.closed = True
            client.queue.put_nowait(("stop", None))
            pinger.cancel()
            writer.cancel()
            await asyncio.gather(writer, pinger, return_exceptions=True)
        return ws


# ---------------------------------------------------------------------------------------------
# REST side
# ---------------------------------------------------------------------------------------------
class WeightLimiter:
    """REQUEST_WEIGHT per IP per wall-clock minute, Binance style: 429 beyond the limit,
    418 (banned for ban_s) after ``ban_after_429s`` 429s in one window."""

    def __init__(self, limit: int, ban_after_429s: int, ban_s: int, clock: Callable[[], float] = time.time):
        self.limit = limit
        self.ban_after = ban_after_429s
        self.ban_s = ban_s
        self.clock = clock
        self._used: dict[str, tuple[int, int, int]] = {}  # ip -> (window, used, 429s)
        self._banned_until: dict[str, float] = {}

    def charge(self, ip: str, weight: int) -> tuple[int, int, float]:
        """Add ``weight``; return (used, status 200/429/418, retry_after_s)."""
        now = self.clock()
        window = int(now // 60)
        win, used, n429 = self._used.get(ip, (window, 0, 0))
        if win != window:
            used, n429 = 0, 0
        used += weight
        banned = self._banned_until.get(ip, 0.0)
        if banned > now:
            self._used[ip] = (window, used, n429)
            return used, 418, banned - now
        if used <= self.limit:
            self._used[ip] = (window, used, n429)
            return used, 200, 0.0
        n429 += 1
        self._used[ip] = (window, used, n429)
        if self.ban_after and n429 > self.ban_after:
            self._banned_until[ip] = now + self.ban_s
            return used, 418, float(self.ban_s)
        return used, 429, (window + 1) * 60 - now

    def add(self, ip: str, weight: int) -> int:
        """Add ``weight`` after the fact (a failed order request pays 1); returns the weight used."""
        window = int(self.clock() // 60)
        win, used, n429 = self._used.get(ip, (window, 0, 0))
        if win != window:
            used, n429 = 0, 0
        self._used[ip] = (window, used + weight, n429)
        return used + weight


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------
class GeneratorSource:
    """The seeded market: one generator step every tick_ms, frames to the hub."""

    def __init__(self, cfg: SimulatorConfig, specs: list[SymbolSpec], hub: Hub):
        self.cfg = cfg
        self.specs = specs
        self.hub = hub
        self.gen = MarketGenerator(
            specs, seed=cfg.seed, rate=cfg.rate, depth_levels=cfg.depth_levels,
            tick_ms=cfg.tick_ms, wire_decimals=cfg.wire_decimals,
        )  # fmt: skip
        self.builder = StreamBuilder(self.gen)
        self.order_hook: Callable[[list[SymbolFlow]], list[SymbolFlow]] | None = None  # the order side's
        self.hook_errors = 0
        self.paused = False
        self.steps = 0
        self.lag_resets = 0

    def symbols(self) -> list[str]:
        return [s.symbol for s in self.specs]

    def snapshot(self, symbol: str, limit: int) -> bytes | None:
        book = self.gen.books.get(symbol)
        return None if book is None else snapshot_payload(book, limit)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick_s = self.cfg.tick_ms / 1000.0
        next_t = loop.time()
        while True:
            next_t += tick_s
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                # more than a second behind (CPU starved): skip ahead rather than burst
                next_t = loop.time()
                self.lag_resets += 1
            t_end = now_ms()
            if self.paused:
                # no new flow, but the builder still ticks so pending diffs flush on time
                flows = [self._empty_flow(s) for s in self.gen.books]
            else:
                flows = self.gen.step(t_end - self.cfg.tick_ms)
            if self.order_hook is not None:
                try:
                    flows = self.order_hook(flows)
                except Exception:  # the market goes on; the order side's failure is logged and counted
                    self.hook_errors += 1
                    log.exception("order side failed on a generated step")
            self.steps += 1
            self.hub.broadcast(self.builder.build(flows, t_end, self.hub.wanted))

    def _empty_flow(self, symbol: str) -> SymbolFlow:
        book = self.gen.books[symbol]
        return SymbolFlow(
            symbol=symbol,
            changes=np.zeros((0, mk.CHG_COLS), np.int64),
            trades=np.zeros((0, mk.TRD_COLS), np.int64),
            tops=np.zeros((0, mk.TOP_COLS), np.int64),
            events=0,
            last_update_id=book.update_id,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "events_generated": self.gen.events_total,
            "steps": self.steps,
            "frames_built": self.builder.frames_built,
            "lag_resets": self.lag_resets,
            "order_hook_errors": self.hook_errors,
            "paused": self.paused,
            "update_ids": {s: b.update_id for s, b in self.gen.books.items()},
        }


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
def _json(status: int, body: Any, headers: dict | None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _error(status: int, code: int, msg: str, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"code": code, "msg": msg}),
                        content_type="application/json", headers=headers)  # fmt: skip


class Simulator:
    """The whole simulator: ``await start()``, then ``port``; ``await stop()``.

    Usable without the supervisor (tests run it in-process on port 0).
    """

    def __init__(self, cfg: SimulatorConfig, specs: list[SymbolSpec], *, source: Any = None):
        self.cfg = cfg
        self.specs = specs
        self.hub = Hub(cfg)
        if source is None:
            if cfg.replay:
                from processes.simulator.replay import ReplaySource

                source = ReplaySource(cfg, self.hub)
                # exchangeInfo lists what the recording holds (configured specs win where they overlap)
                known = {sp.symbol for sp in specs}
                specs = list(specs) + [sp for sp in resolve_symbols(source.symbols(), cfg) if sp.symbol not in known]
                self.specs = specs
            else:
                source = GeneratorSource(cfg, specs, self.hub)
        self.source = source
        self.limiter = WeightLimiter(cfg.weight_limit_per_minute, cfg.ban_after_429s, cfg.ban_s)
        self._order_faults: list[str] = list(cfg.faults.order_fault_sequence)
        self._stopping = asyncio.Event()  # ends held ("hang") answers at stop
        self._make_order_side()
        self.wsapi = WsApi(self)  # /ws-api/v3 connections (on the order side and this clock)
        self._rest_faults: list[int] = list(cfg.faults.rest_status_sequence)
        self._snapshot_failures_left = cfg.faults.snapshot_fail_count
        self.rest_stats = {"requests": 0, "429": 0, "418": 0, "snapshots": 0}
        self.port: int = 0
        self._runner: web.AppRunner | None = None
        self._source_task: asyncio.Task | None = None
        self.app = self._make_app()

    def _make_order_side(self) -> None:
        """Accounts (keys from the environment: a configured account without them is a ConfigError),
        the ledger, the order service on this source's books, and its market hooks."""
        accounts = self.cfg.accounts or (default_account(),)
        keys, _without = load_keys(accounts)
        self.ledger = Ledger(accounts)
        books: dict[str, Any] = {}
        gen = getattr(self.source, "gen", None)
        if gen is not None:
            books = {sym: GeneratedBook(b) for sym, b in gen.books.items()}
        elif hasattr(self.source, "snapshot"):
            src = self.source
            books = {sp.symbol: ReplayedBook(sp.symbol, lambda sym, src=src: src.snapshot(sym, 5000))
                     for sp in self.specs}  # fmt: skip
        self.orders = OrderService(
            specs=self.specs, books=books, ledger=self.ledger, accounts=[a.name for a in accounts],
            fees=self.cfg.fees, clock_ms=self.server_ms, orders_per_10s=self.cfg.orders_per_10s,
            orders_per_day=self.cfg.orders_per_day, max_open_orders=self.cfg.max_open_orders,
            queue_model=self.cfg.queue_model, seed=self.cfg.seed,
        )  # fmt: skip
        self.auth = Authenticator(keys, self.server_us)
        if gen is not None and hasattr(self.source, "order_hook"):
            self.source.order_hook = self.orders.on_generated
        elif books:
            self.hub.taps.append(self.orders.on_replayed)

    def server_ms(self) -> int:
        """The REST server clock, ms since the epoch: the host clock plus the clock_skew_ms fault."""
        return time.time_ns() // 1_000_000 + self.hub.faults.clock_skew_ms

    def server_us(self) -> int:
        return time.time_ns() // 1_000 + self.hub.faults.clock_skew_ms * 1_000

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp keeps the bound sockets here
        self.port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else self.cfg.port
        self._source_task = asyncio.create_task(self.source.run(), name="simulator-source")
        self._source_task.add_done_callback(self._source_done)
        log.info("simulator listening on http://%s:%d (%s)", self.cfg.host, self.port,
                 "replay" if self.cfg.replay else f"generator, {self.cfg.rate:g} events/s")  # fmt: skip

    def _source_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator source failed", exc_info=task.exception())

    async def stop(self) -> None:
        self._stopping.set()
        if self._source_task is not None:
            self._source_task.cancel()
            await asyncio.gather(self._source_task, return_exceptions=True)
        for c in list(self.hub.clients):
            c.closed = True
            try:
                await c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
            except (ConnectionError, RuntimeError) as exc:
                log.debug("close on stop failed: %r", exc)
        await self.wsapi.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "Simulator":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.cfg.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return {
            **self.hub.stats,
            "clients": len(self.hub.clients),
            "faults": dataclasses.asdict(self.hub.fault_stats),
            "rest": dict(self.rest_stats),
            "orders": {**self.orders.stats, "open_orders": sum(v.engine.n_live for v in self.orders.venues.values()),
                       "auth": dict(self.auth.stats)},
            "ws_api": self.wsapi.stats_dict(),
            **self.source.stats(),
        }

    # -- faults at runtime ----------------------------------------------------------------------
    def set_faults(self, changes: dict) -> FaultConfig:
        """Merge ``changes`` into the fault config (validated like the config file)."""
        merged = {**self.hub.faults.to_dict(), **changes}
        faults = FaultConfig.from_dict(merged, "faults")
        self.hub.faults = faults
        if "rest_status_sequence" in changes:
            self._rest_faults = list(faults.rest_status_sequence)
        if "snapshot_fail_count" in changes:
            self._snapshot_failures_left = faults.snapshot_fail_count
        if "order_fault_sequence" in changes:
            self._order_faults = list(faults.order_fault_sequence)
        return faults

    # -- app ------------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._rest_middleware])
        app.router.add_get("/ws", self._ws_raw)
        app.router.add_get("/ws/{streams:.+}", self._ws_raw)
        app.router.add_get("/stream", self._ws_combined)
        app.router.add_get(WS_API_PATH, self.wsapi.handle)
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/depth", self._depth)
        for method, path in REST_ROUTES:
            app.router.add_route(method, path, self._signed)
        app.router.add_get("/sim/stats", self._sim_stats)
        app.router.add_get("/sim/accounts", self._sim_accounts)
        app.router.add_post("/sim/balance", self._sim_balance)
        app.router.add_post("/sim/fault", self._sim_fault)
        app.router.add_post("/sim/shutdown_notice", self._sim_shutdown_notice)
        app.router.add_post("/sim/disconnect", self._sim_disconnect)
        app.router.add_post("/sim/pause", self._sim_pause)
        app.router.add_post("/sim/resume", self._sim_resume)
        return app

    async def _ws_raw(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info.get("streams", "")
        streams = [s for s in path.split("/") if s]
        return await self.hub.handle(request, streams, combined=False)

    async def _ws_combined(self, request: web.Request) -> web.StreamResponse:
        streams = [s for s in request.query.get("streams", "").split("/") if s]
        return await self.hub.handle(request, streams, combined=True)

    @web.middleware
    async def _rest_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/"):
            return await handler(request)
        self.rest_stats["requests"] += 1
        if path == "/api/v3/depth":
            try:
                limit = int(request.query.get("limit", DEPTH_DEFAULT_LIMIT))
            except ValueError:
                limit = DEPTH_DEFAULT_LIMIT
            weight = depth_weight(min(max(limit, 1), DEPTH_MAX_LIMIT))
        elif (request.method, path) in REST_ROUTES:
            op = REST_ROUTES[(request.method, path)]
            params = dict(request.query)
            if request.method != "GET" and op == "order.test":
                params.update(parse_qsl((await request.read()).decode("utf-8", "replace")))
            weight = request_weight(op, params)
        else:
            weight = ROUTE_WEIGHTS.get(path, 1)
        ip = request.remote or "?"
        used, status, retry_after = self.limiter.charge(ip, weight)
        headers = {"X-MBX-USED-WEIGHT-1M": str(used)}
        if status == 200 and self._rest_faults:
            status = self._rest_faults.pop(0)
            retry_after = float(self.hub.faults.retry_after_s)
            self.hub.fault_stats.rest_faults += 1
        if status != 200:
            self.rest_stats[str(status)] = self.rest_stats.get(str(status), 0) + 1
            if status in (418, 429):
                headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
            body = rest_error_body(status, limit=self.limiter.limit, until_ms=now_ms() + int(retry_after * 1000))
            return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                                headers=headers)  # fmt: skip
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        if resp.status != 200 and REST_ROUTES.get((request.method, path)) in ZERO_WEIGHT_ON_SUCCESS:
            headers["X-MBX-USED-WEIGHT-1M"] = str(self.limiter.add(ip, 1))  # free only when it succeeds
        resp.headers.update(headers)
        return resp

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(body=b"{}", content_type="application/json")

    async def _time(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"serverTime": self.server_ms()}), content_type="application/json")

    def _symbol_info(self, spec: SymbolSpec) -> dict[str, Any]:
        def d8(text: str) -> str:
            return from_fixed(to_fixed(text))

        base, quote = split_symbol(spec.symbol)
        return {
            "symbol": spec.symbol,
            "status": "TRADING",
            "baseAsset": base,
            "baseAssetPrecision": 8,
            "quoteAsset": quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": list(ORDER_TYPES),  # what orders.py executes
            "icebergAllowed": False,
            "ocoAllowed": False,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": symbol_filters(spec, self.cfg.max_open_orders),  # the ones orders.py enforces
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    async def _exchange_info(self, request: web.Request) -> web.Response:
        recorded = getattr(self.source, "exchange_info", None)
        if recorded is not None and not ({"symbol", "symbols"} & request.query.keys()):
            return web.Response(body=recorded, content_type="application/json")  # the recorded bytes
        specs = {s.symbol: s for s in self.specs}
        wanted: Iterable[str] = list(specs)
        if "symbol" in request.query:
            wanted = [request.query["symbol"].upper()]
        elif "symbols" in request.query:
            try:
                wanted = [str(s).upper() for s in orjson.loads(request.query["symbols"])]
            except (orjson.JSONDecodeError, TypeError):
                return _error(400, -1100, "Illegal characters found in parameter 'symbols'.")
        for s in wanted:
            if s not in specs:
                return _error(400, -1121, "Invalid symbol.")
        body = {
            "timezone": "UTC",
            "serverTime": self.server_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": self.cfg.weight_limit_per_minute},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": self.cfg.orders_per_10s},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": self.cfg.orders_per_day},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
            ],  # fmt: skip
            "exchangeFilters": [],
            "symbols": [self._symbol_info(specs[s]) for s in wanted],
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _depth(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if not symbol:
            return _error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        raw_limit = request.query.get("limit", str(DEPTH_DEFAULT_LIMIT))
        if not raw_limit.isdigit() or len(raw_limit) > 20:
            return _error(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.")
        limit = int(raw_limit)
        if limit < 1:
            return _error(400, -1130, "Invalid data sent for a parameter.")
        limit = min(limit, DEPTH_MAX_LIMIT)
        faults = self.hub.faults
        if faults.snapshot_delay_ms:
            await asyncio.sleep(faults.snapshot_delay_ms / 1000.0)
        if self._snapshot_failures_left > 0:
            self._snapshot_failures_left -= 1
            self.hub.fault_stats.snapshot_failures += 1
            status = faults.snapshot_fail_status
            return web.Response(status=status, body=orjson.dumps(rest_error_body(status)),
                                content_type="application/json")  # fmt: skip
        # read the book after any delay: lastUpdateId is the book's id at the moment it is served
        body = self.source.snapshot(symbol.upper(), limit)
        if body is None:
            return _error(400, -1121, "Invalid symbol.")
        self.rest_stats["snapshots"] += 1
        return web.Response(body=body, content_type="application/json")

    # -- signed endpoints (orders.py) --------------------------------------------------------------
    def next_order_fault(self, op: str) -> str:
        """The order fault due for an authenticated request of ``op`` ("ok" when none; faults.py).

        Order entry over any transport takes from the one ``order_fault_sequence``
        (the WS API calls this too).
        """
        if op not in ORDER_ENTRY_OPS or not self._order_faults:
            return "ok"
        fault = self._order_faults.pop(0)
        if fault != "ok":
            self.hub.fault_stats.order_faults += 1
        return fault

    async def _signed(self, request: web.Request) -> web.StreamResponse:
        """One SIGNED REST request: authenticate, apply an order fault if one is due, run the operation."""
        op = REST_ROUTES[(request.method, request.path)]
        raw_body = (await request.read()).decode("utf-8", "replace") if request.method != "GET" else ""
        fault = "ok"
        faults = self.hub.faults
        try:
            req = parse_rest(request.rel_url.raw_query_string, raw_body)
            account = self.auth.rest(request.headers.get("X-MBX-APIKEY"), req)
            fault = self.next_order_fault(op)
            if fault in ("418", "429"):  # refused before it reaches the engine
                status, body = order_fault_body(fault, is_new_order=op == "order.place",
                                                until_ms=self.server_ms() + faults.retry_after_s * 1000,
                                                limit_10s=self.cfg.orders_per_10s)  # fmt: skip
                return _json(status, body, {"Retry-After": str(faults.retry_after_s)})
            status, body, headers = self.orders.dispatch(op, account, req.params)
        except BinanceError as exc:
            status, body, headers = exc.status, exc.body(), exc.headers
        if op in ORDER_ENTRY_OPS:
            if fault == "drop":  # it happened; the client never hears of it
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=200)
            if fault == "hang":
                try:
                    await asyncio.wait_for(self._stopping.wait(), faults.order_hang_s)
                except asyncio.TimeoutError:
                    pass
                if self._stopping.is_set() and request.transport is not None:
                    request.transport.abort()
                status, body = order_fault_body("hang", is_new_order=op == "order.place")
                return _json(status, body, {})
            if fault not in ("ok", "418", "429"):  # a 5xx: it happened, the answer says unknown
                status, body = order_fault_body(fault, is_new_order=op == "order.place")
                return _json(status, body, {})
            if faults.order_ack_delay_ms:
                await asyncio.sleep(faults.order_ack_delay_ms / 1000.0)
        return _json(status, body, headers)

    # -- control --------------------------------------------------------------------------------
    async def _sim_accounts(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.orders.summary()), content_type="application/json")

    async def _sim_balance(self, request: web.Request) -> web.Response:
        try:
            req = orjson.loads(await request.read())
            account, asset, delta = req["account"], req["asset"], to_fixed(str(req["delta"]), allow_negative=True)
            if account not in self.orders.accounts:
                raise KeyError(account)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"expected {{account, asset, delta}}: {exc!r}"}, status=400)
        if not self.orders.adjust_balance(account, asset, delta):
            return web.json_response({"error": "the balance would go negative"}, status=400)
        return web.Response(body=orjson.dumps(self.orders.summary()["accounts"][account]),
                            content_type="application/json")  # fmt: skip

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _sim_fault(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ConfigError("faults", "body must be a JSON object")
            faults = self.set_faults(changes)
        except orjson.JSONDecodeError as exc:
            return web.json_response({"error": f"invalid JSON: {exc}"}, status=400)
        except ConfigError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        log.info("faults changed: %s", changes)
        return web.json_response(faults.to_dict())

    async def _sim_shutdown_notice(self, request: web.Request) -> web.Response:
        return web.json_response({"notified": self.hub.shutdown_notice() + self.wsapi.shutdown_notice()})

    async def _sim_disconnect(self, request: web.Request) -> web.Response:
        return web.json_response({"disconnected": self.hub.disconnect_all() + self.wsapi.disconnect_all()})

    async def _sim_pause(self, request: web.Request) -> web.Response:
        if not hasattr(self.source, "paused"):
            return web.json_response({"error": "source cannot pause"}, status=400)
        self.source.paused = True
        return web.json_response({"paused": True})

    async def _sim_resume(self, request: web.Request) -> web.Response:
        if not hasattr(self.source, "paused"):
            return web.json_response({"error": "source cannot pause"}, status=400)
        self.source.paused = False
        return web.json_response({"paused": False})


async def serve(sim_cfg: SimulatorConfig, symbols: list[SymbolSpec], *, ready_cb=None, stop_event=None) -> None:
    """Run the simulator until ``stop_event`` is set (forever if None).

    ``ready_cb(sim)`` is called once it listens; ``sim.port`` is the bound port
    (useful with port 0), ``sim.base_url`` / ``sim.ws_url`` the URLs.
    """
    sim = Simulator(sim_cfg, symbols)
    await sim.start()
    try:
        if ready_cb is not None:
            res = ready_cb(sim)
            if asyncio.iscoroutine(res):
                await res
        if stop_event is None:
            await asyncio.Event().wait()
        else:
            await stop_event.wait()
    finally:
        await sim.stop()

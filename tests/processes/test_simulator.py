"""The exchange simulator over real loopback sockets: Binance sequencing, streams, REST, control.

A dict-based reference book follows Binance's documented procedure (buffer
diffs, snapshot, drop u <= lastUpdateId, bridge, chain) against the simulator
and must end equal to a later snapshot, exactly.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from core.errors import ConfigError
from processes.simulator import SimulatorConfig, resolve_symbols, run
from processes.simulator import market_kernels as mk
from processes.simulator.market import DepthAccumulator, MarketGenerator
from simulator_helpers import (
    DEADLINE,
    RefBook,
    arun,
    get_json,
    post_json,
    recv_json,
    sim_for,
    snapshot_levels,
    wait_until,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def test_default_config_is_offline_loopback_and_light():
    cfg = SimulatorConfig.from_dict({})
    assert cfg.host == "127.0.0.1" and cfg.port == 9010 and cfg.seed == 42
    assert cfg.rate == 2000 and cfg.depth_levels == 1000
    specs = {s.symbol: s for s in resolve_symbols(["BTCUSDT", "ETHUSDT"], cfg)}
    assert (specs["BTCUSDT"].tick_size, specs["BTCUSDT"].step_size) == ("0.01", "0.00001")
    assert (specs["ETHUSDT"].tick_size, specs["ETHUSDT"].step_size) == ("0.01", "0.0001")


@pytest.mark.parametrize(
    "raw, path, problem",
    [
        ({"rate": -1}, "simulator.rate", "must be > 0, got -1"),
        ({"bogus": 1}, "simulator.bogus", "is not a known key"),
        ({"port": "80"}, "simulator.port", "must be an integer"),
        ({"port": 70000}, "simulator.port", "must be <= 65535"),
        ({"tick_ms": 30}, "simulator.tick_ms", "must divide 100"),
        ({"faults": {"gap_probability": 2}}, "simulator.faults.gap_probability", "must be <= 1, got 2"),
        ({"faults": {"nope": 1}}, "simulator.faults.nope", "is not a known key"),
        ({"faults": {"rest_status_sequence": [429, 404]}}, "simulator.faults.rest_status_sequence[1]", "must be one of"),
        ({"symbols": {"BTCUSDT": {"tick_size": 0.01}}}, "simulator.symbols.BTCUSDT.tick_size", "decimal string"),
    ],
)
def test_bad_config_names_the_key_and_the_problem(raw, path, problem):
    with pytest.raises(ConfigError) as ei:
        SimulatorConfig.from_dict(raw)
    assert ei.value.path == path
    assert problem in ei.value.problem


def test_instruments_from_system_config_objects_keep_their_tick_and_step():
    from core.config import Instrument

    cfg = SimulatorConfig.from_dict({})
    inst = [
        Instrument(id=0, symbol="BTCUSDT", tick_size=10**7, lot_size=10**4, min_notional=10 * 10**8,
                   from_exchange_info=False),
        Instrument(id=1, symbol="ETHUSDT", tick_size=0, lot_size=0, min_notional=0, from_exchange_info=True),
    ]  # fmt: skip
    specs = {s.symbol: s for s in resolve_symbols(inst, cfg)}
    assert specs["BTCUSDT"].tick_size == "0.10000000" and specs["BTCUSDT"].step_size == "0.00010000"
    assert specs["BTCUSDT"].min_notional == "10.00000000"
    assert specs["ETHUSDT"].tick_size == "0.01"  # exchangeInfo instruments get the simulator's defaults


# ---------------------------------------------------------------------------------------------
# generator (no sockets)
# ---------------------------------------------------------------------------------------------
def _gen(seed=3, rate=20000, depth=200):
    cfg = SimulatorConfig.from_dict({})
    return MarketGenerator(resolve_symbols(["BTCUSDT", "ETHUSDT"], cfg), seed=seed, rate=rate, depth_levels=depth)


def test_generator_keeps_an_uncrossed_many_level_book_and_diffs_rebuild_it_exactly():
    gen = _gen()
    book = gen.books["BTCUSDT"]
    start_bids, start_asks = book.levels(5000)
    ref_b = dict(start_bids)
    ref_a = dict(start_asks)
    acc = DepthAccumulator()
    last_u = book.update_id
    trades = 0
    for i in range(60):
        flows = {f.symbol: f for f in gen.step(i * 100)}
        acc.add(flows["BTCUSDT"].changes)
        trades += flows["BTCUSDT"].trades.shape[0]
        if i % 3 == 2:
            first_u, u, bids, asks = acc.take()
            assert first_u == last_u + 1, "diffs must chain: U == previous u + 1"
            for side, rows in ((ref_b, bids), (ref_a, asks)):
                for p, q in rows.tolist():
                    if q:
                        side[p] = q
                    else:
                        side.pop(p, None)
            last_u = u
        bb, bbq, ba, baq = book.best()
        assert bb < ba, "the book must never cross or lock (spread >= 1 tick)"
        assert bbq > 0 and baq > 0
    assert last_u == book.update_id
    bids, asks = book.levels(5000)
    assert dict(bids) == ref_b and dict(asks) == ref_a
    assert len(bids) > 50 and len(asks) > 50, "many levels per side"
    assert trades > 100
    # depth_levels bounds each side's price range from its best
    assert bids[0][0] - bids[-1][0] < 200 and asks[-1][0] - asks[0][0] < 200


def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds():
    def run_once(seed):
        gen = _gen(seed=seed)
        out = []
        for i in range(10):
            for f in gen.step(i * 100):
                out.append((f.changes.copy(), f.trades.copy()))
        return out

    a, b, c = run_once(5), run_once(5), run_once(6)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(x[0].shape == y[0].shape and np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_generator_rate_is_roughly_the_configured_events_per_second():
    gen = _gen(rate=20000)
    events = sum(f.events for i in range(20) for f in gen.step(i * 100))  # 2 s of flow
    assert 20000 <= events <= 60000, events  # 2 s at 20k/s, Poisson + calibration slack


def test_trades_change_the_book_and_update_ids_are_contiguous():
    gen = _gen()
    # a step's arrays are views valid until the next step: copy them
    flows = [(f.changes.copy(), f.trades.copy()) for i in range(5) for f in gen.step(i * 100) if f.symbol == "ETHUSDT"]
    uids = np.concatenate([c[:, mk.CHG_UID] for c, _ in flows])
    assert np.array_equal(uids, np.arange(uids[0], uids[0] + len(uids)))
    tids = np.concatenate([t[:, mk.TRD_ID] for _, t in flows])
    assert len(tids) > 20 and np.array_equal(tids, np.arange(tids[0], tids[0] + len(tids)))
    assert (np.concatenate([t[:, mk.TRD_QTY] for _, t in flows]) > 0).all()


# ---------------------------------------------------------------------------------------------
# sequencing over loopback: snapshot + diffs == later snapshot
# ---------------------------------------------------------------------------------------------
async def _sync_and_compare(url_kind: str, stream: str, min_applied: int, **overrides):
    async with sim_for(**overrides) as sim, aiohttp.ClientSession() as http:
        if url_kind == "raw":
            ws_url = f"{sim.ws_url}/ws/{stream}/btcusdt@bookTicker"
        else:
            ws_url = f"{sim.ws_url}/stream?streams={stream}/btcusdt@bookTicker"
        book = RefBook()
        tickers: list[dict] = []
        tops_checked = 0
        async with http.ws_connect(ws_url) as ws:

            async def handle(msg) -> None:
                nonlocal tops_checked
                if url_kind == "combined":
                    assert set(msg) == {"stream", "data"}
                    name, msg = msg["stream"], msg["data"]
                    assert name in (stream, "btcusdt@bookTicker")
                if "e" not in msg:  # bookTicker has no e/E
                    tickers.append(msg)
                    return
                assert msg["e"] == "depthUpdate" and msg["s"] == "BTCUSDT"
                book.feed(msg)
                if book.update_id is not None and book.applied:
                    # the top after each diff equals the latest bookTicker with u <= diff.u
                    seen = [t for t in tickers if t["u"] <= book.update_id]
                    if seen:
                        t = seen[-1]
                        bb, bq, ba, aq = book.top()
                        assert (bb, bq, ba, aq) == tuple(Decimal(t[k]) for k in "bBaA")
                        tops_checked += 1

            # buffer at least one diff, then fetch the snapshot (step 3 of the procedure)
            while book.first_u_seen is None:
                await handle(await recv_json(ws))
            while True:
                status, headers, snap = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT", limit=5000)
                assert status == 200
                if snap["lastUpdateId"] >= book.first_u_seen:
                    break
            book.set_snapshot(snap)
            loop = asyncio.get_running_loop()
            end = loop.time() + DEADLINE
            while (book.applied < min_applied or tops_checked < 3) and loop.time() < end:
                await handle(await recv_json(ws))
            # freeze the market, take the later snapshot, catch up to exactly its id
            await post_json(http, f"{sim.base_url}/sim/pause")
            await asyncio.sleep(0.05)
            _, _, later = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT", limit=5000)
            end = loop.time() + DEADLINE
            while book.update_id < later["lastUpdateId"] and loop.time() < end:
                await handle(await recv_json(ws))
            assert book.update_id == later["lastUpdateId"]
            assert book.as_snapshot() == snapshot_levels(later)
            assert book.applied >= min_applied
            assert tops_checked >= 3
            return book.applied


def test_combined_100ms_diffs_and_snapshot_rebuild_the_later_snapshot_exactly():
    assert arun(_sync_and_compare("combined", "btcusdt@depth@100ms", 10)) >= 10


def test_finer_generation_steps_still_give_one_consistent_100ms_diff_stream():
    # tick_ms=20: five generation steps fold into each 100 ms diff
    assert arun(_sync_and_compare("raw", "btcusdt@depth@100ms", 5, tick_ms=20, rate=20000)) >= 5


def test_raw_1000ms_diffs_and_snapshot_rebuild_the_later_snapshot_exactly():
    assert arun(_sync_and_compare("raw", "btcusdt@depth", 3)) >= 3


def test_trade_and_aggtrade_streams_are_consistent_and_gapless():
    async def body():
        async with sim_for(rate=8000) as sim, aiohttp.ClientSession() as http:
            url = f"{sim.ws_url}/stream?streams=ethusdt@trade/ethusdt@aggTrade"
            trades, aggs = [], []
            async with http.ws_connect(url) as ws:
                while len(trades) < 150 or len(aggs) < 50:
                    m = await recv_json(ws)
                    (trades if m["stream"] == "ethusdt@trade" else aggs).append(m["data"])
            return trades, aggs

    trades, aggs = arun(body())
    assert all(t["e"] == "trade" and t["s"] == "ETHUSDT" and t["M"] is True for t in trades)
    assert list(trades[0]) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
    ids = [t["t"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "trade ids contiguous"
    assert all(isinstance(t["p"], str) and isinstance(t["q"], str) and Decimal(t["q"]) > 0 for t in trades)
    by_id = {t["t"]: t for t in trades}
    agg_ids = [a["a"] for a in aggs]
    assert agg_ids == list(range(agg_ids[0], agg_ids[0] + len(agg_ids))), "aggTrade ids contiguous"
    covered = 0
    for a, nxt in zip(aggs, aggs[1:]):
        assert nxt["f"] == a["l"] + 1, "aggTrades cover the trade ids without holes"
        parts = [by_id[i] for i in range(a["f"], a["l"] + 1) if i in by_id]
        if len(parts) == a["l"] - a["f"] + 1:
            assert sum(Decimal(p["q"]) for p in parts) == Decimal(a["q"])
            assert all(p["p"] == a["p"] and p["m"] == a["m"] for p in parts)
            covered += 1
    assert covered >= 10


# ---------------------------------------------------------------------------------------------
# WS control frames, pings, serverShutdown
# ---------------------------------------------------------------------------------------------
def test_subscribe_unsubscribe_list_subscriptions_and_errors():
    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws") as ws:

                async def call(req):
                    await ws.send_str(orjson.dumps(req).decode())
                    while True:  # skip data frames until the reply with our id (or an error)
                        m = await recv_json(ws)
                        if "id" in m or "code" in m:
                            return m

                assert await call({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@depth@100ms"], "id": 1}) \
                    == {"result": None, "id": 1}
                assert await call({"method": "LIST_SUBSCRIPTIONS", "id": 2}) == {
                    "result": ["btcusdt@trade", "btcusdt@depth@100ms"], "id": 2}
                # data for the subscribed streams now flows, as bare payloads (raw endpoint)
                got = set()
                while got != {"trade", "depthUpdate"}:
                    m = await recv_json(ws)
                    if "e" in m:
                        got.add(m["e"])
                assert await call({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": "abc"}) \
                    == {"result": None, "id": "abc"}
                assert await call({"method": "LIST_SUBSCRIPTIONS", "id": 4}) == {"result": ["btcusdt@depth@100ms"], "id": 4}
                assert (await call({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5})) == {"result": None, "id": 5}
                assert (await call({"method": "GET_PROPERTY", "params": ["combined"], "id": 6})) == {"result": True, "id": 6}
                err = await call({"method": "SUBSCRIBE", "params": ["btcusdt@nonsense"], "id": 7})
                assert err["code"] == 2 and err["id"] == 7
                err = await call({"method": "FLY", "id": 8})
                assert err["code"] == 2
                await ws.send_str("{not json")
                while True:
                    m = await recv_json(ws)
                    if "code" in m:
                        assert m["code"] == 3
                        break
                # after SET_PROPERTY combined, frames come wrapped
                while True:
                    m = await recv_json(ws)
                    if "stream" in m:
                        assert m["stream"] == "btcusdt@depth@100ms" and m["data"]["e"] == "depthUpdate"
                        break

    arun(body())


def test_server_sends_pings_and_drops_a_client_that_never_pongs():
    async def body():
        # a client that answers each ping: the server notes every pong (what keeps a connection up);
        # the pong timeout is long so a stalled test host cannot drop this client
        async with sim_for(ping_interval_s=0.2, pong_timeout_s=10) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@depth@100ms", autoping=False) as ws:
                (client,) = sim.hub.clients
                pings = 0
                while pings < 3:
                    msg = await ws.receive(timeout=DEADLINE)
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                        sent = time.monotonic()
                        await ws.pong(msg.data)
                        await wait_until(lambda: client.last_pong >= sent, "the server to note the pong")
                assert not ws.closed
            good = sim.stats()
        # a client that ignores pings is dropped once pong_timeout_s + ping_interval_s pass without one
        async with sim_for(ping_interval_s=0.1, pong_timeout_s=0.2) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade", autoping=False) as ws:
                closed = False
                while not closed:
                    msg = await ws.receive(timeout=DEADLINE)
                    closed = msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            bad = sim.stats()
        return good, bad

    good, bad = arun(body())
    assert good["pings_sent"] >= 3 and good["pong_timeouts"] == 0
    assert bad["pings_sent"] >= 1 and bad["pong_timeouts"] == 1


def test_server_shutdown_notice_reaches_raw_and_combined_clients():
    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@depth@100ms") as raw, \
                    http.ws_connect(f"{sim.ws_url}/stream?streams=btcusdt@depth@100ms") as comb:
                await recv_json(raw)
                await recv_json(comb)
                status, out = await post_json(http, f"{sim.base_url}/sim/shutdown_notice")
                assert status == 200 and out == {"notified": 2}

                async def find(ws, pred):
                    while True:
                        m = await recv_json(ws)
                        if pred(m):
                            return m

                r = await find(raw, lambda m: m.get("e") == "serverShutdown")
                c = await find(comb, lambda m: m.get("stream") == "!serverShutdown")
                assert set(r) == {"e", "E"} and isinstance(r["E"], int)
                assert c["data"]["e"] == "serverShutdown"

    arun(body())


def test_control_disconnect_drops_every_connection():
    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@depth@100ms") as ws:
                await recv_json(ws)
                status, out = await post_json(http, f"{sim.base_url}/sim/disconnect")
                assert out == {"disconnected": 1}
                while True:
                    msg = await ws.receive(timeout=DEADLINE)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
            await wait_until(lambda: sim.stats()["clients"] == 0, "the simulator to forget the connection")

    arun(body())


# ---------------------------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------------------------
def test_exchange_info_has_price_lot_and_notional_filters_for_configured_symbols():
    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            status, headers, info = await get_json(http, f"{sim.base_url}/api/v3/exchangeInfo")
            assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "20"
            one = await get_json(http, f"{sim.base_url}/api/v3/exchangeInfo", symbol="ETHUSDT")
            bad = await get_json(http, f"{sim.base_url}/api/v3/exchangeInfo", symbol="NOPEUSDT")
            t = await get_json(http, f"{sim.base_url}/api/v3/time")
            return info, one, bad, t

    info, one, bad, t = arun(body())
    syms = {s["symbol"]: s for s in info["symbols"]}
    assert set(syms) == {"BTCUSDT", "ETHUSDT"}
    f = {x["filterType"]: x for x in syms["BTCUSDT"]["filters"]}
    assert f["PRICE_FILTER"]["tickSize"] == "0.01000000"
    assert f["LOT_SIZE"]["stepSize"] == "0.00001000" and f["LOT_SIZE"]["minQty"] == "0.00001000"
    assert Decimal(f["NOTIONAL"]["minNotional"]) == 5
    assert {x["filterType"]: x for x in syms["ETHUSDT"]["filters"]}["LOT_SIZE"]["stepSize"] == "0.00010000"
    assert syms["BTCUSDT"]["baseAsset"] == "BTC" and syms["BTCUSDT"]["quoteAsset"] == "USDT"
    assert {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000} in info["rateLimits"]
    assert [s["symbol"] for s in one[2]["symbols"]] == ["ETHUSDT"]
    assert bad[0] == 400 and bad[2] == {"code": -1121, "msg": "Invalid symbol."}
    assert isinstance(t[2]["serverTime"], int)


def test_depth_weights_by_limit_and_429_with_retry_after_then_418_ban():
    # exact accounting below the limit, then the 429/418 sequence
    async def body2():
        async with sim_for(weight_limit_per_minute=14, ban_after_429s=2) as sim, aiohttp.ClientSession() as http:
            out = []
            for _ in range(6):
                status, headers, body = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT", limit=10)
                out.append((status, headers, body))
            return out

    async def body3():
        async with sim_for(weight_limit_per_minute=10_000) as sim, aiohttp.ClientSession() as http:
            used = []
            for limit in (5, 100, 101, 500, 501, 1000, 1001, 5000):
                status, headers, _ = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT", limit=limit)
                assert status == 200
                used.append(int(headers["X-MBX-USED-WEIGHT-1M"]))
            status, headers, body = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT", limit="x")
            return used, (status, body)

    for _attempt in range(2):  # a new wall-clock minute may start mid-test: then the count resets, retry
        used, bad_limit = arun(body3())
        if used == sorted(used):
            break
    steps = [b - a for a, b in zip([0] + used, used)]
    assert steps == [5, 5, 25, 25, 50, 50, 250, 250], "documented depth weights by limit"
    assert bad_limit[0] == 400 and bad_limit[1]["code"] == -1100
    out = arun(body2())
    statuses = [s for s, _, _ in out]
    assert statuses[:2] == [200, 200]
    assert statuses[2] == 429
    _, headers, body = out[2]
    assert int(headers["Retry-After"]) > 0 and headers["X-MBX-USED-WEIGHT-1M"] == "15"
    assert body["code"] == -1003 and body["msg"].startswith("Too much request weight used")
    assert statuses[3:] == [429, 418, 418], "a client that keeps going during 429s gets banned (418)"
    assert int(out[4][1]["Retry-After"]) == 120 and out[4][2]["code"] == -1003


def test_depth_limit_caps_levels_and_unknown_symbol_is_binance_error():
    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            _, _, s5 = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT", limit=5)
            _, _, s100 = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="BTCUSDT")
            bad = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="XXXUSDT")
            missing = await get_json(http, f"{sim.base_url}/api/v3/depth")
            return s5, s100, bad, missing

    s5, s100, bad, missing = arun(body())
    assert len(s5["bids"]) == 5 and len(s5["asks"]) == 5
    assert len(s100["bids"]) == 100
    bids = [Decimal(p) for p, _ in s100["bids"]]
    asks = [Decimal(p) for p, _ in s100["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    assert bad[0] == 400 and bad[2]["code"] == -1121
    assert missing[0] == 400 and missing[2]["code"] == -1102


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
class FakeCtx:
    """The worker context names run() relies on (processes/runtime.py provides the real one)."""

    def __init__(self) -> None:
        import logging

        self.name = "simulator"
        self.log = logging.getLogger("test.simulator")
        self.events: list[tuple[str, dict]] = []
        self.ready_called = threading.Event()
        self.heartbeats: list[dict] = []
        self.stop = threading.Event()

    def ready(self) -> None:
        self.ready_called.set()

    def heartbeat(self, **stats) -> None:
        self.heartbeats.append(stats)

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def event(self, type, **fields) -> None:
        self.events.append((type, fields))


def test_worker_run_serves_until_told_to_stop():
    ctx = FakeCtx()
    config = {"simulator": {"port": 0, "rate": 500, "depth_levels": 50}, "instruments": [{"symbol": "BTCUSDT"}]}
    t = threading.Thread(target=run, args=(config, ctx), daemon=True)
    t.start()
    assert ctx.ready_called.wait(DEADLINE), "the worker said ready"
    port = next(f["port"] for typ, f in ctx.events if typ == "simulator_listening")

    async def probe():
        async with aiohttp.ClientSession() as http:
            return await get_json(http, f"http://127.0.0.1:{port}/api/v3/depth", symbol="BTCUSDT", limit=5)

    status, _, snap = arun(probe())
    assert status == 200 and len(snap["bids"]) == 5
    ctx.stop.set()
    t.join(DEADLINE)
    assert not t.is_alive(), "run() returned after should_stop()"
    assert ctx.heartbeats and "frames_sent" in ctx.heartbeats[0]


def test_cli_rejects_bad_config_with_exit_code_2(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text('{"simulator": {"rate": -5}, "instruments": [{"symbol": "BTCUSDT"}]}')
    r = subprocess.run([sys.executable, "-m", "processes.simulator", "--config", str(cfg)],
                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "simulator.rate must be > 0, got -5" in r.stderr


def test_worker_adapter_reads_the_shipped_system_config():
    from core.config import load_config
    from processes.simulator.worker import instruments_of, sim_config_of

    cfg = load_config(PROJECT_ROOT / "config" / "system.json")
    sim_cfg = sim_config_of(cfg)
    assert isinstance(sim_cfg, SimulatorConfig)
    specs = {s.symbol: s for s in resolve_symbols(instruments_of(cfg), sim_cfg)}
    assert set(specs) == {i.symbol for i in cfg.instruments}
    assert Decimal(specs["BTCUSDT"].tick_size) == Decimal("0.01")
    assert Decimal(specs["BTCUSDT"].step_size) == Decimal("0.00001")


def test_cli_standalone_serves_and_exits_0_on_sigterm():
    import re
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "processes.simulator", "--port", "0", "--rate", "500"],
                            cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = None
        for _ in range(50):
            line = proc.stderr.readline()
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "the simulator logged its bound port"

        async def probe():
            async with aiohttp.ClientSession() as http:
                return await get_json(http, f"http://127.0.0.1:{port}/api/v3/time")

        status, headers, body = arun(probe())
        assert status == 200 and isinstance(body["serverTime"], int) and headers["X-MBX-USED-WEIGHT-1M"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()

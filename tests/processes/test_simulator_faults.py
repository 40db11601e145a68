"""Each injected fault does what it says, seen from a real client over loopback; hostile requests get
Binance error codes from every parser, never an exception."""

from __future__ import annotations

import asyncio
import functools
import time

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from processes.simulator.auth import BinanceError, parse_rest
from processes.simulator.config import FaultConfig
from processes.simulator.faults import ACT_ABORT, ACT_CLOSE, ACT_SEND, ConnectionFaults, FaultStats
from processes.simulator.orders import OPS
from simulator_helpers import DEADLINE, arun, get_json, post_json, recv_json, sim_for, wait_until

CLOSING = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def _collect(ws, n_frames: int, timeout: float = DEADLINE) -> tuple[list[bytes], aiohttp.WSMessage | None]:
    """Text frames until n_frames arrived or the connection ended (returns the ending message)."""
    frames: list[bytes] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while len(frames) < n_frames and loop.time() < end:
        msg = await ws.receive(timeout=timeout)
        if msg.type in CLOSING:
            return frames, msg
        if msg.type == aiohttp.WSMsgType.TEXT:
            frames.append(msg.data.encode() if isinstance(msg.data, str) else msg.data)
    return frames, None


def _trade_ids(frames: list[bytes]) -> list[int]:
    return [orjson.loads(f)["t"] for f in frames]


def test_disconnect_after_n_messages_closes_with_going_away():
    async def body():
        async with sim_for(faults={"disconnect_after_messages": 7}) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade/btcusdt@bookTicker") as ws:
                frames, end = await _collect(ws, 100)
                return frames, end, ws.close_code

    frames, end, code = arun(body())
    assert len(frames) == 7
    assert end is not None and code == 1001


def test_random_disconnect_aborts_the_connection_without_a_close_frame():
    async def body():
        async with sim_for(faults={"disconnect_probability": 0.02}) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade/btcusdt@bookTicker") as ws:
                frames, end = await _collect(ws, 100_000)
            await wait_until(lambda: sim.stats()["clients"] == 0, "the simulator to forget the connection")
            return frames, end, sim.stats()

    frames, end, st = arun(body())
    assert end is not None, "the connection ended"
    assert 0 < len(frames) < 100_000
    assert st["faults"]["aborts"] == 1 and st["faults"]["closes"] == 0
    assert st["clients"] == 0


def test_gap_fault_skips_depth_update_ids_and_nothing_else():
    async def body():
        async with sim_for(faults={"gap_probability": 0.3}) as sim, aiohttp.ClientSession() as http:
            url = f"{sim.ws_url}/stream?streams=btcusdt@depth@100ms/btcusdt@trade"
            async with http.ws_connect(url) as ws:
                diffs, trades = [], []
                while len(diffs) < 15:
                    m = await recv_json(ws)
                    (diffs if m["stream"].endswith("100ms") else trades).append(m["data"])
            return diffs, trades, sim.stats()

    diffs, trades, st = arun(body())
    jumps = [b["U"] - a["u"] for a, b in zip(diffs, diffs[1:])]
    assert all(j >= 1 for j in jumps), "diffs stay in order, never overlap"
    assert any(j > 1 for j in jumps), "a gap: U > previous u + 1"
    assert st["faults"]["gaps"] >= 1
    ids = [t["t"] for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "non-depth streams are not gapped"


def test_duplicate_fault_sends_frames_twice_and_loses_none():
    async def body():
        async with sim_for(faults={"duplicate_probability": 0.3}) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
                frames, _ = await _collect(ws, 120)
            return frames

    frames = arun(body())
    ids = _trade_ids(frames)
    dups = [i for i, (a, b) in enumerate(zip(frames, frames[1:])) if a == b]
    assert dups, "some frame arrived twice in a row, byte-identical"
    uniq = sorted(set(ids))
    assert uniq == list(range(uniq[0], uniq[-1] + 1)), "no trade lost"


def test_reorder_fault_swaps_frames_but_loses_none():
    async def body():
        async with sim_for(faults={"reorder_probability": 0.3}) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
                frames, _ = await _collect(ws, 120)
            return frames

    ids = _trade_ids(arun(body()))
    assert ids != sorted(ids), "some trades arrive out of order"
    assert len(set(ids)) == len(ids)
    # a held frame is released by the end of each batch: only the tail may still be missing
    s = sorted(ids)
    assert s[:-2] == list(range(s[0], s[0] + len(s) - 2))


def test_malformed_fault_inserts_undecodable_frames_before_intact_data():
    async def body():
        async with sim_for(faults={"malformed_probability": 0.3}) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
                frames, _ = await _collect(ws, 150)
            return frames

    good, bad = [], 0
    for f in arun(body()):
        try:
            good.append(orjson.loads(f)["t"])
        except orjson.JSONDecodeError:
            bad += 1
    assert bad > 0
    assert good == list(range(good[0], good[0] + len(good))), "the real frames all still arrive, in order"


def test_snapshot_delay_and_failures():
    async def body():
        async with sim_for(faults={"snapshot_delay_ms": 300, "snapshot_fail_count": 2}) as sim, \
                aiohttp.ClientSession() as http:
            url = f"{sim.base_url}/api/v3/depth"
            out = []
            for _ in range(3):
                t0 = time.monotonic()
                status, headers, body = await get_json(http, url, symbol="BTCUSDT", limit=10)
                out.append((status, body, time.monotonic() - t0))
            return out

    out = arun(body())
    assert [s for s, _, _ in out] == [503, 503, 200]
    assert out[0][1]["code"] == -1008
    assert "lastUpdateId" in out[2][1]
    assert all(dt >= 0.29 for _, _, dt in out), "every snapshot answer was delayed"


def test_rest_status_sequence_answers_the_next_calls_then_recovers():
    async def body():
        async with sim_for(faults={"rest_status_sequence": [429, 500, 418], "retry_after_s": 7}) as sim, \
                aiohttp.ClientSession() as http:
            out = []
            for path in ("depth", "exchangeInfo", "time", "depth"):
                out.append(await get_json(http, f"{sim.base_url}/api/v3/{path}", symbol="BTCUSDT"))
            return out

    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3), (s4, h4, b4) = arun(body())
    assert (s1, s2, s3, s4) == (429, 500, 418, 200)
    assert h1["Retry-After"] == "7" and b1["code"] == -1003
    assert b2["code"] == -1001 and "Retry-After" not in h2
    assert h3["Retry-After"] == "7" and b3["code"] == -1003
    assert all("X-MBX-USED-WEIGHT-1M" in h for h in (h1, h2, h3, h4))


def test_faults_change_at_runtime_and_bad_values_are_refused():
    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            bad = await post_json(http, f"{sim.base_url}/sim/fault", {"gap_probability": 7})
            unknown = await post_json(http, f"{sim.base_url}/sim/fault", {"gap_prob": 0.1})
            ok = await post_json(http, f"{sim.base_url}/sim/fault", {"rest_status_sequence": [503]})
            status, _, _ = await get_json(http, f"{sim.base_url}/api/v3/time")
            status2, _, _ = await get_json(http, f"{sim.base_url}/api/v3/time")
            return bad, unknown, ok, status, status2

    bad, unknown, ok, status, status2 = arun(body())
    assert bad[0] == 400 and "gap_probability must be <= 1" in bad[1]["error"]
    assert unknown[0] == 400 and "gap_prob" in unknown[1]["error"]
    assert ok[0] == 200 and ok[1]["rest_status_sequence"] == [503]
    assert (status, status2) == (503, 200)


def test_fault_decisions_are_seeded_and_repeatable():
    f = FaultConfig(duplicate_probability=0.2, reorder_probability=0.2, malformed_probability=0.1,
                    gap_probability=0.2, disconnect_after_messages=0)  # fmt: skip

    def run(seed, conn):
        cf = ConnectionFaults(seed, conn, FaultStats())
        sent: list[bytes] = []
        for i in range(300):
            assert cf.apply(f, i % 3 == 0, b"frame-%d" % i, sent) == ACT_SEND
        cf.flush(sent)
        return sent

    assert run(1, 1) == run(1, 1)
    assert run(1, 1) != run(1, 2)
    out = run(1, 1)
    assert len(out) != 300 and b"frame-299" in out  # faults happened, the last frame is not held forever
    cf = ConnectionFaults(1, 1, FaultStats())
    assert cf.apply(FaultConfig(disconnect_probability=1.0), False, b"x", []) == ACT_ABORT
    sent: list[bytes] = []
    acts = [cf.apply(FaultConfig(disconnect_after_messages=2), False, b"y", sent) for _ in range(2)]
    assert acts == [ACT_SEND, ACT_CLOSE] and sent == [b"y", b"y"]


# ---------------------------------------------------------------------------------------------
# hostile frames (core.hostile), seen by a client and by the feed
# ---------------------------------------------------------------------------------------------
async def _collect_any(ws, n_frames: int, timeout: float = DEADLINE) -> list[tuple[aiohttp.WSMsgType, bytes]]:
    """Text and binary frames, as (type, bytes), until n_frames arrived."""
    frames = []
    while len(frames) < n_frames:
        msg = await ws.receive(timeout=timeout)
        if msg.type in CLOSING:
            raise AssertionError(f"the connection ended: {msg}")
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            frames.append((msg.type, msg.data.encode() if isinstance(msg.data, str) else msg.data))
    return frames


def test_hostile_fault_sends_every_class_before_intact_real_frames():
    from core.decode import Decoder
    from core.hostile import CLASSES
    from core.records import MD_TRADE

    async def body():
        async with sim_for() as sim, aiohttp.ClientSession() as http:
            # on at runtime, through the control route every fault goes through
            ok = await post_json(http, f"{sim.base_url}/sim/fault", {"hostile_probability": 0.5})
            async with http.ws_connect(f"{sim.ws_url}/stream?streams=btcusdt@trade/btcusdt@depth@100ms/"
                                       "btcusdt@bookTicker") as ws:
                frames = await _collect_any(ws, 900)
            return frames, ok, sim.stats()

    frames, ok, st = arun(body())
    assert ok[0] == 200 and ok[1]["hostile_probability"] == 0.5 and ok[1]["hostile_classes"] == []
    # a client decoding like the feed (the wall clock known), that has seen the market before this connection:
    # its time gate already holds the stream's clock, as it would after its first frames
    dec = Decoder(["BTCUSDT"], recv_wall_offset_ns=time.time_ns() - time.monotonic_ns())
    out = Decoder.new_out()
    now = time.time_ns() // 1_000_000
    assert dec.decode(b'{"e":"trade","E":%d,"s":"BTCUSDT","t":1,"p":"1.0","q":"1.0","T":%d,"m":true,"M":true}'
                      % (now, now), time.monotonic_ns(), out) == 1
    trade_ids, hostile = [], 0
    for kind, payload in frames:
        n = dec.decode(payload, time.monotonic_ns(), out)
        if n == 0:
            hostile += 1
            continue
        if out[0]["kind"] == MD_TRADE:
            trade_ids.append(int(out[0]["first_id"]))
    assert hostile > 150 and sum(dec.errors.values()) == hostile, "each hostile frame is exactly one drop"
    assert st["faults"]["hostile"] >= hostile and set(st["faults"]["hostile_by_class"]) == set(CLASSES)
    assert trade_ids == list(range(trade_ids[0], trade_ids[0] + len(trade_ids))), "every real trade, in order"
    assert any(kind == aiohttp.WSMsgType.BINARY for kind, _ in frames), "non-UTF-8 ones go as binary frames"
    kinds = {k for k, v in dec.errors.items() if v}
    assert {"unknown_symbol", "time_ahead", "time_behind", "malformed_json", "oversized"} <= kinds


def test_hostile_classes_restrict_the_draw_and_bad_names_are_refused():
    async def body():
        async with sim_for(faults={"hostile_probability": 1.0, "hostile_classes": ["truncated"]}) as sim, \
                aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@trade") as ws:
                frames = await _collect_any(ws, 40)
            bad = await post_json(http, f"{sim.base_url}/sim/fault", {"hostile_classes": ["nonsense"]})
            bad_type = await post_json(http, f"{sim.base_url}/sim/fault", {"hostile_classes": "truncated"})
            return frames, bad, bad_type, sim.stats()

    frames, bad, bad_type, st = arun(body())
    assert st["faults"]["hostile_by_class"] == {"truncated": st["faults"]["hostile"]}
    payloads = [p for _, p in frames]
    for a, b in zip(payloads[::2], payloads[1::2]):  # probability 1: every real frame comes after its truncation
        assert b.startswith(a) and len(a) < len(b)
        orjson.loads(b)
    assert bad[0] == 400 and "hostile_classes[0]" in bad[1]["error"]
    assert bad_type[0] == 400 and "hostile_classes" in bad_type[1]["error"]


def test_hostile_fault_config_round_trips_and_is_validated():
    import pytest

    f = FaultConfig.from_dict({"hostile_probability": 0.25, "hostile_classes": ["oversized", "non_utf8"]})
    assert (f.hostile_probability, f.hostile_classes) == (0.25, ("oversized", "non_utf8"))
    assert FaultConfig.from_dict(f.to_dict()) == f
    with pytest.raises(ConfigError, match="hostile_probability"):
        FaultConfig.from_dict({"hostile_probability": 1.5})
    cf = ConnectionFaults(3, 1, FaultStats())
    sent: list[bytes] = []
    for i in range(50):  # seeded like every other fault: the same frames on a replay of the test
        cf.apply(FaultConfig(hostile_probability=0.5), False, b'{"e":"trade","E":1,"s":"X","t":%d}' % i, sent)
    again: list[bytes] = []
    cf2 = ConnectionFaults(3, 1, FaultStats())
    for i in range(50):
        cf2.apply(FaultConfig(hostile_probability=0.5), False, b'{"e":"trade","E":1,"s":"X","t":%d}' % i, again)
    assert sent == again and len(sent) > 50


def test_the_feed_drops_every_hostile_frame_and_keeps_every_book_whole():
    from test_feed import check_chain, diffs_after_snapshot, running_feed, settings_for

    async def body():
        async with sim_for() as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, "two snapshots")
                sim.set_faults({"hostile_probability": 0.2})
                await wait_until(lambda: sim.stats()["faults"]["hostile"] > 60
                                 and min(diffs_after_snapshot(col, 0), diffs_after_snapshot(col, 1)) >= 6,
                                 "hostile frames and diffs after both snapshots", step=0.05)
                sim.set_faults({"hostile_probability": 0.0})  # the injected count is final from here
                sim.source.paused = True
                injected = sim.stats()["faults"]["hostile"]
                await wait_until(lambda: fc.stats.frames == sim.stats()["frames_sent"]
                                 and sum(fc.decoder.errors.values()) >= injected,
                                 "every frame sent, each hostile one among them, to arrive")
                fc._sync_error_counts()
                assert fc.connected
            return fc, col, sim.stats()

    fc, col, st = arun(body(), 3 * DEADLINE)
    injected = st["faults"]["hostile"]
    assert sum(fc.stats.decode_errors.values()) == injected, (fc.stats.decode_errors, st["faults"])
    assert fc.stats.connects == 1, "no hostile frame cost the connection"
    got = col.all()
    assert check_chain(got, 0) > 3 and check_chain(got, 1) > 3  # every real frame arrived, in order
    assert fc.decoder.time_reanchors == 0


# ---------------------------------------------------------------------------------------------
# hostile requests: every request parser answers with a Binance error code, never an exception
# ---------------------------------------------------------------------------------------------

PARAM_NAMES = ("symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price", "newClientOrderId",
               "origClientOrderId", "orderId", "newOrderRespType", "selfTradePreventionMode", "strategyId",
               "strategyType", "cancelRestrictions", "computeCommissionRates", "omitZeroBalances", "startTime",
               "endTime", "fromId", "limit", "recvWindow", "timestamp", "signature", "apiKey", "icebergQty")
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["BTCUSDT", "btcusdt", "BUY", "SELL", "LIMIT", "MARKET", "GTC", "IOC", "FOK", "1", "0", "-1",
                     "0.001", "60000.00", "1e5", "NaN", "inf", "", " ", "9" * 30, "9" * 5000, "0." + "0" * 40 + "1",
                     "true", "false", "null", "\u0000", "é", "١٢٣", "%00", "../../", "💥"]),
    st.text(max_size=40),
)
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
              HOSTILE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _is_binance_error(body: dict) -> bool:
    return isinstance(body.get("code"), int) and body["code"] < 0 and isinstance(body.get("msg"), str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(OPS), params=st.dictionaries(st.sampled_from(PARAM_NAMES), HOSTILE_TEXT, max_size=9))
def test_order_service_params_always_get_an_answer_or_a_binance_error(op, params):
    sim = _fuzz_sim()
    account = next(iter(sim.orders.accounts))
    try:
        status, body, _headers = sim.orders.dispatch(op, account, params)
    except BinanceError as exc:
        assert exc.code < 0 and 400 <= exc.status < 500, (exc.code, exc.status, exc.msg)
        assert _is_binance_error(exc.body())
        return
    assert status == 200 and isinstance(orjson.loads(orjson.dumps(body)), (dict, list))


@settings(max_examples=300, deadline=None)
@given(query=st.text(max_size=120), body=st.text(max_size=120))
def test_rest_query_and_body_parse_or_answer_a_binance_error(query, body):
    try:
        req = parse_rest(query, body)
    except BinanceError as exc:
        assert exc.code == -1101  # a duplicated parameter: the one thing the parser itself refuses
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in req.params.items())


def _control_requests():
    return st.one_of(
        st.text(max_size=120),
        JSON_VALUE.map(lambda v: orjson.dumps(v).decode()),
        st.fixed_dictionaries({}, optional={
            "id": JSON_VALUE,
            "method": st.one_of(st.sampled_from(["SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY",
                                                 "GET_PROPERTY", "subscribe"]), JSON_VALUE),
            "params": st.one_of(st.lists(st.one_of(st.sampled_from(["btcusdt@trade", "btcusdt@depth@100ms",
                                                                    "combined", "x@kline_1m"]), JSON_VALUE),
                                         max_size=5), JSON_VALUE),
        }).map(lambda d: orjson.dumps(d).decode()),
    )


@settings(max_examples=300, deadline=None)
@given(text=_control_requests())
def test_stream_control_frames_always_get_a_binance_reply(text):
    from processes.simulator.server import WsClient

    client = WsClient(_fuzz_sim().hub, None, None, 1, True)
    reply = orjson.loads(client.handle_control(text))
    assert ("result" in reply and "id" in reply) or (isinstance(reply.get("code"), int)
                                                      and isinstance(reply.get("msg"), str))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(
    st.text(max_size=120),
    JSON_VALUE.map(lambda v: orjson.dumps(v).decode()),
    st.fixed_dictionaries({}, optional={
        "id": st.one_of(st.integers(0, 10**6), JSON_VALUE),
        "method": st.one_of(st.sampled_from(["ping", "time", "order.place", "order.status", "session.logon",
                                             "userDataStream.subscribe", "v3/order.cancel", "account.status"]),
                            JSON_VALUE),
        "params": st.one_of(st.dictionaries(st.sampled_from(PARAM_NAMES), st.one_of(HOSTILE_TEXT, JSON_VALUE),
                                            max_size=6), JSON_VALUE),
    }).map(lambda d: orjson.dumps(d).decode()),
))
def test_ws_api_requests_always_get_one_binance_response(text):
    from aiohttp.test_utils import make_mocked_request

    from processes.simulator.wsapi import WsApiSession

    async def one():
        s = WsApiSession(_fuzz_sim().wsapi, make_mocked_request("GET", "/ws-api/v3"), None, 1, "127.0.0.1")
        s.on_text(text)
        await asyncio.sleep(0)
        items = []
        while not s.queue.empty():
            items.append(s.queue.get_nowait())
        for t in list(s.tasks):
            t.cancel()
        return items

    items = asyncio.run(one())
    assert len(items) == 1 and isinstance(items[0], bytes), items
    resp = orjson.loads(items[0])
    assert isinstance(resp.get("status"), int)
    if resp["status"] != 200:
        assert _is_binance_error(resp["error"]), resp


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(["/api/v3/depth", "/api/v3/exchangeInfo"]),
       params=st.dictionaries(st.sampled_from(["symbol", "symbols", "limit"]),
                              st.one_of(HOSTILE_TEXT, JSON_VALUE.map(lambda v: orjson.dumps(v).decode())),
                              max_size=3))
def test_public_rest_queries_answer_200_or_a_binance_error(path, params):
    from urllib.parse import urlencode

    from aiohttp.test_utils import make_mocked_request

    sim = _fuzz_sim()
    handler = sim._depth if path.endswith("depth") else sim._exchange_info

    async def one():
        req = make_mocked_request("GET", f"{path}?{urlencode(params)}")
        return await sim._rest_middleware(req, handler)

    resp = asyncio.run(one())
    if resp.status != 200:
        assert 400 <= resp.status < 500 and _is_binance_error(orjson.loads(resp.body)), (resp.status, resp.body)


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(FaultConfig.KEYS) + ["nonsense"]), JSON_VALUE, max_size=3))
def test_fault_changes_are_applied_or_refused_with_the_key_named(changes):
    sim = _fuzz_sim()
    before = sim.hub.faults
    try:
        sim.set_faults(changes)
    except ConfigError as exc:
        assert any(k in str(exc) for k in changes), str(exc)
        assert sim.hub.faults is before  # a refused change leaves the faults as they were
    finally:
        sim.hub.faults = FaultConfig()


@functools.cache
def _fuzz_sim():
    """One simulator, never started: its parsers and order service, called in-process."""
    return sim_for()

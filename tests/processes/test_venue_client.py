"""processes.venue_client against the simulator over 127.0.0.1 (uvloop, real sockets), and its limiter and clock.

Both transports: every order type and query round trip, the user data stream
(HMAC per-request signing and an Ed25519 logon session), each simulator fault
mapped to its error class, the limiter under a burst (no 429: it waits), the
clock after a skew (-1021, resync, the retry succeeds), and the WS session
surviving a dropped connection, a serverShutdown (make before break) and the
server's pings. RateLimiter and ClockSync also run on fake clocks.
"""

from __future__ import annotations

import asyncio
import time
from decimal import ROUND_DOWN, Decimal

import httpx
import orjson
import pytest
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from core.errors import RateLimitedError, RingtraderError, VenueError
from core.signing import load_credentials
from processes.simulator import Simulator
from processes.venue_client import (
    ClockSync,
    RateLimiter,
    RestClient,
    UnknownOutcomeError,
    VenueTransportError,
    WsApiClient,
)
from simulator_helpers import DEADLINE, make_cfg, specs, wait_until

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"  # Binance's documented example key
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
ED_KEY = "vcEdKey0001"
ED_PRIV = Ed25519PrivateKey.generate()
ACCOUNTS = [
    {"name": "main", "balances": {"USDT": "1000000", "BTC": "20", "ETH": "10"}},
    {"name": "ed", "api_key_env": "VC_ED_KEY", "api_secret_env": "VC_ED_PUB", "key_type": "ed25519",
     "balances": {"USDT": "100000", "BTC": "2"}},
]  # fmt: skip
D = Decimal
QTY = "0.00100"
SYMBOL = "BTCUSDT"


@pytest.fixture(autouse=True)
def env_keys(monkeypatch):
    """The simulator's accounts read their keys from these; the clients read theirs (Ed25519: the private key)."""
    monkeypatch.setenv("BINANCE_SIM_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_SIM_API_SECRET", SECRET)
    monkeypatch.setenv("VC_ED_KEY", ED_KEY)
    monkeypatch.setenv("VC_ED_PUB", ED_PRIV.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
                       .decode())  # fmt: skip
    monkeypatch.setenv("VC_ED_PRIV", ED_PRIV.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode())


def arun(coro, timeout: float = 4 * DEADLINE):
    """Run one async test body on uvloop (the production loop) with an overall timeout."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


def running(body_fn, timeout: float = 4 * DEADLINE, **overrides):
    """``body_fn(sim, http)`` against a fresh simulator (port 0, accounts main (HMAC) + ed (Ed25519))."""
    overrides.setdefault("accounts", ACCOUNTS)
    overrides.setdefault("rate", 200)

    async def main():
        cfg = make_cfg(**overrides)
        async with Simulator(cfg, specs(cfg)) as sim:
            async with httpx.AsyncClient(base_url=sim.base_url) as http:
                return await body_fn(sim, http)

    return arun(main(), timeout)


def rest_client(sim: Simulator, **kw) -> RestClient:
    creds = load_credentials("BINANCE_SIM_API_KEY", "BINANCE_SIM_API_SECRET")
    return RestClient(sim.base_url, creds.api_key, creds.signer, **kw)


def ws_client(sim: Simulator, *, ed: bool = False, **kw) -> WsApiClient:
    creds = (load_credentials("VC_ED_KEY", "VC_ED_PRIV", key_type="ed25519") if ed
             else load_credentials("BINANCE_SIM_API_KEY", "BINANCE_SIM_API_SECRET"))  # fmt: skip
    kw.setdefault("reconnect_base_s", 0.05)
    return WsApiClient(f"{sim.ws_url}/ws-api/v3", creds.api_key, creds.signer, **kw)


async def fault(http: httpx.AsyncClient, **changes) -> None:
    r = await http.post("/sim/fault", content=orjson.dumps(changes))
    assert r.status_code == 200, r.text


async def prices(http: httpx.AsyncClient) -> tuple[str, str, str]:
    """(a BUY price 10 % under the bid: rests, never fills; a price 2 % over the ask: always takes; the bid)."""
    book = (await http.get("/api/v3/depth", params={"symbol": SYMBOL, "limit": 5})).json()
    bid, ask = D(book["bids"][0][0]), D(book["asks"][0][0])
    cent = D("0.01")
    return str((bid * D("0.9")).quantize(cent, ROUND_DOWN)), str((ask * D("1.02")).quantize(cent, ROUND_DOWN)), str(bid)


def events_of(events: list[dict], cid: str) -> list[str]:
    return [e["x"] for e in events if e.get("e") == "executionReport" and cid in (e.get("c"), e.get("C"))]


# ---------------------------------------------------------------------------------------------
# RateLimiter and ClockSync on fake clocks
# ---------------------------------------------------------------------------------------------
class FakeTime:
    """A venue clock (ms) and a monotonic clock (s) that only move when the limiter sleeps."""

    def __init__(self, venue_ms: int):
        self.venue_ms = venue_ms
        self.mono = 1000.0
        self.slept: list[float] = []

    def clock_ms(self) -> int:
        return self.venue_ms

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.mono += s
        self.venue_ms += int(round(s * 1000))


def fake_limiter(t: FakeTime, **kw) -> RateLimiter:
    kw.setdefault("rate_limit_per_second", 0)
    return RateLimiter(clock_ms=t.clock_ms, monotonic=t.monotonic, sleep=t.sleep, **kw)


RAW_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 5},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 1000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
]


def test_limiter_full_ten_second_window_waits_for_the_next_calendar_window():
    t = FakeTime(1_700_000_003_000)  # 3 s into a 10 s window
    lim = fake_limiter(t, limits=RAW_LIMITS, guard_ms=100)

    async def body():
        for _ in range(5):
            lim.release(await lim.acquire_order())
        assert t.slept == [], "five fit the window"
        lim.release(await lim.acquire_order())
        return t.venue_ms

    after = arun(body())
    assert t.slept == [pytest.approx(7.1)], "until the window ends (:10) plus the guard"
    assert after % 10_000 == 100
    assert lim.used("ORDERS", 10_000) == 1 and lim.used("ORDERS", 86_400_000) == 6


def test_limiter_counts_a_send_near_a_boundary_in_both_windows():
    t = FakeTime(1_700_000_009_950)  # 50 ms before :10
    lim = fake_limiter(t, limits=RAW_LIMITS, guard_ms=100)

    async def body():
        return await lim.acquire_order()

    ticket = arun(body())
    w = 1_700_000_009_950 // 10_000
    assert ticket.idxs[("ORDERS", 10_000)] == (w, w + 1)
    assert lim.windows[("ORDERS", 10_000)].counts == {w: 1, w + 1: 1}


def test_limiter_takes_the_venues_count_plus_what_it_has_in_flight():
    t = FakeTime(1_700_000_001_000)
    lim = fake_limiter(t, limits=RAW_LIMITS)

    async def body():
        a = await lim.acquire_order()
        b = await lim.acquire_order()
        c = await lim.acquire_order()
        assert lim.used("ORDERS", 10_000) == 3
        # a's answer: the venue counts 1 (a filled order gave its unit back, say); b and c are still in flight
        lim.observe_rate_limits([{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 7,
                                  "count": 1}], a)  # fmt: skip
        lim.release(a)
        assert lim.used("ORDERS", 10_000) == 3 and lim.limit("ORDERS", 10_000) == 7, "1 + 2 in flight; new limit"
        lim.observe_headers({"X-MBX-ORDER-COUNT-10S": "0", "X-MBX-USED-WEIGHT-1M": "42"}, b)
        lim.release(b)
        assert lim.used("ORDERS", 10_000) == 1 and lim.used("REQUEST_WEIGHT", 60_000) == 42 + 1
        lim.release(c)

    arun(body())
    assert lim.stats.updates == 3


def test_limiter_pauses_orders_after_429_and_halts_everything_after_418():
    t = FakeTime(1_700_000_001_000)
    halts: list[float] = []
    lim = fake_limiter(t, limits=RAW_LIMITS, on_halt=halts.append)

    async def body():
        lim.on_429(2.0, orders_only=True)
        lim.release(await lim.acquire(5))  # a query is not held up by an ORDERS pause
        assert t.slept == []
        lim.release(await lim.acquire_order())
        assert t.slept == [pytest.approx(2.0)]
        lim.on_418(60.0)
        assert lim.halted and halts == [60.0]
        with pytest.raises(RateLimitedError) as ei:
            await lim.acquire(1)
        assert ei.value.status == 418 and ei.value.retry_after_s == pytest.approx(60.0)
        t.mono += 60.0
        assert not lim.halted
        lim.release(await lim.acquire(1))

    arun(body())


def test_limiter_refuses_a_wait_past_max_wait_s_and_caps_orders_per_second():
    t = FakeTime(1_700_000_001_000)
    lim = fake_limiter(t, limits=[{"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 2}],
                       max_wait_s=30.0)  # fmt: skip
    t2 = FakeTime(1_700_000_001_000)
    capped = fake_limiter(t2, rate_limit_per_second=3)

    async def body():
        for _ in range(2):
            lim.release(await lim.acquire_order())
        with pytest.raises(RateLimitedError) as ei:
            await lim.acquire_order()
        assert ei.value.status == 0 and "ORDERS 2/2" in ei.value.msg, "status 0: refused here, not by the venue"
        for _ in range(4):
            capped.release(await capped.acquire_order())

    arun(body())
    assert t.slept == [] and t2.slept == [pytest.approx(1.0)], "the 4th order of one second waits for the 1st to age"


def test_limiter_seeds_from_a_venue_info_and_from_the_raw_list():
    from core.filters import RateLimit, VenueInfo

    info = VenueInfo(symbols={}, rate_limits=(RateLimit(rate_limit_type="ORDERS", interval="SECOND", interval_num=10,
                                                        limit=50),
                                              RateLimit(rate_limit_type="REQUEST_WEIGHT", interval="MINUTE",
                                                        interval_num=1, limit=6000)))  # fmt: skip
    a, b = RateLimiter(info), RateLimiter(RAW_LIMITS)
    assert a.limit("ORDERS", 10_000) == 50 and a.limit("REQUEST_WEIGHT", 60_000) == 6000
    assert b.limit("ORDERS", 10_000) == 5 and b.limit("ORDERS", 86_400_000) == 1000
    assert ("RAW_REQUESTS", 300_000) not in b.windows


def test_clock_sync_keeps_the_sample_with_the_smallest_round_trip():
    now = [1_000_000_000_000_000_000]  # host ns
    rtts = iter([8, 2, 5])  # ms per sample; the venue is 250 ms ahead, answering mid-way

    async def fetch() -> int:
        rtt = next(rtts)
        now[0] += rtt * 500_000
        server = now[0] // 1_000_000 + 250 + (3 if rtt != 2 else 0)  # the noisy samples are off by 3 ms
        now[0] += rtt * 500_000
        return server

    clock = ClockSync(fetch, samples=3, clock_ns=lambda: now[0])
    offset = arun(clock.sync())
    assert offset == pytest.approx(250.5) and clock.rtt_ms == pytest.approx(2.0)
    assert clock.now_ms() == now[0] // 1_000_000 + 250


def test_clock_resync_shares_one_sync_between_concurrent_callers():
    calls = [0]

    async def fetch() -> int:
        calls[0] += 1
        await asyncio.sleep(0.01)
        return time.time_ns() // 1_000_000

    clock = ClockSync(fetch, samples=2)

    async def body():
        await asyncio.gather(*(clock.resync() for _ in range(5)))

    arun(body())
    assert calls[0] == 2 and clock.syncs == 1


def test_an_offset_risk_refuses_to_trade_at_is_measured_again_in_seconds_not_at_the_minutes_refresh():
    """A venue clock that stepped 10 s ahead and then back: while the measured offset is at least
    ``fast_above_ms`` the background refresh comes every ``fast_refresh_s``, so the step back is seen within
    seconds (risk refuses to trade until it is); a normal offset keeps the minute's refresh."""
    venue_ahead_ms = [0]

    async def fetch() -> int:
        return time.time_ns() // 1_000_000 + venue_ahead_ms[0]

    clock = ClockSync(fetch, samples=1, refresh_s=60.0, fast_above_ms=1000, fast_refresh_s=0.05)
    assert clock.next_refresh_s() == 60.0  # never synced: nothing known to be wrong

    async def body():
        await clock.sync()
        clock.start()  # in the middle of the minute's wait...
        await asyncio.sleep(0.1)
        venue_ahead_ms[0] = 10_000  # ...the venue's clock steps ahead: an order's -1021 resyncs the clock
        await clock.resync()
        assert clock.offset_ms > 9000 and clock.next_refresh_s() == 0.05
        venue_ahead_ms[0] = 0  # the venue's clock steps back: the running refresh loop must see it soon
        deadline = time.monotonic() + 5
        while abs(clock.offset_ms) >= 1000 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await clock.stop()

    arun(body())
    assert abs(clock.offset_ms) < 1000 and clock.next_refresh_s() == 60.0
    assert ClockSync(fetch).next_refresh_s() == 60.0  # without fast_above_ms: the plain refresh


def test_unknown_outcome_is_not_a_venue_error():
    assert issubclass(UnknownOutcomeError, VenueTransportError) and issubclass(VenueTransportError, RingtraderError)
    assert not issubclass(UnknownOutcomeError, VenueError), "'except VenueError' must never swallow an unknown outcome"


# ---------------------------------------------------------------------------------------------
# REST round trips
# ---------------------------------------------------------------------------------------------
def test_rest_every_order_type_and_query_round_trips():
    async def body(sim, http):
        far, take, _ = await prices(http)
        async with rest_client(sim) as rest:
            info = await rest.exchange_info([SYMBOL])
            assert [s["symbol"] for s in info["symbols"]] == [SYMBOL]
            assert rest.limiter.limit("ORDERS", 10_000) == sim.cfg.orders_per_10s, "exchangeInfo seeds the limiter"
            out = {"time": await rest.server_time() - time.time() * 1000}
            out["limit"] = await rest.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC",
                                                  quantity=QTY, price=far, newClientOrderId="rest-limit")  # fmt: skip
            out["status"] = await rest.query_order(SYMBOL, orig_client_order_id="rest-limit")
            out["by_id"] = await rest.query_order(SYMBOL, order_id=out["limit"]["orderId"])
            out["open"] = await rest.open_orders(SYMBOL)
            out["cancel"] = await rest.cancel_order(SYMBOL, orig_client_order_id="rest-limit")
            out["market"] = await rest.place_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity=QTY)
            out["maker"] = await rest.place_order(symbol=SYMBOL, side="BUY", type="LIMIT_MAKER", quantity=QTY,
                                                  price=far, newOrderRespType="RESULT")  # ACK by default  # fmt: skip
            with pytest.raises(VenueError) as ei:
                await rest.place_order(symbol=SYMBOL, side="BUY", type="LIMIT_MAKER", quantity=QTY, price=take)
            out["maker_refused"] = ei.value
            out["ioc"] = await rest.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="IOC",
                                                quantity=QTY, price=far)  # fmt: skip
            out["fok_far"] = await rest.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="FOK",
                                                    quantity=QTY, price=far)  # fmt: skip
            out["fok_take"] = await rest.place_order(symbol=SYMBOL, side="SELL", type="LIMIT", timeInForce="FOK",
                                                     quantity=QTY, price=far)  # fmt: skip
            out["cancel_all"] = await rest.cancel_all(SYMBOL)
            out["all"] = await rest.all_orders(SYMBOL)
            out["account"] = await rest.account(omit_zero_balances=True)
            trades = await rest.my_trades(SYMBOL)
            out["trades"] = trades
            out["trades_from"] = await rest.my_trades(SYMBOL, from_id=trades[-1]["id"])
            with pytest.raises(VenueError) as ei:
                await rest.query_order(SYMBOL, orig_client_order_id="never-sent")
            out["unknown"] = ei.value
            out["weight_used"] = rest.limiter.used("REQUEST_WEIGHT", 60_000)
            out["stats"] = rest.stats.as_dict()
        ed = load_credentials("VC_ED_KEY", "VC_ED_PRIV", key_type="ed25519")
        async with RestClient(sim.base_url, ed.api_key, ed.signer) as ed_rest:  # base64 signature, percent-encoded
            out["ed_account"] = await ed_rest.account(omit_zero_balances=True)
            out["ed_order"] = await ed_rest.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC",
                                                        quantity=QTY, price=far)  # fmt: skip
        return out

    out = running(body)
    assert abs(out["time"]) < 1_000
    assert out["limit"]["status"] == "NEW" and out["limit"]["clientOrderId"] == "rest-limit"
    assert out["status"]["status"] == "NEW" and out["by_id"]["clientOrderId"] == "rest-limit"
    assert [o["clientOrderId"] for o in out["open"]] == ["rest-limit"]
    assert out["cancel"]["status"] == "CANCELED" and out["cancel"]["origClientOrderId"] == "rest-limit"
    assert out["market"]["status"] == "FILLED" and out["market"]["fills"]
    assert out["market"]["clientOrderId"].startswith("rt"), "a client order id is generated when none is given"
    assert out["maker"]["status"] == "NEW"
    assert (out["maker_refused"].status, out["maker_refused"].code) == (400, -2010)
    assert out["ioc"]["status"] == "EXPIRED" and out["fok_far"]["status"] == "EXPIRED"
    assert out["fok_take"]["status"] == "FILLED"
    assert [o["status"] for o in out["cancel_all"]] == ["CANCELED"], "the LIMIT_MAKER was the one open order"
    assert len(out["all"]) == 6
    assert {b["asset"] for b in out["account"]["balances"]} >= {"BTC", "USDT"}
    assert len(out["trades"]) >= 2 and out["trades_from"] == out["trades"][-1:]
    assert out["unknown"].code == -2013
    assert out["weight_used"] > 0, "X-MBX-USED-WEIGHT-1M reached the limiter"
    assert out["stats"]["rejected"] == 2 and out["stats"]["unknown_outcomes"] == 0
    assert {b["asset"] for b in out["ed_account"]["balances"]} == {"BTC", "USDT"}, "the Ed25519 account signs REST"
    assert out["ed_order"]["status"] == "NEW"


# ---------------------------------------------------------------------------------------------
# WS API sessions and the user data stream
# ---------------------------------------------------------------------------------------------
async def _ws_round_trips(sim, http, *, ed: bool) -> dict:
    far, take, _ = await prices(http)
    events: list[dict] = []
    auth_before = sim.auth.stats["ok"]
    async with ws_client(sim, ed=ed, on_event=events.append) as ws:
        out: dict = {"logged_on": ws.logged_on, "time": await ws.server_time() - time.time() * 1000}
        await ws.ping()
        out["limit"] = await ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC",
                                            quantity=QTY, price=far, newClientOrderId="ws-limit")  # fmt: skip
        out["status"] = await ws.query_order(SYMBOL, orig_client_order_id="ws-limit")
        out["open"] = await ws.open_orders(SYMBOL)
        out["cancel"] = await ws.cancel_order(SYMBOL, order_id=out["limit"]["orderId"])
        out["market"] = await ws.place_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity=QTY,
                                             newClientOrderId="ws-market")  # fmt: skip
        out["maker"] = await ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT_MAKER", quantity=QTY, price=far,
                                            newClientOrderId="ws-maker", newOrderRespType="RESULT")  # fmt: skip
        with pytest.raises(VenueError) as ei:
            await ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT_MAKER", quantity=QTY, price=take)
        out["maker_refused"] = ei.value.code
        out["ioc"] = await ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="IOC", quantity=QTY,
                                          price=far, newClientOrderId="ws-ioc")  # fmt: skip
        out["fok"] = await ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="FOK", quantity=QTY,
                                          price=take, newClientOrderId="ws-fok")  # fmt: skip
        out["cancel_all"] = await ws.cancel_all(SYMBOL)
        out["all"] = await ws.all_orders(SYMBOL)
        out["account"] = await ws.account()
        out["trades"] = await ws.my_trades(SYMBOL, from_id=0)
        await wait_until(lambda: "CANCELED" in events_of(events, "ws-maker"), "the cancelAll's report")
        out["events"] = {cid: events_of(events, cid) for cid in ("ws-limit", "ws-market", "ws-maker", "ws-ioc",
                                                                  "ws-fok")}  # fmt: skip
        out["positions"] = sum(e["e"] == "outboundAccountPosition" for e in events)
        out["orders_limit"] = ws.limiter.limit("ORDERS", 10_000)
        out["stats"] = ws.stats.as_dict()
    out["signatures_checked"] = sim.auth.stats["ok"] - auth_before
    return out


def _check_ws_round_trips(out: dict) -> None:
    assert abs(out["time"]) < 1_000
    assert out["limit"]["status"] == "NEW" and out["status"]["clientOrderId"] == "ws-limit"
    assert [o["clientOrderId"] for o in out["open"]] == ["ws-limit"]
    assert out["cancel"]["status"] == "CANCELED"
    assert out["market"]["status"] == "FILLED" and out["maker"]["status"] == "NEW"
    assert out["maker_refused"] == -2010
    assert out["ioc"]["status"] == "EXPIRED" and out["fok"]["status"] == "FILLED"
    assert [o["origClientOrderId"] for o in out["cancel_all"]] == ["ws-maker"]
    assert len(out["all"]) == 5 and out["account"]["canTrade"] is True and len(out["trades"]) >= 2
    ev = out["events"]
    assert ev["ws-limit"] == ["NEW", "CANCELED"]
    assert ev["ws-market"][0] == "NEW" and "TRADE" in ev["ws-market"]
    assert ev["ws-maker"] == ["NEW", "CANCELED"]
    assert ev["ws-ioc"] == ["NEW", "EXPIRED"] and ev["ws-fok"][0] == "NEW" and "TRADE" in ev["ws-fok"]
    assert out["positions"] >= 2
    assert out["orders_limit"] == 100, "the limiter learned the ORDERS limit from rateLimits"
    assert out["stats"]["events"] >= 12 and out["stats"]["bad_frames"] == 0


def test_ws_hmac_session_signs_every_request_and_streams_user_events():
    out = running(lambda sim, http: _ws_round_trips(sim, http, ed=False))
    _check_ws_round_trips(out)
    assert out["logged_on"] is False, "HMAC keys cannot log on"
    assert out["signatures_checked"] == 14, "subscribe.signature and each of the 13 signed requests was verified"


def test_ws_ed25519_session_logs_on_and_requests_carry_no_signature():
    out = running(lambda sim, http: _ws_round_trips(sim, http, ed=True))
    _check_ws_round_trips(out)
    assert out["logged_on"] is True
    assert out["signatures_checked"] == 1, "only session.logon was signed; the stream came from subscribe"


# ---------------------------------------------------------------------------------------------
# Faults -> error classes
# ---------------------------------------------------------------------------------------------
def cid(name: str) -> str:
    return "f-" + name.replace("_", "-")


def test_rest_order_faults_map_to_error_classes():
    async def body(sim, http):
        far, _, _ = await prices(http)
        got: dict = {}
        order = dict(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity=QTY, price=far)
        async with rest_client(sim, order_timeout_s=1.0) as rest:
            await fault(http, order_fault_sequence=["drop", "hang", "500", "502", "503", "hang"], order_hang_s=0.2,
                        retry_after_s=1)  # fmt: skip
            for name in ("drop", "hang_504", "500", "502", "503"):
                with pytest.raises(UnknownOutcomeError) as ei:
                    await rest.place_order(**order, newClientOrderId=cid(name))
                got[name] = ei.value
            await fault(http, order_hang_s=3.0)
            with pytest.raises(UnknownOutcomeError) as ei:
                await rest.place_order(**order, newClientOrderId=cid("hang_timeout"))
            got["hang_timeout"] = ei.value
            got["found"] = [(await rest.query_order(SYMBOL, orig_client_order_id=cid(n)))["status"]
                            for n in ("drop", "hang_504", "500", "502", "503", "hang_timeout")]  # fmt: skip
            await fault(http, rest_status_sequence=[503])
            with pytest.raises(VenueTransportError) as ei:
                await rest.open_orders(SYMBOL)
            got["read_503"] = ei.value
            # 429: the order is refused, new orders pause until Retry-After (1 s), then go through
            await fault(http, order_fault_sequence=["429"])
            with pytest.raises(RateLimitedError) as ei:
                await rest.place_order(**order)
            got["429"] = ei.value
            waits = rest.limiter.stats.waits
            got["after_429"] = (await rest.place_order(**order))["status"]
            got["paced"] = rest.limiter.stats.waits - waits
            # 418: halted; the next request is refused here, without reaching the venue
            await fault(http, order_fault_sequence=["418"])
            with pytest.raises(RateLimitedError) as ei:
                await rest.place_order(**order)
            got["418"] = ei.value
            got["halted"] = rest.limiter.halted
            n = sim.rest_stats["requests"]
            with pytest.raises(RateLimitedError) as ei:
                await rest.query_order(SYMBOL, orig_client_order_id=cid("drop"))
            got["during_ban"] = (ei.value.status, sim.rest_stats["requests"] - n)
            got["stats"] = rest.stats.as_dict()
        return got

    got = running(body)
    for name in ("drop", "hang_504", "500", "502", "503", "hang_timeout"):
        e = got[name]
        assert isinstance(e, UnknownOutcomeError) and not isinstance(e, VenueError), name
        assert e.client_order_id == cid(name) and e.symbol == SYMBOL
    assert got["drop"].reason == "disconnected" and got["hang_timeout"].reason == "timeout"
    assert (got["hang_504"].status, got["hang_504"].code) == (504, -1007)
    assert [got[s].code for s in ("500", "502", "503")] == [-1001, -1007, -1008]
    assert got["found"] == ["NEW"] * 6, "every unknown outcome had in fact happened: the query says so"
    assert type(got["read_503"]) is VenueTransportError and got["read_503"].status == 503, "a read is not unknown"
    assert (got["429"].status, got["429"].code, got["429"].retry_after_s) == (429, -1015, 1.0)
    assert got["after_429"] == "NEW" and got["paced"] >= 1, "the next order waited out the Retry-After"
    assert got["418"].status == 418 and got["halted"] is True
    assert got["during_ban"] == (418, 0)
    assert got["stats"]["unknown_outcomes"] == 6 and got["stats"]["timeouts"] == 1


def test_ws_order_faults_map_to_error_classes_and_the_session_recovers():
    async def body(sim, http):
        far, _, _ = await prices(http)
        got: dict = {"disconnects": [], "reconnects": 0, "halts": []}
        order = dict(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity=QTY, price=far)

        def on_reconnect():
            got["reconnects"] += 1

        limiter = RateLimiter(on_halt=got["halts"].append)
        async with ws_client(sim, ed=True, on_event=lambda e: None, order_timeout_s=1.0, limiter=limiter,
                             ready_wait_s=0.2, on_disconnect=got["disconnects"].append,
                             on_reconnect=on_reconnect) as ws:  # fmt: skip
            await fault(http, order_fault_sequence=["drop"], retry_after_s=1)
            with pytest.raises(UnknownOutcomeError) as ei:
                await ws.place_order(**order, newClientOrderId="ws-drop")
            got["drop"] = ei.value
            await wait_until(lambda: ws.connected and got["reconnects"] == 1, "the reconnect after the drop")
            got["drop_found"] = (await ws.query_order(SYMBOL, orig_client_order_id="ws-drop"))["status"]
            await fault(http, order_fault_sequence=["hang", "500", "503", "hang"], order_hang_s=0.2)
            for name in ("hang_504", "500", "503"):
                with pytest.raises(UnknownOutcomeError) as ei:
                    await ws.place_order(**order, newClientOrderId=f"ws-{name}")
                got[name] = ei.value
            await fault(http, order_hang_s=2.0)
            with pytest.raises(UnknownOutcomeError) as ei:
                await ws.place_order(**order, newClientOrderId="ws-hang-timeout")
            got["hang_timeout"] = ei.value
            got["others_meanwhile"] = (await ws.query_order(SYMBOL, orig_client_order_id="ws-hang-timeout"))["status"]
            await wait_until(lambda: ws.stats.late_responses == 1, "the held 504, after the timeout", timeout=5.0)
            await fault(http, order_fault_sequence=["429"])
            with pytest.raises(RateLimitedError) as ei:
                await ws.place_order(**order)
            got["429"] = ei.value
            got["after_429"] = (await ws.place_order(**order))["status"]
            await fault(http, order_fault_sequence=["418"])
            with pytest.raises(RateLimitedError) as ei:
                await ws.place_order(**order)
            got["418"] = ei.value
            got["halted"] = limiter.halted
            placed = sim.orders.stats["placed"]
            with pytest.raises((RateLimitedError, VenueTransportError)):
                await ws.place_order(**order)  # refused here during the ban (or: no session yet)
            got["sent_during_ban"] = sim.orders.stats["placed"] - placed
            await wait_until(lambda: ws.connected and got["reconnects"] == 2, "the reconnect after the ban")
            got["after_ban"] = (await ws.place_order(**order))["status"]
            got["stats"] = ws.stats.as_dict()
        return got

    got = running(body)
    assert got["drop"].reason == "disconnected" and got["drop"].client_order_id == "ws-drop"
    assert got["drop_found"] == "NEW", "the dropped order exists; the reconnected session finds it"
    assert got["disconnects"] == ["connection lost", "connection lost"], "drop, then the 418 close"
    assert (got["hang_504"].status, got["hang_504"].code) == (504, -1007)
    assert [got[s].code for s in ("500", "503")] == [-1001, -1008]
    assert got["hang_timeout"].reason == "timeout" and got["others_meanwhile"] == "NEW"
    assert got["429"].status == 429 and got["429"].retry_after_s == pytest.approx(1.0, abs=0.05)
    assert got["after_429"] == "NEW"
    assert got["418"].status == 418 and got["halted"] is True and got["halts"] and got["sent_during_ban"] == 0
    assert got["after_ban"] == "NEW"
    assert got["stats"]["unknown_outcomes"] == 5 and got["stats"]["late_responses"] == 1


# ---------------------------------------------------------------------------------------------
# Limiter and clock against the venue
# ---------------------------------------------------------------------------------------------
def test_burst_of_300_orders_never_earns_a_429_the_limiter_waits():
    """ORDERS 50 per 10 s. Every 4th order is an IOC far from the touch (it expires and keeps its count), the
    others are MARKET orders (they fill and give their count back): 75 counted orders need two windows."""

    async def body(sim, http):
        from core.filters import parse_exchange_info

        far, _, _ = await prices(http)
        async with rest_client(sim) as rest:
            info = parse_exchange_info(await rest.exchange_info([SYMBOL]), [SYMBOL])
        limiter = RateLimiter(info, rate_limit_per_second=1000)
        async with ws_client(sim, limiter=limiter, order_timeout_s=DEADLINE) as ws:
            async def one(i: int):
                if i % 4 == 0:
                    p = dict(type="LIMIT", timeInForce="IOC", side="BUY", price=far)
                else:
                    p = dict(type="MARKET", side="BUY" if i % 2 else "SELL")
                try:
                    return (await ws.place_order(symbol=SYMBOL, quantity=QTY, newOrderRespType="RESULT", **p))["status"]
                except RingtraderError as exc:
                    return exc

            results = await asyncio.gather(*(one(i) for i in range(300)))
        return results, limiter.stats, sim.orders.stats.get("rate_limited", 0), dict(sim.wsapi.stats)

    results, stats, sim_429, ws_stats = running(body, orders_per_10s=50, timeout=5 * DEADLINE)
    errors = [r for r in results if not isinstance(r, str)]
    assert errors == [], errors[:3]
    assert sorted(set(results)) == ["EXPIRED", "FILLED"] and results.count("EXPIRED") == 75
    assert sim_429 == 0 and ws_stats.get("rate_limited_429", 0) == 0, "the venue never refused an order"
    assert stats.waits >= 1 and stats.orders == 300, "75 counted orders in a 50-per-10s window: it waited"


def test_clock_skew_gives_1021_then_the_resync_makes_the_retry_succeed():
    async def body(sim, http):
        far, _, _ = await prices(http)
        order = dict(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity=QTY, price=far)
        got = {}
        async with rest_client(sim, recv_window_ms=2000) as rest, ws_client(sim, recv_window_ms=2000) as ws:
            got["offset0"] = (rest.clock.offset_ms, ws.clock.offset_ms)
            for skew in (3000, -3000):
                await fault(http, clock_skew_ms=skew)
                with pytest.raises(VenueError) as ei:
                    await rest.place_order(**order)
                got[f"rest_{skew}"] = (ei.value.code, rest.clock.offset_ms, (await rest.place_order(**order))["status"])
            await fault(http, clock_skew_ms=3000)
            with pytest.raises(VenueError) as ei:
                await ws.place_order(**order)
            got["ws"] = (ei.value.code, ws.clock.offset_ms, (await ws.place_order(**order))["status"])
            got["resyncs"] = (rest.stats.timestamp_resyncs, ws.stats.timestamp_resyncs)
        return got

    got = running(body)
    assert all(abs(o) < 50 for o in got["offset0"])
    for key, skew in (("rest_3000", 3000), ("rest_-3000", -3000), ("ws", 3000)):
        code, offset, retried = got[key]
        assert code == -1021 and retried == "NEW", key
        assert offset == pytest.approx(skew, abs=50), "the -1021 resynced the clock before it was raised"
    assert got["resyncs"] == (2, 1)


# ---------------------------------------------------------------------------------------------
# WS session lifecycle
# ---------------------------------------------------------------------------------------------
def test_ws_reconnects_after_a_dropped_connection_and_resubscribes_the_user_stream():
    async def body(sim, http):
        far, _, _ = await prices(http)
        events: list[dict] = []
        seen = {"disconnects": [], "reconnects": 0}

        def on_reconnect():
            seen["reconnects"] += 1

        async with ws_client(sim, on_event=events.append, on_disconnect=seen["disconnects"].append,
                             on_reconnect=on_reconnect) as ws:  # fmt: skip
            r = await http.post("/sim/disconnect")
            assert r.json()["disconnected"] >= 1
            await wait_until(lambda: ws.connected and seen["reconnects"] == 1, "the reconnect")
            await ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity=QTY, price=far,
                                 newClientOrderId="after-drop")  # fmt: skip
            await ws.cancel_order(SYMBOL, orig_client_order_id="after-drop")
            await wait_until(lambda: events_of(events, "after-drop") == ["NEW", "CANCELED"], "events after it")
            return seen, ws.stats.as_dict(), dict(sim.wsapi.stats)

    seen, stats, sim_stats = running(body)
    assert seen["disconnects"] == ["connection lost"]
    assert stats["connects"] == 2 and stats["disconnects"] == 1
    assert sim_stats["subscriptions"] == 2, "the new session subscribed again"


def test_ws_server_shutdown_switches_sessions_before_closing_the_old_one():
    async def body(sim, http):
        far, _, _ = await prices(http)
        events: list[dict] = []
        seen = {"disconnects": [], "reconnects": 0}

        def on_reconnect():
            seen["reconnects"] += 1

        async with ws_client(sim, ed=True, on_event=events.append, on_disconnect=seen["disconnects"].append,
                             on_reconnect=on_reconnect) as ws:  # fmt: skip
            await fault(http, order_ack_delay_ms=400)
            # an order in flight on the old session when the notice comes: its answer still arrives there
            inflight = asyncio.ensure_future(ws.place_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC",
                                                            quantity=QTY, price=far, newClientOrderId="in-flight"))
            await wait_until(lambda: "NEW" in events_of(events, "in-flight"), "the order reached the venue")
            r = await http.post("/sim/shutdown_notice")
            assert r.json()["notified"] >= 1
            await wait_until(lambda: seen["reconnects"] == 1, "the new session")
            placed = await inflight
            await fault(http, order_ack_delay_ms=0)
            await wait_until(lambda: sim.wsapi.stats_dict()["open"] == 1, "the old session closed")
            await ws.cancel_order(SYMBOL, orig_client_order_id="in-flight")
            await wait_until(lambda: "CANCELED" in events_of(events, "in-flight"), "events on the new session")
            return placed, seen, ws.stats.as_dict(), dict(sim.wsapi.stats)

    placed, seen, stats, sim_stats = running(body)
    assert placed["status"] == "NEW", "the in-flight order was answered on the retiring session"
    assert seen["disconnects"] == [], "make before break: no gap, no disconnect reported"
    assert stats["server_shutdowns"] == 1 and stats["rotations"] == 1 and stats["disconnects"] == 0
    assert stats["connects"] == 2 and stats["unknown_outcomes"] == 0
    assert sim_stats["subscriptions"] == 2 and sim_stats["logons"] == 2


def test_ws_answers_the_servers_pings_so_the_session_stays_up():
    async def body(sim, http):
        async with ws_client(sim, ed=True, on_event=lambda e: None) as ws:
            await asyncio.sleep(1.5)
            return ws.connected, ws.stats.as_dict(), dict(sim.wsapi.stats), await ws.server_time()

    connected, stats, sim_stats, _ = running(body, ping_interval_s=0.1, pong_timeout_s=0.5)
    assert connected and stats["disconnects"] == 0
    assert sim_stats["pings_sent"] >= 5 and sim_stats.get("pong_timeouts", 0) == 0


def test_a_session_that_lived_a_few_seconds_reconnects_from_the_initial_delay():
    """As the feed's: a WS API session cut every ~10 s must not climb to the backoff cap each time."""
    import inspect

    from processes.venue_client import WsApiClient

    p = inspect.signature(WsApiClient.__init__).parameters
    healthy, base, cap = (p[k].default for k in ("healthy_after_s", "reconnect_base_s", "reconnect_cap_s"))
    assert healthy < 10.0 <= cap and healthy >= 2 * base

"""The simulator's WebSocket API (/ws-api/v3) over a real aiohttp client on 127.0.0.1.

Sessions (Ed25519 logon, the HMAC refusal, per-request signatures incl.
Binance's documented WS vector sent byte for byte), every method and its
error codes, the user data stream (subscriptions, every executionReport
field, fills, balance updates, several sessions), the connection rules and
each WS fault as wsapi.py documents it.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from processes.simulator import Simulator
from processes.simulator.auth import sign_payload, ws_payload
from simulator_helpers import DEADLINE, arun, make_cfg, specs, wait_until

# Binance's documented example key (reference §3): the HMAC account "main"
KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
WS_DOC_TS = 1645423376532
WS_DOC_PAYLOAD = (f"apiKey={KEY}&price=52000.00&quantity=0.01000000&recvWindow=100&side=SELL&symbol=BTCUSDT"
                  f"&timeInForce=GTC&timestamp={WS_DOC_TS}&type=LIMIT")
WS_DOC_SIG = "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"
WS_NON_ASCII_SIG = "b33892ae8e687c939f4468c6268ddd4c40ac1af18ad19a064864c47bae0752cd"
WS_ACK_SIG = "cc15477742bd704c29492d96c7ead9414dfd8e0ec4a00f947bb5bb454ddbd08a"
# the Ed25519 account "ed": the simulator holds only the public key
ED_KEY = "edWsApiKey0001"
ED_PRIV = Ed25519PrivateKey.generate()
ED_PEM = ED_PRIV.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
OTHER_PRIV = Ed25519PrivateKey.generate()
ACCOUNTS = [
    {"name": "main", "balances": {"USDT": "1000000", "BTC": "20", "ETH": "10"}},
    {"name": "ed", "api_key_env": "SIM_WS_ED_KEY", "api_secret_env": "SIM_WS_ED_PUB", "key_type": "ed25519",
     "balances": {"USDT": "50000", "BTC": "1"}},
]  # fmt: skip
D = Decimal
# every field the docs list for executionReport (conditional ones aside), and the JSON type of each
REPORT_STRINGS = set("s c S o f C x X r V".split())
REPORT_DECIMALS = set("q p P F l z L n Z Y Q".split())
REPORT_INTS = set("E g i T t I O W".split())
REPORT_BOOLS = set("w m M".split())
REPORT_FIELDS = {"e", "N"} | REPORT_STRINGS | REPORT_DECIMALS | REPORT_INTS | REPORT_BOOLS


@pytest.fixture(autouse=True)
def env_keys(monkeypatch):
    monkeypatch.setenv("BINANCE_SIM_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_SIM_API_SECRET", SECRET)
    monkeypatch.setenv("SIM_WS_ED_KEY", ED_KEY)
    monkeypatch.setenv("SIM_WS_ED_PUB", ED_PEM)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hmac_signed(params: dict | None = None, *, key: str = KEY, secret: str = SECRET, **extra) -> dict:
    """WS API params signed as a Binance client does: apiKey and timestamp in, sorted, HMAC over the raw text."""
    p = {**(params or {}), "apiKey": key, **extra}
    p.setdefault("timestamp", now_ms())
    p["signature"] = sign_payload(ws_payload(p), secret=secret)
    return p


def ed_signed(params: dict | None = None, *, key: str = ED_KEY, priv=ED_PRIV) -> dict:
    p = {**(params or {}), "apiKey": key}
    p.setdefault("timestamp", now_ms())
    p["signature"] = sign_payload(ws_payload(p), private_key=priv)
    return p


class Conn:
    """One WS API connection as a client holds it: a reader task files responses by id and keeps every frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.frames: list[dict] = []  # every text frame, in arrival order
        self.raw: list[str] = []
        self.waiters: dict = {}
        self.next_id = 0
        self.pongs: list[bytes] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    d = orjson.loads(msg.data)
                    self.raw.append(msg.data)
                    self.frames.append(d)
                    fut = self.waiters.pop(d.get("id", object()), None) if "status" in d else None
                    if fut is not None and not fut.done():
                        fut.set_result(d)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    self.pongs.append(msg.data)
        finally:
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError("the connection closed before the response"))

    @property
    def closed(self) -> bool:
        return self.reader.done()

    async def send(self, obj) -> None:
        await self.ws.send_str(obj if isinstance(obj, str) else orjson.dumps(obj).decode())

    async def call(self, method: str, params: dict | None = None, *, rid=None, timeout: float = DEADLINE) -> dict:
        if rid is None:
            self.next_id += 1
            rid = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.waiters[rid] = fut
        req = {"id": rid, "method": method}
        if params is not None:
            req["params"] = params
        await self.send(req)
        return await asyncio.wait_for(fut, timeout)

    async def ok(self, method: str, params: dict | None = None) -> dict | list:
        r = await self.call(method, params)
        assert r["status"] == 200, r
        return r["result"]

    def events(self, kind: str | None = None) -> list[dict]:
        return [f["event"] for f in self.frames if "event" in f and (kind is None or f["event"]["e"] == kind)]

    async def wait_events(self, pred, what: str, timeout: float = DEADLINE) -> list[dict]:
        await wait_until(lambda: pred(self.events()), what, timeout)
        return self.events()

    async def wait_closed(self, timeout: float = DEADLINE) -> None:
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)


def error_of(r: dict) -> tuple[int, int]:
    return r["status"], r["error"]["code"]


def running(body_fn, timeout: float = 3 * DEADLINE, **overrides):
    """Run ``body_fn(sim, http, connect)`` against a fresh simulator (port 0, accounts main + ed)."""
    overrides.setdefault("accounts", ACCOUNTS)

    async def main():
        cfg = make_cfg(**overrides)
        async with Simulator(cfg, specs(cfg)) as sim:
            async with aiohttp.ClientSession(base_url=sim.base_url) as http:
                conns: list[Conn] = []

                async def connect(query: str = "", **kw) -> Conn:
                    ws = await http.ws_connect(f"/ws-api/v3{query}", **kw)
                    c = Conn(ws)
                    conns.append(c)
                    return c

                try:
                    return await body_fn(sim, http, connect)
                finally:
                    for c in conns:
                        await c.ws.close()
                        c.reader.cancel()

    return arun(main(), timeout)


async def post(http: aiohttp.ClientSession, path: str, body=None) -> dict:
    async with http.post(path, data=orjson.dumps(body or {})) as r:
        assert r.status == 200, await r.text()
        return orjson.loads(await r.read())


async def best(http: aiohttp.ClientSession, symbol: str = "BTCUSDT") -> tuple[Decimal, Decimal, dict]:
    async with http.get("/api/v3/depth", params={"symbol": symbol, "limit": 5}) as r:
        book = orjson.loads(await r.read())
    return D(book["bids"][0][0]), D(book["asks"][0][0]), book


def check_report_types(r: dict) -> None:
    assert REPORT_FIELDS <= set(r), REPORT_FIELDS - set(r)
    assert r["e"] == "executionReport"
    for k in REPORT_STRINGS:
        assert isinstance(r[k], str), (k, r[k])
    for k in REPORT_DECIMALS:
        assert isinstance(r[k], str) and D(r[k]) >= 0 and len(r[k].split(".")[1]) == 8, (k, r[k])
    for k in REPORT_INTS:
        assert isinstance(r[k], int) and not isinstance(r[k], bool), (k, r[k])
    for k in REPORT_BOOLS:
        assert isinstance(r[k], bool), (k, r[k])
    assert r["N"] is None or isinstance(r["N"], str)


# ---------------------------------------------------------------------------------------------
# signing and sessions
# ---------------------------------------------------------------------------------------------
def test_documented_ws_signature_vectors_and_the_documented_request_is_accepted_byte_for_byte():
    doc = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01000000",
           "price": "52000.00", "recvWindow": 100, "timestamp": WS_DOC_TS, "apiKey": KEY}
    assert ws_payload(doc) == WS_DOC_PAYLOAD.encode()
    assert sign_payload(ws_payload(doc), secret=SECRET) == WS_DOC_SIG
    non_ascii = {**doc, "symbol": "１２３４５６", "side": "BUY", "quantity": "1.00000000", "price": "0.10000000",
                 "recvWindow": 5000}
    assert sign_payload(ws_payload(non_ascii), secret=SECRET) == WS_NON_ASCII_SIG, "raw UTF-8, not percent-encoded"
    assert sign_payload(ws_payload({**doc, "newOrderRespType": "ACK"}), secret=SECRET) == WS_ACK_SIG

    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        c = await connect()

        async def at_doc_time():  # server clock 0.9 s before the example (recvWindow 100: 1 s of slack)
            await post(http, "/sim/fault", {"clock_skew_ms": WS_DOC_TS - 900 - now_ms()})

        await at_doc_time()
        raw = ('{"id":"4885f793-e5ad-4c3b-8a6c-6e6a1d2b4a8f","method":"order.place","params":{"symbol":"BTCUSDT",'
               '"side":"SELL","type":"LIMIT","timeInForce":"GTC","quantity":"0.01000000","price":"52000.00",'
               f'"recvWindow":100,"timestamp":{WS_DOC_TS},"apiKey":"{KEY}","signature":"{WS_DOC_SIG}"}}}}')
        fut = asyncio.get_running_loop().create_future()
        c.waiters["4885f793-e5ad-4c3b-8a6c-6e6a1d2b4a8f"] = fut
        await c.send(raw)
        placed = await asyncio.wait_for(fut, DEADLINE)
        await at_doc_time()
        tampered = await c.call("order.place", {**orjson.loads(raw)["params"], "quantity": "0.02000000"})
        await at_doc_time()
        upper = await c.call("order.test", {**orjson.loads(raw)["params"], "signature": WS_DOC_SIG.upper()})
        return placed, tampered, upper

    placed, tampered, upper = running(body)
    assert placed["status"] == 200, placed
    assert placed["result"]["symbol"] == "BTCUSDT" and placed["result"]["origQty"] == "0.01000000"
    assert placed["result"]["status"] == "FILLED", "a SELL at 52000 takes the ~60000 bids"
    assert error_of(tampered) == (400, -1022)
    assert tampered["error"]["msg"] == "Signature for this request is not valid."
    assert upper["status"] == 200 and upper["result"] == {}, "HMAC hex is accepted in any case"


def test_ed25519_logon_lets_requests_omit_key_and_signature_and_hmac_logon_is_refused():
    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        c = await connect()
        before = await c.ok("session.status")
        hmac_logon = await c.call("session.logon", hmac_signed())
        wrong_key = await c.call("session.logon", ed_signed(priv=OTHER_PRIV))
        unsigned_before = await c.call("account.status", {"timestamp": now_ms()})
        t0 = now_ms()
        logon = await c.ok("session.logon", ed_signed())
        acct = await c.ok("account.status", {"timestamp": now_ms()})
        no_ts = await c.call("account.status", {})
        old_ts = await c.call("account.status", {"timestamp": now_ms() - 10_000})
        bid, _, _ = await best(http)
        placed = await c.ok("order.place", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                            "quantity": "0.001", "price": str(bid - 50), "newClientOrderId": "ed-1",
                                            "timestamp": now_ms()})
        # an explicit signature overrides the session key: this request acts for "main"
        main_acct = await c.ok("account.status", hmac_signed())
        status = await c.ok("session.status")
        logout = await c.ok("session.logout")
        after = await c.call("account.status", {"timestamp": now_ms()})
        return (before, hmac_logon, wrong_key, unsigned_before, t0, logon, acct, no_ts, old_ts, placed, main_acct,
                status, logout, after)

    (before, hmac_logon, wrong_key, unsigned_before, t0, logon, acct, no_ts, old_ts, placed, main_acct, status, logout,
     after) = running(body)  # fmt: skip
    assert before["apiKey"] is None and before["authorizedSince"] is None and before["userDataStream"] is False
    assert set(before) == {"apiKey", "authorizedSince", "connectedSince", "returnRateLimits", "serverTime",
                           "userDataStream"}  # fmt: skip
    assert error_of(hmac_logon) == (401, -2015), "session.logon takes Ed25519 keys only"
    assert hmac_logon["error"]["msg"] == "Invalid API-key, IP, or permissions for action."
    assert error_of(wrong_key) == (400, -1022)
    assert error_of(unsigned_before) == (400, -1102) and "'apiKey'" in unsigned_before["error"]["msg"]
    assert logon["apiKey"] == ED_KEY and logon["authorizedSince"] >= t0 and logon["returnRateLimits"] is True
    assert logon["connectedSince"] <= logon["authorizedSince"] <= logon["serverTime"]
    assert {b["asset"]: b["free"] for b in acct["balances"]} == {"BTC": "1.00000000", "USDT": "50000.00000000"}
    assert error_of(no_ts) == (400, -1102) and "'timestamp'" in no_ts["error"]["msg"], "logged on: timestamp still due"
    assert error_of(old_ts) == (400, -1021)
    assert placed["clientOrderId"] == "ed-1" and placed["status"] == "NEW"
    assert {b["asset"] for b in main_acct["balances"]} == {"USDT", "BTC", "ETH"}
    assert status["apiKey"] == ED_KEY
    assert logout["apiKey"] is None and logout["authorizedSince"] is None
    assert error_of(after) == (400, -1102), "logged out: a request must be signed again"


def test_malformed_frames_get_binance_errors_and_the_connection_lives_on():
    async def body(sim, http, connect):
        c = await connect()
        for frame in ("not json", "[1, 2]", '{"method": "ping"}', '{"id": true, "method": "ping"}',
                      '{"id": "has space", "method": "ping"}', '{"id": "' + "x" * 37 + '", "method": "ping"}',
                      '{"id": 9223372036854775808, "method": "ping"}'):  # fmt: skip
            await c.send(frame)
        await c.ws.send_bytes(b'{"id": 1, "method": "ping"}')
        no_method = await c.call("", rid="nm")
        unknown = await c.call("order.teleport", rid="um")
        bad_params = await c.call("ping", rid="bp", params=[1])  # type: ignore[arg-type]
        nested = await c.call("time", {"x": {"y": 1}})
        extra = await c.call("ping", {"symbol": "BTCUSDT"})
        bad_rrl = await c.call("ping", {"returnRateLimits": "maybe"})
        ping = await c.call("ping", rid="e2a85d9f-07a5-4f94-8d5f-789dc3deb097")
        await c.send({"id": None, "method": "time"})
        await wait_until(lambda: sum(1 for f in c.frames if f.get("id") is None and f["status"] == 200) == 1, "null id")
        v3 = await c.call("v3/time")
        return c.frames, no_method, unknown, bad_params, nested, extra, bad_rrl, ping, v3, sim.stats()

    frames, no_method, unknown, bad_params, nested, extra, bad_rrl, ping, v3, stats = running(body)
    envelope = frames[:8]
    assert [error_of(f) for f in envelope] == [(400, -1135)] * 2 + [(400, -1102)] * 5 + [(400, -1135)]
    assert all(f["id"] is None and "rateLimits" not in f for f in envelope)
    assert envelope[0]["error"]["msg"] == "Invalid JSON Request"
    assert envelope[2]["error"]["msg"] == "Mandatory parameter 'id' was not sent, was empty/null, or malformed."
    assert error_of(no_method) == (400, -1102) and no_method["id"] == "nm"
    assert error_of(unknown) == (400, -1020) and unknown["error"]["msg"] == "This operation is not supported."
    assert error_of(bad_params) == (400, -1135)
    assert error_of(nested) == (400, -1100)
    assert error_of(extra) == (400, -1104)
    assert error_of(bad_rrl) == (400, -1100)
    assert ping["status"] == 200 and ping["result"] == {} and ping["id"] == "e2a85d9f-07a5-4f94-8d5f-789dc3deb097"
    assert ping["rateLimits"] == [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                   "limit": 6000, "count": ping["rateLimits"][0]["count"]}]  # fmt: skip
    null = next(f for f in frames if f.get("id") is None and f["status"] == 200)
    assert set(null["result"]) == {"serverTime"}
    assert v3["status"] == 200 and abs(v3["result"]["serverTime"] - now_ms()) < 60_000, "a v3/ prefix is accepted"
    assert stats["ws_api"].get("handler_errors", 0) == 0 and stats["ws_api"]["open"] == 1


def test_rate_limits_are_reported_counted_per_ip_and_can_be_hidden():
    async def body(sim, http, connect):
        bid, _, _ = await best(http)  # REST depth: weight 5, before anything is counted here
        c = await connect()
        w0 = (await c.call("ping"))["rateLimits"][0]["count"]
        t = await c.call("time")
        hidden = await c.call("time", {"returnRateLimits": False})
        weight20 = await c.call("account.status", hmac_signed())
        async with http.get("/api/v3/ping") as r:  # REST shares the IP's weight
            rest_used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        quiet = await connect("?returnRateLimits=false")
        q1 = await quiet.call("ping")
        q2 = await quiet.call("ping", {"returnRateLimits": True})
        bad = await c.call("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                       "timeInForce": "GTC", "quantity": "0.001"}))  # no price
        good = await c.call("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                        "timeInForce": "GTC", "quantity": "0.001",
                                                        "price": str(bid - 100)}))  # fmt: skip
        cancel = await c.call("order.cancel", hmac_signed({"symbol": "BTCUSDT", "orderId": good["result"]["orderId"]}))
        return w0, t, hidden, weight20, rest_used, q1, q2, bad, good, cancel

    w0, t, hidden, weight20, rest_used, q1, q2, bad, good, cancel = running(body)
    count = lambda r: next(x["count"] for x in r["rateLimits"] if x["rateLimitType"] == "REQUEST_WEIGHT")  # noqa: E731
    assert w0 >= 5 + 2 + 1, "depth 5, the connection 2, ping 1"
    assert count(t) == w0 + 1
    assert "rateLimits" not in hidden and hidden["status"] == 200
    assert count(weight20) == w0 + 2 + 20, "hidden or not, the request was charged"
    assert rest_used == count(weight20) + 1
    assert "rateLimits" not in q1 and count(q2) == rest_used + 2 + 1 + 1, "the second connection cost 2"
    assert error_of(bad) == (400, -1102)
    assert count(bad) == count(q2) + 1, "a failed order costs 1"
    orders = [x for x in good["rateLimits"] if x["rateLimitType"] == "ORDERS"]
    assert [(x["interval"], x["intervalNum"], x["limit"]) for x in orders] == [("SECOND", 10, 100), ("DAY", 1, 200000)]
    assert all(x["count"] >= 1 for x in orders) and count(good) == count(bad), "a successful order costs 0"
    assert [x["rateLimitType"] for x in cancel["rateLimits"]] == ["REQUEST_WEIGHT"] and count(cancel) == count(good)


def test_weight_limit_429_then_ban_418_closes_the_connection():
    async def body(sim, http, connect):
        if time.time() % 60 > 55:  # the weight window is the wall-clock minute: do not straddle its start
            await asyncio.sleep(61 - time.time() % 60)
        c = await connect()  # 2
        # weight 3..6: the 5th is over the limit of 4 (429); ban_after_429s=1: the next is a 418, then it closes
        answers = [await c.call("ping") for _ in range(4)]
        await c.wait_closed()
        return answers, c.ws.close_code

    answers, close_code = running(body, weight_limit_per_minute=4, ban_after_429s=1)
    assert [a["status"] for a in answers] == [200, 200, 429, 418]
    limited = answers[2]["error"]
    assert limited["code"] == -1003 and limited["msg"].startswith("Too much request weight used")
    assert set(limited["data"]) == {"serverTime", "retryAfter"} and limited["data"]["retryAfter"] > limited["data"][
        "serverTime"]
    banned = answers[3]["error"]
    assert banned["code"] == -1003 and banned["msg"].startswith("Way too much request weight used; IP banned until")
    assert close_code == 1008


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
def test_every_order_method_with_per_request_signatures_and_their_error_codes():
    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        c = await connect()
        bid, ask, _ = await best(http)
        lim = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.002"}
        out = {
            "test": await c.call("order.test", hmac_signed({**lim, "price": str(bid - 10)})),
            "test_cc": await c.call("order.test", hmac_signed({**lim, "price": str(bid - 10),
                                                              "computeCommissionRates": True})),
            "p1": await c.call("order.place", hmac_signed({**lim, "price": str(bid - 10), "newClientOrderId": "w1"})),
            "p2": await c.call("order.place", hmac_signed({**lim, "price": str(bid - 20), "newClientOrderId": "w2",
                                                          "newOrderRespType": "ACK"})),
            "p3": await c.call("order.place", hmac_signed({**lim, "price": str(bid - 30), "newClientOrderId": "w3"})),
            "dup": await c.call("order.place", hmac_signed({**lim, "price": str(bid - 30), "newClientOrderId": "w3"})),
            "mkt": await c.call("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET",
                                                           "quantity": "0.001"})),
        }
        oid1 = out["p1"]["result"]["orderId"]
        out.update({
            "st_id": await c.call("order.status", hmac_signed({"symbol": "BTCUSDT", "orderId": oid1})),
            "st_cid": await c.call("order.status", hmac_signed({"symbol": "BTCUSDT", "origClientOrderId": "w2"})),
            "st_none": await c.call("order.status", hmac_signed({"symbol": "BTCUSDT", "orderId": 999999})),
            "st_mismatch": await c.call("order.status", hmac_signed({"symbol": "BTCUSDT", "orderId": oid1,
                                                                    "origClientOrderId": "w2"})),
            "st_neither": await c.call("order.status", hmac_signed({"symbol": "BTCUSDT"})),
            "open": await c.call("openOrders.status", hmac_signed({"symbol": "BTCUSDT"})),
            "open_all": await c.call("openOrders.status", hmac_signed()),
            "all": await c.call("allOrders", hmac_signed({"symbol": "BTCUSDT"})),
            "trades": await c.call("myTrades", hmac_signed({"symbol": "BTCUSDT"})),
            "acct": await c.call("account.status", hmac_signed({"omitZeroBalances": True})),
            "rl": await c.call("account.rateLimits.orders", hmac_signed()),
            "cancel": await c.call("order.cancel", hmac_signed({"symbol": "BTCUSDT", "origClientOrderId": "w1",
                                                               "newClientOrderId": "w1-cancel"})),
            "cancel_again": await c.call("order.cancel", hmac_signed({"symbol": "BTCUSDT", "orderId": oid1})),
            "cancel_all": await c.call("openOrders.cancelAll", hmac_signed({"symbol": "BTCUSDT"})),
            "cancel_all_none": await c.call("openOrders.cancelAll", hmac_signed({"symbol": "BTCUSDT"})),
            "bad_symbol": await c.call("order.place", hmac_signed({**lim, "symbol": "NOPEUSDT", "price": "1"})),
            "tick": await c.call("order.place", hmac_signed({**lim, "price": str(bid - D("0.001"))})),
            "broke": await c.call("order.place", hmac_signed({**lim, "quantity": "100", "price": str(bid)})),
            "maker_takes": await c.call("order.place", hmac_signed({
                "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT_MAKER", "quantity": "0.002",
                "price": str(ask + 1)})),
            "old": await c.call("order.place", hmac_signed({**lim, "price": str(bid)}, timestamp=now_ms() - 60_000)),
            "ahead": await c.call("order.place", hmac_signed({**lim, "price": str(bid)}, timestamp=now_ms() + 5_000)),
            "bad_sig": await c.call("order.place", {**hmac_signed({**lim, "price": str(bid)}), "quantity": "0.003"}),
            "bad_key": await c.call("order.place", hmac_signed({**lim, "price": str(bid)}, key="no-such key")),
            "unknown_key": await c.call("order.place", hmac_signed({**lim, "price": str(bid)}, key="A" * 64)),
            "no_sig": await c.call("order.place", {**lim, "price": str(bid), "apiKey": KEY, "timestamp": now_ms()}),
        })
        return out

    r = running(body)
    ok = {k: v["result"] for k, v in r.items() if v["status"] == 200}
    assert ok["test"] == {}
    assert ok["test_cc"]["standardCommissionForOrder"] == {"maker": "0.00100000", "taker": "0.00100000"}
    assert ok["p1"]["status"] == "NEW" and ok["p1"]["clientOrderId"] == "w1" and ok["p1"]["fills"] == []
    assert set(ok["p2"]) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}, "ACK"
    assert error_of(r["dup"]) == (400, -2010) and r["dup"]["error"]["msg"] == "Duplicate order sent."
    assert ok["mkt"]["status"] == "FILLED" and len(ok["mkt"]["fills"]) >= 1
    assert ok["st_id"]["clientOrderId"] == "w1" and ok["st_cid"]["orderId"] == ok["p2"]["orderId"]
    assert error_of(r["st_none"]) == (400, -2013) and error_of(r["st_mismatch"]) == (400, -2039)
    assert error_of(r["st_neither"]) == (400, -1102)
    open_ids = [o["clientOrderId"] for o in ok["open"]]
    assert open_ids == ["w1", "w2", "w3"] == [o["clientOrderId"] for o in ok["open_all"]]
    assert len(ok["all"]) == 4 and len(ok["trades"]) == len(ok["mkt"]["fills"])
    assert all(D(b["free"]) + D(b["locked"]) > 0 for b in ok["acct"]["balances"])
    assert [x["rateLimitType"] for x in ok["rl"]] == ["ORDERS", "ORDERS"]
    assert ok["cancel"]["status"] == "CANCELED" and ok["cancel"]["origClientOrderId"] == "w1"
    assert ok["cancel"]["clientOrderId"] == "w1-cancel"
    assert error_of(r["cancel_again"]) == (400, -2011)
    assert sorted(o["origClientOrderId"] for o in ok["cancel_all"]) == ["w2", "w3"]
    assert error_of(r["cancel_all_none"]) == (400, -2011)
    assert error_of(r["bad_symbol"]) == (400, -1121)
    assert r["tick"]["error"] == {"code": -1013, "msg": "Filter failure: PRICE_FILTER"}
    assert r["broke"]["error"] == {"code": -2010, "msg": "Account has insufficient balance for requested action."}
    assert r["maker_takes"]["error"] == {"code": -2010, "msg": "Order would immediately match and take."}
    assert error_of(r["old"]) == (400, -1021) and error_of(r["ahead"]) == (400, -1021)
    assert error_of(r["bad_sig"]) == (400, -1022)
    assert error_of(r["bad_key"]) == (401, -2014) and error_of(r["unknown_key"]) == (401, -2015)
    assert error_of(r["no_sig"]) == (400, -1102) and "'signature'" in r["no_sig"]["error"]["msg"]


# ---------------------------------------------------------------------------------------------
# the user data stream
# ---------------------------------------------------------------------------------------------
def test_subscriptions_ids_limits_termination_and_session_status():
    async def body(sim, http, connect):
        c = await connect()
        out = {"no_logon": await c.call("userDataStream.subscribe")}
        out["sig"] = await c.call("userDataStream.subscribe.signature", hmac_signed())
        out["sig_again"] = await c.call("userDataStream.subscribe.signature", hmac_signed())
        out["logon"] = await c.call("session.logon", ed_signed())
        out["logon_sub"] = await c.call("userDataStream.subscribe")
        out["logon_again"] = await c.call("userDataStream.subscribe")
        out["subs"] = await c.call("session.subscriptions")
        out["status"] = await c.call("session.status")
        out["logout"] = await c.call("session.logout")  # ends the logon subscription (1) only
        out["subs_after_logout"] = await c.call("session.subscriptions")
        n_frames = len(c.frames)
        await post(http, "/sim/balance", {"account": "main", "asset": "USDT", "delta": "1"})
        await c.wait_events(lambda ev: any(e["e"] == "balanceUpdate" for e in ev), "main's event")
        out["unsub_unknown"] = await c.call("userDataStream.unsubscribe", {"subscriptionId": 77})
        out["unsub"] = await c.call("userDataStream.unsubscribe", {"subscriptionId": 0})
        out["status_after"] = await c.call("session.status")
        await post(http, "/sim/balance", {"account": "main", "asset": "USDT", "delta": "1"})
        out["ping"] = await c.call("ping")
        c2 = await connect()  # unsubscribe without an id closes all
        await c2.ok("userDataStream.subscribe.signature", hmac_signed())
        await c2.ok("userDataStream.subscribe.signature", ed_signed())
        out["unsub_all"] = await c2.call("userDataStream.unsubscribe")
        return out, c.frames, n_frames, c2.frames

    out, frames, n_frames, frames2 = running(body)
    assert error_of(out["no_logon"]) == (400, -1002)
    assert out["sig"]["result"] == {"subscriptionId": 0}
    assert out["sig"]["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
    assert error_of(out["sig_again"]) == (400, -2035), "one subscription per account per connection"
    assert out["sig_again"]["error"]["msg"] == "User Data Stream subscription already active."
    assert out["logon"]["result"]["userDataStream"] is True
    assert out["logon_sub"]["result"] == {"subscriptionId": 1}
    assert error_of(out["logon_again"]) == (400, -2035)
    assert out["subs"]["result"] == [{"subscriptionId": 0}, {"subscriptionId": 1}]
    assert out["status"]["result"]["userDataStream"] is True
    assert out["subs_after_logout"]["result"] == [{"subscriptionId": 0}], "logout keeps signature subscriptions"
    logout_at = next(i for i, f in enumerate(frames) if f.get("id") == out["logout"]["id"])
    assert frames[logout_at - 1] == {"subscriptionId": 1, "event": {"e": "eventStreamTerminated",
                                                                    "E": frames[logout_at - 1]["event"]["E"]}}
    assert out["unsub_unknown"]["status"] == 200 and out["unsub_unknown"]["result"] == {}
    unsub_at = next(i for i, f in enumerate(frames) if f.get("id") == out["unsub"]["id"])
    assert frames[unsub_at - 1]["subscriptionId"] == 0 and frames[unsub_at - 1]["event"]["e"] == "eventStreamTerminated"
    assert out["unsub"]["result"] == {} and out["status_after"]["result"]["userDataStream"] is False
    after = frames[unsub_at + 1:]
    assert not any("event" in f for f in after), "nothing after the subscription ended"
    kinds = [f["event"]["e"] for f in frames[n_frames:] if "event" in f]
    assert kinds[:2] == ["balanceUpdate", "outboundAccountPosition"]
    terminated = [f["subscriptionId"] for f in frames2 if f.get("event", {}).get("e") == "eventStreamTerminated"]
    assert terminated == [0, 1] and out["unsub_all"]["result"] == {}


def test_resting_limit_partially_filled_by_the_market_then_canceled_reports_every_field():
    """The generated market trades through a big resting order (both sides: whichever way it moves); the
    client cancels it on the first partial fill. A step can fill it whole first: then it tries again."""

    async def body(sim, http, connect):
        c = await connect()
        assert (await c.ok("userDataStream.subscribe.signature", hmac_signed())) == {"subscriptionId": 0}
        for attempt in range(6):
            bid, ask, _ = await best(http)
            ids = []
            for side, px in (("BUY", bid), ("SELL", ask)):
                r = await c.ok("order.place", hmac_signed({"symbol": "BTCUSDT", "side": side, "type": "LIMIT",
                                                           "timeInForce": "GTC", "quantity": "0.9", "price": str(px),
                                                           "newClientOrderId": f"big-{attempt}-{side}"}))  # fmt: skip
                ids.append(r["orderId"])

            def partial(ev):
                return next((e for e in ev if e["e"] == "executionReport" and e["i"] in ids
                             and e["X"] == "PARTIALLY_FILLED"), None)  # fmt: skip

            await c.wait_events(lambda ev: partial(ev) is not None, "a partial fill", timeout=2 * DEADLINE)
            oid = partial(c.events())["i"]
            cancel = await c.call("order.cancel", hmac_signed({"symbol": "BTCUSDT", "orderId": oid,
                                                              "newClientOrderId": f"cxl-{attempt}"}))
            await c.call("openOrders.cancelAll", hmac_signed({"symbol": "BTCUSDT"}))
            if cancel["status"] == 200:
                acct = await c.ok("account.status", hmac_signed())
                await c.call("ping")
                return oid, cancel["result"], c.frames, acct
        raise AssertionError("every partially filled order filled whole before the cancel arrived")

    oid, cancel, frames, acct = running(body, rate=4000)
    reports = [f["event"] for f in frames if "event" in f and f["event"]["e"] == "executionReport"
               and f["event"]["i"] == oid]  # fmt: skip
    assert all(f["subscriptionId"] == 0 for f in frames if "event" in f)
    for r in reports:
        check_report_types(r)
    kinds = [(r["x"], r["X"]) for r in reports]
    assert kinds[0] == ("NEW", "NEW") and kinds[-1] == ("CANCELED", "CANCELED")
    trades = reports[1:-1]
    assert trades and all(k == ("TRADE", "PARTIALLY_FILLED") for k in kinds[1:-1])
    new, canceled = reports[0], reports[-1]
    assert new["w"] is True and new["t"] == -1 and new["N"] is None and new["l"] == "0.00000000"
    assert new["q"] == "0.90000000" and new["C"] == "" and new["r"] == "NONE" and new["g"] == -1
    filled = sum(D(t["l"]) for t in trades)
    for t in trades:
        assert t["m"] is True and t["L"] == new["p"] and t["t"] > 0 and t["N"] in ("BTC", "USDT")
        assert D(t["Y"]) == D(t["L"]) * D(t["l"]) and D(t["n"]) > 0
    assert D(trades[-1]["z"]) == filled and D(trades[-1]["Z"]) == sum(D(t["Y"]) for t in trades)
    assert [t["z"] for t in trades] == sorted(t["z"] for t in trades), "cumulative"
    assert len({r["I"] for r in reports}) == len(reports), "execution ids unique"
    assert canceled["c"].startswith("cxl-") and canceled["C"] == new["c"] and canceled["z"] == trades[-1]["z"]
    assert canceled["w"] is False and canceled["i"] == oid
    assert cancel["status"] == "CANCELED" and cancel["executedQty"] == canceled["z"]
    # the response came after its events; every fill was followed by the account's position
    cancel_at = next(i for i, f in enumerate(frames) if f.get("result") is cancel)
    assert any(f.get("event", {}).get("X") == "CANCELED" and f["event"]["i"] == oid for f in frames[:cancel_at])
    positions = [f["event"] for f in frames if f.get("event", {}).get("e") == "outboundAccountPosition"]
    assert positions and all(set(p["B"][0]) == {"a", "f", "l"} for p in positions)
    last = {b["a"]: b for b in positions[-1]["B"]}
    final = {b["asset"]: b for b in acct["balances"]}
    assert all(last[a]["f"] == final[a]["free"] and last[a]["l"] == final[a]["locked"] for a in last)


def test_ioc_and_fok_expire_with_reports_and_refused_orders_send_no_event():
    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        c = await connect()
        await c.ok("userDataStream.subscribe.signature", hmac_signed())
        _, ask, book = await best(http)
        top_qty = D(book["asks"][0][1])
        ioc = await c.ok("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                     "timeInForce": "IOC", "quantity": str(top_qty + D("0.5")),
                                                     "price": str(ask)}))  # fmt: skip
        _, ask2, book2 = await best(http)
        depth = sum(D(q) for _, q in book2["asks"])
        fok = await c.ok("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                     "timeInForce": "FOK", "quantity": str(depth + D("0.01")),
                                                     "price": book2["asks"][-1][0]}))  # fmt: skip
        n = len(c.frames)
        maker = await c.call("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT_MAKER",
                                                        "quantity": "0.001", "price": str(ask2)}))  # fmt: skip
        broke = await c.call("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT",
                                                        "timeInForce": "GTC", "quantity": "50", "price": str(ask2)}))
        await c.call("ping")
        return ioc, fok, c.frames, n, maker, broke, await c.ok("account.status", hmac_signed())

    ioc, fok, frames, n, maker, broke, acct = running(body)
    by_order = lambda oid: [f["event"] for f in frames if f.get("event", {}).get("i") == oid]  # noqa: E731
    ioc_reports = by_order(ioc["orderId"])
    for r in ioc_reports:
        check_report_types(r)
    assert [(r["x"], r["X"]) for r in ioc_reports] == [("NEW", "NEW"), ("TRADE", "PARTIALLY_FILLED"),
                                                       ("EXPIRED", "EXPIRED")]  # fmt: skip
    assert ioc_reports[1]["m"] is False and ioc_reports[1]["N"] == "BTC" and ioc_reports[1]["f"] == "IOC"
    assert ioc_reports[2]["eR"] == "UNFILLED_IOC_QUANTITY_EXPIRED" and ioc_reports[2]["w"] is False
    assert ioc["status"] == "EXPIRED" and ioc["executedQty"] == ioc_reports[2]["z"]
    fok_reports = by_order(fok["orderId"])
    assert [(r["x"], r["X"], r["z"]) for r in fok_reports] == [("NEW", "NEW", "0.00000000"),
                                                               ("EXPIRED", "EXPIRED", "0.00000000")]  # fmt: skip
    assert fok_reports[1]["eR"] == "UNFILLED_FOK_ORDER_EXPIRED"
    # the IOC's fill moved balances: an outboundAccountPosition follows its reports
    ioc_end = next(i for i, f in enumerate(frames) if f.get("event") is ioc_reports[-1])
    pos = frames[ioc_end + 1]["event"]
    assert pos["e"] == "outboundAccountPosition" and {b["a"] for b in pos["B"]} == {"BTC", "USDT"}
    # refused by the engine: an error answer, no executionReport (Binance sends x=REJECTED only for cancelReplace)
    assert maker["error"] == {"code": -2010, "msg": "Order would immediately match and take."}
    assert broke["error"]["code"] == -2010
    assert not any("event" in f for f in frames[n:]), "no event for refused orders"
    assert {b["asset"] for b in acct["balances"]} >= {"BTC", "USDT"}


def test_two_sessions_on_one_account_both_get_every_event_and_other_accounts_none():
    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        a, b, other = await connect(), await connect(), await connect()
        await a.ok("userDataStream.subscribe.signature", hmac_signed())
        await b.ok("session.logon", ed_signed())
        await b.ok("userDataStream.subscribe")  # "ed": subscription 0
        await b.ok("userDataStream.subscribe.signature", hmac_signed())  # "main": subscription 1
        await other.ok("session.logon", ed_signed())
        await other.ok("userDataStream.subscribe")
        await a.ok("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
                                               "quantity": "0.002"}))  # fmt: skip
        await post(http, "/sim/balance", {"account": "main", "asset": "BTC", "delta": "-0.5"})
        await wait_until(lambda: len(b.events("balanceUpdate")) == 1 and len(a.events("balanceUpdate")) == 1,
                         "balance updates on both sessions")  # fmt: skip
        await other.call("ping")
        return a.frames, b.frames, other.frames

    fa, fb, fo = running(body)
    ev_a = [f for f in fa if "event" in f]
    ev_b = [f for f in fb if "event" in f]
    assert [f["event"] for f in ev_a] == [f["event"] for f in ev_b], "same events, same order"
    assert {f["subscriptionId"] for f in ev_a} == {0} and {f["subscriptionId"] for f in ev_b} == {1}
    kinds = [f["event"]["e"] for f in ev_a]
    assert kinds[0] == "executionReport" and kinds[-2:] == ["balanceUpdate", "outboundAccountPosition"]
    bu = ev_a[-2]["event"]
    assert bu["a"] == "BTC" and bu["d"] == "-0.50000000" and isinstance(bu["T"], int)
    assert not any("event" in f for f in fo), "the ed account saw nothing of main's"


# ---------------------------------------------------------------------------------------------
# connection rules
# ---------------------------------------------------------------------------------------------
def test_pings_pongs_timeout_shutdown_notice_and_lifetime():
    async def body(sim, http, connect):
        alive = await connect()  # aiohttp answers pings (autoping): it stays
        deaf = await connect(autoping=False)  # answers nothing but unsolicited pongs: dropped
        await deaf.ws.ping(b"hello")

        async def unsolicited():
            while not deaf.closed:
                await deaf.ws.pong(b"")
                await asyncio.sleep(0.05)

        pong_task = asyncio.get_running_loop().create_task(unsolicited())
        t0 = time.monotonic()
        await deaf.wait_closed()
        dropped_after = time.monotonic() - t0
        pong_task.cancel()
        await wait_until(lambda: sim.stats()["ws_api"].get("pings_sent", 0) >= 4, "pings")
        notice = await post(http, "/sim/shutdown_notice")
        await wait_until(lambda: alive.events("serverShutdown"), "serverShutdown")
        ping = await alive.call("ping")
        return deaf.pongs, dropped_after, notice, alive.frames, ping, sim.stats()["ws_api"]

    pongs, dropped_after, notice, frames, ping, stats = running(body, ping_interval_s=0.2, pong_timeout_s=0.6)
    assert pongs == [b"hello"], "a client ping is answered with its payload"
    assert 0.6 <= dropped_after < 10, "unsolicited pongs do not keep a connection alive"
    assert stats["pong_timeouts"] == 1 and ping["status"] == 200
    assert notice["notified"] >= 1
    shutdown = next(f for f in frames if "event" in f)
    assert shutdown == {"event": {"e": "serverShutdown", "E": shutdown["event"]["E"]}}, "no subscriptionId"

    async def lifetime(sim, http, connect):
        c = await connect()
        await c.ok("ping")
        t0 = time.monotonic()
        await c.wait_closed()
        return time.monotonic() - t0, c.ws.close_code, sim.stats()["ws_api"]["lifetime_closes"]

    took, code, closes = running(lifetime, ws_api_max_lifetime_s=0.5)
    assert code == 1001 and closes == 1 and took < 10


def test_sim_disconnect_drops_ws_api_connections():
    async def body(sim, http, connect):
        c = await connect()
        await c.ok("ping")
        n = await post(http, "/sim/disconnect")
        await c.wait_closed()
        return n, c.ws.close_code

    n, code = running(body)
    assert n["disconnected"] >= 1 and code != 1000


def test_connection_attempts_past_the_per_ip_limit_are_refused_with_429(monkeypatch):
    from processes.simulator import wsapi

    monkeypatch.setattr(wsapi, "CONNECTIONS_PER_WINDOW", 2)  # Binance: 300 per 5 minutes

    async def body(sim, http, connect):
        await connect()
        await connect()
        with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
            await connect()
        return ei.value.status, sim.stats()["ws_api"]

    status, stats = running(body)
    assert status == 429 and stats["connections_refused"] == 1 and stats["open"] == 2


# ---------------------------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------------------------
def _resting(bid: Decimal, cid: str, signed=hmac_signed) -> dict:
    return signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001",
                   "price": str(bid - 25), "newClientOrderId": cid})


def test_drop_executes_the_order_then_cuts_the_connection_before_the_answer():
    """One order_fault_sequence for REST and WS: the REST order takes "ok", the WS one "drop"."""

    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        watcher = await connect()
        await watcher.ok("userDataStream.subscribe.signature", hmac_signed())
        c = await connect()
        await c.ok("userDataStream.subscribe.signature", hmac_signed())
        await post(http, "/sim/fault", {"order_fault_sequence": ["ok", "drop"]})
        bid, _, _ = await best(http)
        from processes.simulator.auth import signed_query

        q = signed_query({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                          "quantity": "0.001", "price": str(bid - 30), "timestamp": now_ms()}, secret=SECRET)
        async with http.post(f"/api/v3/order?{q}", headers={"X-MBX-APIKEY": KEY}) as r:
            rest_status = r.status
        await c.call("ping")  # the REST order's events were queued before this answer: all read now
        n_before = len(c.frames)
        with pytest.raises(ConnectionResetError):
            await c.call("order.place", _resting(bid, "lost-answer"))
        await watcher.wait_events(lambda ev: any(e.get("c") == "lost-answer" for e in ev), "the watcher's NEW")
        fresh = await connect()
        found = await fresh.ok("order.status", hmac_signed({"symbol": "BTCUSDT", "origClientOrderId": "lost-answer"}))
        after = await fresh.ok("order.place", _resting(bid, "after"))
        return rest_status, c.frames[n_before:], c.ws.close_code, found, after, sim.stats()

    rest_status, lost_frames, code, found, after, stats = running(body)
    assert rest_status == 200, "the REST order took the first entry"
    assert lost_frames == [], "neither the answer nor the order's events reached the dropped connection"
    assert code != 1000
    assert found["status"] == "NEW" and found["clientOrderId"] == "lost-answer"
    assert after["status"] == "NEW", "the sequence is used up"
    assert stats["faults"]["order_faults"] == 1 and stats["ws_api"]["order_drops"] == 1


def test_hang_5xx_429_418_and_ack_delay_over_the_ws_api():
    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        c = await connect()
        await c.ok("session.logon", ed_signed())
        await c.ok("userDataStream.subscribe")
        bid, _, _ = await best(http)
        await post(http, "/sim/fault", {"order_fault_sequence": ["hang", "503", "429", "500", "418"],
                                        "order_hang_s": 0.6, "retry_after_s": 7})
        t0 = time.monotonic()
        hang_fut = asyncio.ensure_future(c.call("order.place", _resting(bid, "hung", ed_signed)))
        ping = await c.call("ping")  # answered while the order's answer is held
        t_ping = time.monotonic() - t0
        r503 = await c.call("order.place", _resting(bid, "five-oh-three", ed_signed))
        r429 = await c.call("order.place", _resting(bid, "limited", ed_signed))
        r500 = await c.call("order.cancel", ed_signed({"symbol": "BTCUSDT", "origClientOrderId": "five-oh-three"}))
        hung = await hang_fut
        t_hang = time.monotonic() - t0
        d = await connect()
        found = {cid: await d.call("order.status", ed_signed({"symbol": "BTCUSDT", "origClientOrderId": cid}))
                 for cid in ("hung", "five-oh-three", "limited")}  # fmt: skip
        r418 = await c.call("order.place", _resting(bid, "banned", ed_signed))
        await c.wait_closed()
        # delayed acks: the events first, the answer order_ack_delay_ms later
        await post(http, "/sim/fault", {"order_ack_delay_ms": 300})
        t1 = time.monotonic()
        e = await connect()
        await e.ok("userDataStream.subscribe.signature", ed_signed())
        fut = asyncio.ensure_future(e.call("order.place", _resting(bid, "slow", ed_signed)))
        await e.wait_events(lambda ev: any(x.get("c") == "slow" for x in ev), "the NEW event")
        t_event = time.monotonic() - t1
        slow = await fut
        t_slow = time.monotonic() - t1
        return (ping, t_ping, r503, r429, r500, hung, t_hang, found, r418, c.ws.close_code, slow, t_event, t_slow,
                e.frames)

    (ping, t_ping, r503, r429, r500, hung, t_hang, found, r418, close_code, slow, t_event, t_slow,
     eframes) = running(body)  # fmt: skip
    assert ping["status"] == 200 and t_ping < t_hang
    assert hung["error"] == {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status "
                                                   "unknown; execution status unknown."} and hung["status"] == 504
    assert t_hang >= 0.6
    assert error_of(r503) == (503, -1008) and error_of(r500) == (500, -1001)
    assert r429["status"] == 429 and r429["error"]["code"] == -1015
    assert r429["error"]["data"]["retryAfter"] - r429["error"]["data"]["serverTime"] == 7000
    assert found["hung"]["result"]["status"] == "NEW", "hang: it happened"
    assert found["five-oh-three"]["result"]["status"] == "CANCELED", "5xx: it happened (placed, then canceled)"
    assert error_of(found["limited"]) == (400, -2013), "429: it did not happen"
    assert r418["status"] == 418 and r418["error"]["code"] == -1003 and close_code == 1008
    assert slow["status"] == 200 and t_slow >= 0.3 and t_event < t_slow - 0.15
    ack_at = next(i for i, f in enumerate(eframes) if f.get("id") is not None and f.get("result", {}).get(
        "clientOrderId") == "slow")
    assert any(f.get("event", {}).get("c") == "slow" for f in eframes[:ack_at]), "the event came first"


def _swap_pairs(xs: list) -> list:
    out = []
    for i in range(0, len(xs) - 1, 2):
        out += [xs[i + 1], xs[i]]
    return out + xs[len(out):]


def test_duplicated_and_reordered_user_events_are_what_the_docs_say():
    async def body(sim, http, connect):
        await post(http, "/sim/pause")
        exchange: list[dict] = []  # the exchange's own order of events (no transport)
        sim.orders.add_listener("main", exchange.append)
        out = {}
        for fault in ("user_event_duplicate_probability", "user_event_reorder_probability"):
            await post(http, "/sim/fault", {"user_event_duplicate_probability": 0.0,
                                            "user_event_reorder_probability": 0.0, fault: 1.0})  # fmt: skip
            c = await connect()
            await c.ok("userDataStream.subscribe.signature", hmac_signed())
            exchange.clear()
            _, ask, _ = await best(http)
            placed = await c.call("order.place", hmac_signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                             "timeInForce": "IOC", "quantity": "0.3",
                                                             "price": str(ask + 50)}))  # fmt: skip
            assert placed["status"] == 200, placed
            await post(http, "/sim/balance", {"account": "main", "asset": "USDT", "delta": "5"})
            per_event = 2 if fault == "user_event_duplicate_probability" else 1
            await wait_until(lambda: len(c.events()) >= len(exchange) * per_event, "every event")
            await c.call("ping")
            wrap = [f'{{"subscriptionId":0,"event":{orjson.dumps(e).decode()}}}' for e in exchange]
            split = next(i for i, e in enumerate(exchange) if e["e"] == "balanceUpdate")
            out[fault] = [r for r in c.raw if r.startswith('{"subscriptionId"')], wrap, split, c.frames, placed["id"]
        return out, sim.stats()["ws_api"]

    out, stats = running(body)
    got, ref, split, _, _ = out["user_event_duplicate_probability"]
    assert split >= 3, "NEW, TRADE(s), maybe EXPIRED, the position; then balanceUpdate and the position"
    assert got == [x for r in ref for x in (r, r)], "every event twice in a row, byte for byte"
    got, ref, split, frames, place_id = out["user_event_reorder_probability"]
    # two bursts: the order's events and the deposit's; pairs swap within a burst, an odd last one ends it
    assert got == _swap_pairs(ref[:split]) + _swap_pairs(ref[split:])
    answer_at = next(i for i, f in enumerate(frames) if f.get("id") == place_id)
    events_before = sum(1 for f in frames[:answer_at] if "subscriptionId" in f and "result" not in f)
    assert events_before == split - split % 2, "an odd burst's last event goes out after the answer"
    assert stats["event_duplicates"] >= len(ref) and stats["event_reorders"] >= len(ref) // 2

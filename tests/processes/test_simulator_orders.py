"""The simulator's order side over real HTTP on 127.0.0.1: signing, every endpoint, matching, balances.

Binance's documented HMAC vectors are reproduced (auth unit level) and sent
byte for byte to the running simulator; balances are checked against a
slow Decimal reference built from the account's own trades.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from decimal import Decimal

import aiohttp
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.fixedpoint import to_fixed
from processes.simulator import Simulator, SimulatorConfig
from processes.simulator.accounts import AccountConfig, FeeConfig, Ledger
from processes.simulator.auth import (
    Authenticator,
    BinanceError,
    KeyStore,
    hmac_credential,
    load_keys,
    parse_rest,
    sign_payload,
    signed_query,
    ws_payload,
)
from processes.simulator.market import MarketGenerator
from processes.simulator.orders import GeneratedBook, OrderService
from simulator_helpers import DEADLINE, RefBook, arun, make_cfg, recv_json, sim_for, specs, wait_until

# Binance's documented example key (reference §5): a valid 64-character key format
KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOC_PAYLOAD = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000"
               "&timestamp=1499827319559")
DOC_SIG = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
DOC_TS = 1499827319559
NON_ASCII_SYMBOL = "%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96"
NON_ASCII_SIG = "e1353ec6b14d888f1164ae9af8228a3dbd508bc82eb867db8ab6046442f33ef3"
MIXED_QUERY = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC"
MIXED_BODY = "quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
MIXED_SIG = "0fd168b8ddb4876a0358a8d14d0c9f3da0e9b20c5d52b2a00fcf7d1c602f9a77"
WS_PAYLOAD = (f"apiKey={KEY}&price=52000.00&quantity=0.01000000&recvWindow=100&side=SELL&symbol=BTCUSDT"
              "&timeInForce=GTC&timestamp=1645423376532&type=LIMIT")
WS_SIG = "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"
LTCBTC = {"tick_size": "0.000001", "step_size": "0.01", "start_price": "0.100000", "min_notional": "0.0001"}
D = Decimal


@pytest.fixture
def env_keys(monkeypatch):
    monkeypatch.setenv("BINANCE_SIM_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_SIM_API_SECRET", SECRET)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Client:
    """A Binance REST client as a user writes one: signs every request, keeps the connection alive."""

    def __init__(self, http: httpx.AsyncClient, key: str = KEY, *, secret: str | None = SECRET, private_key=None,
                 offset_ms: int = 0):
        self.http, self.key, self.offset_ms = http, key, offset_ms
        self.sign = {"private_key": private_key} if private_key is not None else {"secret": secret}

    async def call(self, method: str, path: str, params: dict | None = None, *, timeout: float | None = None):
        p = dict(params or {})
        p.setdefault("timestamp", now_ms() + self.offset_ms)
        r = await self.http.request(method, f"{path}?{signed_query(p, **self.sign)}",
                                    headers={"X-MBX-APIKEY": self.key}, timeout=timeout or DEADLINE)
        return r.status_code, r.headers, r.json()

    async def order(self, **params):
        return await self.call("POST", "/api/v3/order", params)

    async def ok(self, method: str, path: str, params: dict | None = None):
        status, _, body = await self.call(method, path, params)
        assert status == 200, body
        return body


def expect(result, status: int, code: int, msg: str | None = None):
    got_status, _, body = result
    assert (got_status, body.get("code")) == (status, code), body
    if msg is not None:
        assert body["msg"] == msg
    return body


async def pause(http: httpx.AsyncClient) -> None:
    r = await http.post("/sim/pause")
    assert r.status_code == 200


async def depth(http: httpx.AsyncClient, symbol: str = "BTCUSDT", limit: int = 100) -> dict:
    r = await http.get("/api/v3/depth", params={"symbol": symbol, "limit": limit})
    return r.json()


def running(body_fn, timeout: float = 3 * DEADLINE, instruments=("BTCUSDT", "ETHUSDT"), **overrides):
    """Run ``body_fn(sim, http, client)`` against a fresh simulator (port 0) with these config overrides."""

    async def main():
        cfg = make_cfg(**overrides)
        async with Simulator(cfg, specs(cfg, instruments)) as sim:
            async with httpx.AsyncClient(base_url=sim.base_url) as http:
                return await body_fn(sim, http, Client(http))

    return arun(main(), timeout)


# ---------------------------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------------------------
def test_hmac_reproduces_binance_documented_vectors_rest_mixed_non_ascii_and_ws():
    cred = hmac_credential("main", KEY, SECRET)
    req = parse_rest(f"{DOC_PAYLOAD}&signature={DOC_SIG}", "")
    assert req.payload == DOC_PAYLOAD.encode() and req.signature == DOC_SIG
    assert sign_payload(DOC_PAYLOAD.encode(), secret=SECRET) == DOC_SIG
    assert cred.verify(req.payload, req.signature) and cred.verify(req.payload, DOC_SIG.upper()), "hex any case"
    non_ascii = DOC_PAYLOAD.replace("LTCBTC", NON_ASCII_SYMBOL)
    req = parse_rest(non_ascii + f"&signature={NON_ASCII_SIG}", "")
    assert cred.verify(req.payload, req.signature), "signed as received: percent-encoded"
    assert req.params["symbol"] == "１２３４５６"
    req = parse_rest(MIXED_QUERY, f"{MIXED_BODY}&signature={MIXED_SIG}")
    assert req.payload == (MIXED_QUERY + MIXED_BODY).encode(), "query + body, no separator"
    assert cred.verify(req.payload, req.signature)
    assert req.params["quantity"] == "1" and req.params["symbol"] == "LTCBTC"
    ws = {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01000000",
          "price": "52000.00", "recvWindow": 100, "timestamp": 1645423376532, "apiKey": KEY}
    assert ws_payload(ws) == WS_PAYLOAD.encode()
    assert sign_payload(ws_payload(ws), secret=SECRET) == WS_SIG
    assert not cred.verify(req.payload, "0" * 64)


def test_query_string_wins_over_body_and_duplicates_are_refused():
    req = parse_rest("symbol=BTCUSDT&timestamp=1", "symbol=ETHUSDT&side=BUY")
    assert req.params == {"symbol": "BTCUSDT", "timestamp": "1", "side": "BUY"}
    with pytest.raises(BinanceError) as ei:
        parse_rest("symbol=A&symbol=B", "")
    assert (ei.value.code, ei.value.status) == (-1101, 400)


def test_timestamp_window_rules_in_ms_and_us():
    clock = {"us": 1_700_000_000_000_000}
    auth = Authenticator(KeyStore([hmac_credential("main", KEY, SECRET)]), lambda: clock["us"])
    ms = clock["us"] // 1000
    auth.check_timestamp({"timestamp": str(ms)})
    auth.check_timestamp({"timestamp": str(ms + 999)})
    auth.check_timestamp({"timestamp": str(ms - 5000)})
    auth.check_timestamp({"timestamp": str(clock["us"] - 5_000_000)}), "microseconds"
    auth.check_timestamp({"timestamp": str(ms - 7000), "recvWindow": "7000.5"})
    for params, code, msg in (
        ({"timestamp": str(ms + 1000)}, -1021, "Timestamp for this request was 1000ms ahead of the server's time."),
        ({"timestamp": str(ms - 5001)}, -1021, "Timestamp for this request is outside of the recvWindow."),
        ({"timestamp": str(ms - 101), "recvWindow": "100"}, -1021, None),
        ({"timestamp": str(ms), "recvWindow": "60001"}, -1102, None),
        ({"timestamp": "12ab"}, -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."),
        ({}, -1102, None),
    ):
        with pytest.raises(BinanceError) as ei:
            auth.check_timestamp(params)
        assert ei.value.code == code and ei.value.status == 400
        assert msg is None or ei.value.msg == msg


def test_documented_requests_are_accepted_byte_for_byte_by_the_running_simulator(env_keys):
    """The server clock is set to the example's date (clock_skew_ms); LTCBTC is simulated."""

    async def body(sim, http, client):
        await pause(http)
        r = await http.post(f"/api/v3/order?{DOC_PAYLOAD}&signature={DOC_SIG}", headers={"X-MBX-APIKEY": KEY})
        assert r.status_code == 200, r.text
        first = r.json()
        r = await http.post(f"/api/v3/order?{MIXED_QUERY}", content=f"{MIXED_BODY}&signature={MIXED_SIG}",
                            headers={"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200, r.text
        second = r.json()
        non_ascii = DOC_PAYLOAD.replace("LTCBTC", NON_ASCII_SYMBOL)
        r = await http.post(f"/api/v3/order?{non_ascii}&signature={NON_ASCII_SIG}", headers={"X-MBX-APIKEY": KEY})
        third = (r.status_code, r.json())
        r = await http.post(f"/api/v3/order?{DOC_PAYLOAD}&signature={DOC_SIG[:-1]}0", headers={"X-MBX-APIKEY": KEY})
        return first, second, third, (r.status_code, r.json())

    skew = DOC_TS + 200 - now_ms()
    first, second, third, tampered = running(
        body, instruments=("LTCBTC",), symbols={"LTCBTC": LTCBTC}, faults={"clock_skew_ms": skew},
        accounts=[{"name": "main", "balances": {"BTC": "1", "LTC": "5"}}])
    assert first["symbol"] == "LTCBTC" and first["orderId"] == 1 and first["origQty"] == "1.00000000"
    assert first["price"] == "0.10000000" and first["transactTime"] - DOC_TS < 60_000
    assert second["orderId"] == 2
    assert third == (400, {"code": -1121, "msg": "Invalid symbol."}), "signature accepted, symbol unknown"
    assert tampered == (400, {"code": -1022, "msg": "Signature for this request is not valid."})


def test_ed25519_account_signs_rest_and_ws_payloads(monkeypatch):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    priv = Ed25519PrivateKey.generate()
    pem = priv.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    other = Ed25519PrivateKey.generate()
    monkeypatch.setenv("SIM_ED_KEY", "edKey0001")
    monkeypatch.setenv("SIM_ED_PUB", pem)
    accounts = [{"name": "ed", "api_key_env": "SIM_ED_KEY", "api_secret_env": "SIM_ED_PUB", "key_type": "ed25519",
                 "balances": {"USDT": "1000"}}]

    async def body(sim, http, _client):
        good = Client(http, "edKey0001", private_key=priv)
        acct = await good.ok("GET", "/api/v3/account")
        bad = await Client(http, "edKey0001", private_key=other).call("GET", "/api/v3/account")
        hmac_sig = await Client(http, "edKey0001", secret="x").call("GET", "/api/v3/account")
        # the WS API's payload with the same key: session.logon accepts it
        params = {"apiKey": "edKey0001", "timestamp": now_ms()}
        params["signature"] = sign_payload(ws_payload(params), private_key=priv)
        return acct, bad, hmac_sig, sim.auth.ws_logon(params), sim.auth.ws(params)

    acct, bad, hmac_sig, logon, ws = running(body, accounts=accounts)
    assert {b["asset"]: b["free"] for b in acct["balances"]} == {"USDT": "1000.00000000"}
    expect(bad, 400, -1022)
    expect(hmac_sig, 400, -1022)
    assert logon == ws == "ed"


def test_session_logon_refuses_hmac_keys():
    auth = Authenticator(KeyStore([hmac_credential("main", KEY, SECRET)]), lambda: time.time_ns() // 1000)
    params = {"apiKey": KEY, "timestamp": now_ms()}
    params["signature"] = sign_payload(ws_payload(params), secret=SECRET)
    assert auth.ws(params) == "main"
    with pytest.raises(BinanceError) as ei:
        auth.ws_logon(params)
    assert (ei.value.code, ei.value.status) == (-2015, 401)


def test_auth_rejects_with_binance_codes_and_http_statuses(env_keys):
    async def body(sim, http, client):
        out = {}
        q = signed_query({"timestamp": now_ms()}, secret=SECRET)
        out["no_key"] = await http.get(f"/api/v3/account?{q}")
        out["bad_format"] = await http.get(f"/api/v3/account?{q}", headers={"X-MBX-APIKEY": "not a key!"})
        out["unknown"] = await http.get(f"/api/v3/account?{q}", headers={"X-MBX-APIKEY": "A" * 64})
        out["no_sig"] = await http.get(f"/api/v3/account?timestamp={now_ms()}", headers={"X-MBX-APIKEY": KEY})
        out["bad_sig"] = await http.get(f"/api/v3/account?timestamp={now_ms()}&signature={'ab' * 32}",
                                        headers={"X-MBX-APIKEY": KEY})
        out["ahead"] = await http.get("/api/v3/account?" + signed_query({"timestamp": now_ms() + 2000},
                                                                         secret=SECRET), headers={"X-MBX-APIKEY": KEY})
        out["stale"] = await http.get("/api/v3/account?" + signed_query({"timestamp": now_ms() - 6000},
                                                                         secret=SECRET), headers={"X-MBX-APIKEY": KEY})
        out["window"] = await http.get("/api/v3/account?" + signed_query(
            {"timestamp": now_ms(), "recvWindow": 60001}, secret=SECRET), headers={"X-MBX-APIKEY": KEY})
        return {k: (r.status_code, r.json()) for k, r in out.items()}

    got = running(body)
    assert got["no_key"] == (401, {"code": -2014, "msg": "API-key format invalid."})
    assert got["bad_format"] == (401, {"code": -2014, "msg": "API-key format invalid."})
    assert got["unknown"] == (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})
    assert got["no_sig"] == (400, {"code": -1102, "msg": "Mandatory parameter 'signature' was not sent, was "
                                                         "empty/null, or malformed."})
    assert got["bad_sig"] == (400, {"code": -1022, "msg": "Signature for this request is not valid."})
    assert got["ahead"] == (400, {"code": -1021, "msg": "Timestamp for this request was 1000ms ahead of the "
                                                        "server's time."})
    assert got["stale"] == (400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."})
    assert got["window"][0] == 400 and got["window"][1]["code"] == -1102


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def test_configured_account_without_its_variable_fails_at_start_naming_the_variable(monkeypatch):
    monkeypatch.delenv("SIM_K", raising=False)
    monkeypatch.setenv("SIM_S", "the-secret-value")
    cfg = SimulatorConfig.from_dict({"accounts": [{"name": "a", "api_key_env": "SIM_K", "api_secret_env": "SIM_S"}]})
    with pytest.raises(ConfigError) as ei:
        load_keys(cfg.accounts)
    assert "SIM_K" in str(ei.value) and ei.value.path == "simulator.accounts[0].api_key_env"
    monkeypatch.setenv("SIM_K", "key1")
    monkeypatch.delenv("SIM_S")
    with pytest.raises(ConfigError) as ei:
        sim_for(accounts=[{"name": "a", "api_key_env": "SIM_K", "api_secret_env": "SIM_S"}])
    assert "SIM_S" in str(ei.value)
    monkeypatch.setenv("SIM_S", "the-secret-value")
    store, _ = load_keys(cfg.accounts)
    assert "the-secret-value" not in repr(store.lookup("key1")) and "key1" not in repr(store.lookup("key1"))


@pytest.mark.parametrize("raw, path, problem", [
    ({"accounts": [{"name": "a", "key_type": "rsa"}]}, "simulator.accounts[0].key_type", "must be one of"),
    ({"accounts": [{"name": "a", "balances": {"USDT": 5}}]}, "simulator.accounts[0].balances.USDT", "decimal string"),
    ({"accounts": [{"name": "a"}, {"name": "a", "api_key_env": "X"}]}, "simulator.accounts[1].name", "already used"),
    ({"accounts": [{"name": "a", "secret": "x"}]}, "simulator.accounts[0].secret", "is not a known key"),
    ({"fees": {"maker": "2"}}, "simulator.fees.maker", "must be <= 1"),
    ({"fees": {"asset": "BNB"}}, "simulator.fees.asset_prices", "must give the price"),
    ({"queue_model": "fifo"}, "simulator.queue_model", "must be one of"),
    ({"faults": {"order_fault_sequence": ["explode"]}}, "simulator.faults.order_fault_sequence[0]", "must be one of"),
])
def test_bad_order_side_config_names_the_key(raw, path, problem):
    with pytest.raises(ConfigError) as ei:
        SimulatorConfig.from_dict(raw)
    assert ei.value.path == path and problem in ei.value.problem


def test_default_account_without_variables_runs_the_market_and_refuses_signed_requests(monkeypatch):
    monkeypatch.delenv("BINANCE_SIM_API_KEY", raising=False)
    monkeypatch.delenv("BINANCE_SIM_API_SECRET", raising=False)

    async def body(sim, http, client):
        return (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT"})).status_code, await client.call(
            "GET", "/api/v3/account")

    depth_status, refused = running(body)
    assert depth_status == 200
    expect(refused, 401, -2015)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def test_order_validation_rejects_with_binance_codes(env_keys):
    L = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01",
         "price": "1000.00"}

    def without(*keys, **changes):
        return {**{k: v for k, v in L.items() if k not in keys}, **changes}

    cases = [
        (without("symbol"), -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."),
        (without(symbol="DOGEUSDT"), -1121, "Invalid symbol."),
        (without("side"), -1102, None),
        (without(side="HOLD"), -1117, "Invalid side."),
        (without(type="ICEBERG"), -1116, "Invalid orderType."),
        (without(type="STOP_LOSS_LIMIT"), -2010, "Stop loss limit orders are not supported for this symbol."),
        (without("timeInForce"), -1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or "
                                        "malformed."),
        (without(timeInForce="GTD"), -1115, "Invalid timeInForce."),
        (without("price"), -1102, None),
        (without("quantity"), -1102, None),
        (without(price="1000.001"), -1013, "Filter failure: PRICE_FILTER"),
        (without(price="2000000"), -1013, "Filter failure: PRICE_FILTER"),
        (without(quantity="0.000011"), -1013, "Filter failure: LOT_SIZE"),
        (without(quantity="0.000001"), -1013, "Filter failure: LOT_SIZE"),
        (without(quantity="0.00001", price="100.00"), -1013, "Filter failure: NOTIONAL"),
        (without(price="1,000"), -1100, None),
        (without(quantity="0.000000001"), -1111, "Parameter 'quantity' has too much precision."),
        (without(quoteOrderQty="10"), -1106, "Parameter 'quoteOrderQty' sent when not required."),
        (without(stopPrice="10"), -1106, "Parameter 'stopPrice' sent when not required."),
        (without(icebergQty="0.001"), -2010, "Iceberg orders are not supported for this symbol."),
        (without(newClientOrderId="has space"), -1100, None),
        (without(newOrderRespType="ALL"), -1100, None),
        (without(foo="bar"), -1104, None),
        (without("price", "timeInForce", type="MARKET", quantity="101"), -1013, "Filter failure: MARKET_LOT_SIZE"),
        (without("price", "timeInForce", "quantity", type="MARKET"), -1102,
         "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!"),
        (without("price", "timeInForce", type="MARKET", quoteOrderQty="10"), -1128, None),
        (without("price", type="MARKET"), -1106, "Parameter 'timeInForce' sent when not required."),
        (without("timeInForce", type="MARKET"), -1106, "Parameter 'price' sent when not required."),
        (without("price", "timeInForce", "quantity", type="MARKET", quoteOrderQty="1"), -1013, "Filter failure: NOTIONAL"),
        (without("timeInForce", type="LIMIT_MAKER", quantity="150"), -2010,
         "Account has insufficient balance for requested action."),
    ]

    async def body(sim, http, client):
        return [await client.order(**p) for p, _, _ in cases], await client.call("POST", "/api/v3/order/test", L)

    results, test_ok = running(body)
    for (params, code, msg), got in zip(cases, results):
        status, _, b = got
        assert (status, b.get("code")) == (400, code), (params, b)
        assert msg is None or b["msg"] == msg, (params, b)
    assert test_ok[0] == 200 and test_ok[2] == {}


def test_duplicate_client_order_id_only_among_open_orders_and_limit_maker_that_would_take(env_keys):
    async def body(sim, http, client):
        await pause(http)
        book = await depth(http)
        bid, ask = D(book["bids"][0][0]), D(book["asks"][0][0])
        low = str(bid - 100)
        first = await client.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001",
                                   price=low, newClientOrderId="my-order_1")
        dup = await client.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001",
                                 price=low, newClientOrderId="my-order_1")
        cancel = await client.call("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "my-order_1"})
        again = await client.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001",
                                   price=low, newClientOrderId="my-order_1")
        taker = await client.order(symbol="BTCUSDT", side="BUY", type="LIMIT_MAKER", quantity="0.001", price=str(ask))
        maker = await client.order(symbol="BTCUSDT", side="SELL", type="LIMIT_MAKER", quantity="0.001", price=str(ask))
        return first, dup, cancel, again, taker, maker

    first, dup, cancel, again, taker, maker = running(body)
    assert first[0] == 200 and first[2]["clientOrderId"] == "my-order_1"
    expect(dup, 400, -2010, "Duplicate order sent.")
    assert cancel[0] == 200 and cancel[2]["status"] == "CANCELED"
    assert again[0] == 200 and again[2]["orderId"] == first[2]["orderId"] + 1, "free again once the first closed"
    expect(taker, 400, -2010, "Order would immediately match and take.")
    assert maker[0] == 200 and set(maker[2]) == {"symbol", "orderId", "orderListId", "clientOrderId",
                                                 "transactTime"}, "LIMIT_MAKER answers ACK by default"


# ---------------------------------------------------------------------------------------------
# endpoints
# ---------------------------------------------------------------------------------------------
def test_every_endpoint_over_http(env_keys):
    async def body(sim, http, c):
        await pause(http)
        book = await depth(http)
        bid = D(book["bids"][0][0])
        out = {}
        out["rest1"] = await c.ok("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                             "timeInForce": "GTC", "quantity": "0.01",
                                                             "price": str(bid - 50), "newOrderRespType": "RESULT",
                                                             "newClientOrderId": "r1", "strategyId": 7})
        out["rest2"] = await c.ok("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT",
                                                             "timeInForce": "GTC", "quantity": "0.02",
                                                             "price": str(bid + 500)})
        out["market"] = await c.ok("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
                                                              "quoteOrderQty": "100"})
        out["by_id"] = await c.ok("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": out["rest1"]["orderId"]})
        out["by_cid"] = await c.ok("GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "r1"})
        out["missing"] = await c.call("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 999})
        out["no_id"] = await c.call("GET", "/api/v3/order", {"symbol": "BTCUSDT"})
        out["mismatch"] = await c.call("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1,
                                                                 "origClientOrderId": "zz"})
        out["open"] = await c.ok("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
        out["open_all"] = await c.ok("GET", "/api/v3/openOrders")
        out["account_locked"] = await c.ok("GET", "/api/v3/account")
        out["cancel"] = await c.ok("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1,
                                                                "newClientOrderId": "cx1"})
        out["cancel_again"] = await c.call("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1})
        out["cancel_unknown"] = await c.call("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 77})
        out["cancel_all"] = await c.ok("DELETE", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
        out["cancel_none"] = await c.call("DELETE", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
        out["all"] = await c.ok("GET", "/api/v3/allOrders", {"symbol": "BTCUSDT"})
        out["all_from2"] = await c.ok("GET", "/api/v3/allOrders", {"symbol": "BTCUSDT", "orderId": 2, "limit": 1})
        out["trades"] = await c.ok("GET", "/api/v3/myTrades", {"symbol": "BTCUSDT"})
        out["account"] = await c.ok("GET", "/api/v3/account", {"omitZeroBalances": "true"})
        out["test_fees"] = await c.ok("POST", "/api/v3/order/test", {"symbol": "BTCUSDT", "side": "BUY",
                                                                      "type": "MARKET", "quantity": "0.001",
                                                                      "computeCommissionRates": "true"})
        out["rate"] = await c.ok("GET", "/api/v3/rateLimit/order")
        out["stats"] = (await http.get("/sim/accounts")).json()
        return out

    o = running(body)
    assert o["rest1"]["status"] == "NEW" and o["rest1"]["strategyId"] == 7 and "fills" not in o["rest1"]
    assert o["market"]["status"] == "FILLED" and o["market"]["origQuoteOrderQty"] == "100.00000000"
    assert D(o["market"]["cummulativeQuoteQty"]) <= 100 and o["market"]["fills"]
    f = o["market"]["fills"][0]
    assert set(f) == {"price", "qty", "commission", "commissionAsset", "tradeId"} and f["commissionAsset"] == "BTC"
    assert o["by_id"] == o["by_cid"] and o["by_id"]["isWorking"] is True and o["by_id"]["status"] == "NEW"
    assert {"stopPrice", "icebergQty", "time", "updateTime", "workingTime", "origQuoteOrderQty",
            "cummulativeQuoteQty", "selfTradePreventionMode"} <= set(o["by_id"])
    expect(o["missing"], 400, -2013, "Order does not exist.")
    expect(o["no_id"], 400, -1102)
    expect(o["mismatch"], 400, -2039)
    assert [x["orderId"] for x in o["open"]] == [1, 2] and o["open_all"] == o["open"]
    locked = {b["asset"]: D(b["locked"]) for b in o["account_locked"]["balances"]}
    assert locked["BTC"] == D("0.02") and locked["USDT"] == D(o["rest1"]["price"]) * D("0.01")
    assert o["cancel"]["origClientOrderId"] == "r1" and o["cancel"]["clientOrderId"] == "cx1"
    assert o["cancel"]["status"] == "CANCELED"
    expect(o["cancel_again"], 400, -2011, "Unknown order sent.")
    expect(o["cancel_unknown"], 400, -2011, "Unknown order sent.")
    assert [x["orderId"] for x in o["cancel_all"]] == [2]
    expect(o["cancel_none"], 400, -2011)
    assert [x["status"] for x in o["all"]] == ["CANCELED", "CANCELED", "FILLED"]
    assert [x["orderId"] for x in o["all_from2"]] == [2]
    assert [t["orderId"] for t in o["trades"]] == [3] * len(o["market"]["fills"])
    assert all(t["isBuyer"] and not t["isMaker"] for t in o["trades"])
    assert [t["id"] for t in o["trades"]] == [x["tradeId"] for x in o["market"]["fills"]]
    assert all(D(b["locked"]) == 0 for b in o["account"]["balances"]), "nothing open, nothing locked"
    assert o["account"]["commissionRates"]["maker"] == "0.00100000" and o["account"]["makerCommission"] == 10
    assert o["test_fees"]["standardCommissionForOrder"] == {"maker": "0.00100000", "taker": "0.00100000"}
    assert {(r["interval"], r["intervalNum"]) for r in o["rate"]} == {("SECOND", 10), ("DAY", 1)}
    assert o["stats"]["conservation_errors"] == []


def test_weights_failed_orders_cost_one_successful_zero_queries_their_weight(env_keys):
    async def body(sim, http, c):
        async def used(method, path, params):
            status, h, _ = await c.call(method, path, params)
            return status, int(h["X-MBX-USED-WEIGHT-1M"])

        await pause(http)
        bid = D((await depth(http))["bids"][0][0])
        w = [await used("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                  "timeInForce": "GTC", "quantity": "0.001", "price": str(bid - 10)})]
        w.append(await used("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                      "timeInForce": "GTC", "quantity": "0.001", "price": "0.001"}))
        w.append(await used("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1}))
        w.append(await used("GET", "/api/v3/openOrders", {}))
        w.append(await used("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1}))
        return w

    (s1, w1), (s2, w2), (s3, w3), (s4, w4), (s5, w5) = running(body)
    assert (s1, s2, s3, s4, s5) == (200, 400, 200, 200, 200)
    assert w2 == w1 + 1, "a rejected order costs 1"
    assert w3 == w2 + 4 and w4 == w3 + 80 and w5 == w4


def test_order_rate_limits_429_and_count_headers_and_exchange_info(env_keys):
    async def body(sim, http, c):
        await pause(http)
        bid = D((await depth(http))["bids"][0][0])
        info = (await http.get("/api/v3/exchangeInfo")).json()
        res = []
        for i in range(4):
            res.append(await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                                     quantity="0.001", price=str(bid - 10 - i)))
        return info, res

    info, res = running(body, orders_per_day=3, orders_per_10s=50)
    assert {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 3} in info["rateLimits"]
    assert {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50} in info["rateLimits"]
    assert [r[1]["X-MBX-ORDER-COUNT-1D"] for r in res[:3]] == ["1", "2", "3"]
    expect(res[3], 429, -1015, "Too many new orders; current limit is 3 orders per 1 DAY.")
    assert int(res[3][1]["Retry-After"]) > 0


def test_ten_second_order_window_and_filled_orders_give_their_count_back(env_keys):
    """The server clock is put at the start of a 10 s window (clock skew); the client syncs to it."""
    skew = (10_000 - now_ms() % 10_000) % 10_000 + 100

    async def body(sim, http, c):
        c.offset_ms = (await http.get("/api/v3/time")).json()["serverTime"] - now_ms()
        await pause(http)
        bid = D((await depth(http))["bids"][0][0])
        res = []
        for i in range(2):
            res.append(await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                                     quantity="0.001", price=str(bid - 10 - i)))
        res.append(await c.order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.001"))  # fills: count back
        res.append(await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001",
                                 price=str(bid - 20)))
        res.append(await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.001",
                                 price=str(bid - 21)))
        return res, (await c.ok("GET", "/api/v3/rateLimit/order"))

    res, rate = running(body, orders_per_10s=3, faults={"clock_skew_ms": skew})
    assert [r[0] for r in res[:4]] == [200, 200, 200, 200]
    assert [r[1]["X-MBX-ORDER-COUNT-10S"] for r in res[:4]] == ["1", "2", "3", "3"]
    expect(res[4], 429, -1015, "Too many new orders; current limit is 3 orders per 10 SECOND.")
    assert {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 3, "count": 3} in rate


# ---------------------------------------------------------------------------------------------
# matching through the endpoints
# ---------------------------------------------------------------------------------------------
def test_market_order_walks_levels_and_the_public_streams_show_the_impact(env_keys):
    async def body(sim, http, c):
        async with aiohttp.ClientSession() as ws_http:
            async with ws_http.ws_connect(f"{sim.ws_url}/stream?streams=btcusdt@depth@100ms/btcusdt@trade") as ws:
                ref = RefBook()
                trades = []
                while not ref.buffer:
                    m = await recv_json(ws)
                    if m["stream"].endswith("100ms"):
                        ref.feed(m["data"])
                await pause(http)
                snap = await depth(http, limit=1000)
                ref.set_snapshot(snap)
                asks = [(D(p), D(q)) for p, q in snap["asks"][:3]]
                qty = asks[0][1] + asks[1][1] + asks[2][1] / 2
                qty -= qty % D("0.00001")
                st, _, order = await c.order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=str(qty))
                assert st == 200, order
                ours = {f["tradeId"] for f in order["fills"]}
                after = await depth(http, limit=1000)
                while not ours <= {t["t"] for t in trades} or ref.update_id < after["lastUpdateId"]:
                    m = await recv_json(ws)
                    if m["stream"].endswith("100ms"):
                        ref.feed(m["data"])
                    else:
                        trades.append(m["data"])
                return asks, qty, order, after, ref, trades

    asks, qty, order, after, ref, trades = running(body)
    fills = [(D(f["price"]), D(f["qty"])) for f in order["fills"]]
    assert fills == [asks[0], asks[1], (asks[2][0], qty - asks[0][1] - asks[1][1])], "best first, level by level"
    assert D(order["cummulativeQuoteQty"]) == sum(p * q for p, q in fills)
    assert [f["commission"] for f in order["fills"]] == [f"{q * D('0.001'):.8f}" for _, q in fills]
    new_asks = {D(p): D(q) for p, q in after["asks"]}
    assert asks[0][0] not in new_asks and asks[1][0] not in new_asks, "levels taken out of the book"
    assert new_asks[asks[2][0]] == asks[2][1] - fills[2][1]
    ours = [t for t in trades if t["t"] in {f["tradeId"] for f in order["fills"]}]
    assert [(D(t["p"]), D(t["q"]), t["m"]) for t in ours] == [(p, q, False) for p, q in fills], "public trades"
    assert ref.as_snapshot() == ({D(p): D(q) for p, q in after["bids"]}, new_asks), "diffs gap-free, book agrees"


def test_ioc_expires_the_rest_fok_is_all_or_nothing(env_keys):
    async def body(sim, http, c):
        await pause(http)
        snap = await depth(http)
        (p0, q0), (p1, q1) = [(D(p), D(q)) for p, q in snap["asks"][:2]]
        ioc = await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="IOC", price=str(p0),
                            quantity=str(q0 + D("0.01")))
        fok_no = await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="FOK", price=str(p1),
                               quantity=str(q1 + D("0.5")))
        book_after_fok = await depth(http)
        fok_yes = await c.order(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="FOK", price=str(p1),
                                quantity=str(q1))
        return (p0, q0), ioc, fok_no, fok_yes, snap, book_after_fok

    (p0, q0), ioc, fok_no, fok_yes, snap, book_after_fok = running(body)
    assert ioc[0] == 200 and ioc[2]["status"] == "EXPIRED" and D(ioc[2]["executedQty"]) == q0
    assert ioc[2]["expiryReason"] == "UNFILLED_IOC_QUANTITY_EXPIRED"
    assert [(D(f["price"]), D(f["qty"])) for f in ioc[2]["fills"]] == [(p0, q0)]
    assert fok_no[2]["status"] == "EXPIRED" and fok_no[2]["fills"] == [] and D(fok_no[2]["executedQty"]) == 0
    assert fok_no[2]["expiryReason"] == "UNFILLED_FOK_ORDER_EXPIRED"
    assert book_after_fok["asks"][0] == snap["asks"][1], "a FOK that cannot fill takes nothing"
    assert fok_yes[2]["status"] == "FILLED"


def test_resting_order_fills_when_the_generated_market_trades_through_it(env_keys):
    async def body(sim, http, c):
        events: list[dict] = []
        sim.orders.add_listener("main", events.append)
        book = await depth(http)
        placed = []
        for side, px in (("BUY", book["bids"][0][0]), ("SELL", book["asks"][0][0])):  # whichever way it moves
            st, _, order = await c.order(symbol="BTCUSDT", side=side, type="LIMIT", timeInForce="GTC",
                                         quantity="0.002", price=px, newClientOrderId=f"join-{side}")
            assert st == 200 and order["status"] == "NEW", order
            placed.append(order)
        state = {}

        async def filled():
            for o in placed:
                state["o"] = await c.ok("GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": o["orderId"]})
                if state["o"]["status"] == "FILLED":
                    return o
            return None

        deadline = time.monotonic() + 2 * DEADLINE
        while (order := await filled()) is None:
            assert time.monotonic() < deadline, f"not filled: {state['o']}"
            await asyncio.sleep(0.05)
        trades = await c.ok("GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "orderId": order["orderId"]})
        events = [e for e in events if e["e"] != "executionReport" or e["i"] == order["orderId"]]
        return order, state["o"], trades, events, (await http.get("/sim/accounts")).json()

    order, final, trades, events, summary = running(body, rate=20000)
    assert final["executedQty"] == "0.00200000" and D(final["cummulativeQuoteQty"]) == D(order["price"]) * D("0.002")
    assert all(t["isMaker"] and t["price"] == order["price"] for t in trades)
    import math

    def ceil8(x: Decimal) -> Decimal:  # the venue rounds each fill's commission up to 1e-8
        return D(math.ceil(x * 10**8)) / 10**8

    base = [D(t["qty"]) for t in trades] if order["side"] == "BUY" else [D(t["quoteQty"]) for t in trades]
    assert [D(t["commission"]) for t in trades] == [ceil8(x * D("0.001")) for x in base], "maker fee, received asset"
    assert {t["commissionAsset"] for t in trades} == {"BTC" if order["side"] == "BUY" else "USDT"}
    reports = [e for e in events if e["e"] == "executionReport"]
    assert [r["x"] for r in reports][0] == "NEW" and reports[-1]["X"] == "FILLED" and reports[-1]["m"] is True
    assert any(e["e"] == "outboundAccountPosition" for e in events)
    assert summary["conservation_errors"] == []


def test_execution_report_and_account_position_carry_every_documented_field(env_keys):
    fields = set("e E s c S o f q p P F g C x X r i l z L n N T t I w m M O Z Y Q W V".split())

    async def body(sim, http, c):
        events: list[dict] = []
        sim.orders.add_listener("main", events.append)
        await pause(http)
        await c.ok("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET",
                                              "quantity": "0.001"})
        bid = D((await depth(http))["bids"][0][0])
        await c.ok("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                              "timeInForce": "GTC", "quantity": "0.001", "price": str(bid - 5),
                                              "newClientOrderId": "keep"})
        await c.ok("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "keep",
                                                "newClientOrderId": "cancel-1"})
        r = await http.post("/sim/balance", json={"account": "main", "asset": "USDT", "delta": "25.5"})
        assert r.status_code == 200
        return events

    events = running(body)
    reports = [e for e in events if e["e"] == "executionReport"]
    assert [(r["x"], r["X"]) for r in reports] == [("NEW", "NEW"), ("TRADE", "FILLED"), ("NEW", "NEW"),
                                                   ("CANCELED", "CANCELED")]
    for r in reports:
        assert fields <= set(r), fields - set(r)
    trade = reports[1]
    assert trade["N"] == "USDT" and trade["m"] is False and trade["t"] > 0 and trade["S"] == "SELL"
    assert D(trade["Y"]) == D(trade["L"]) * D(trade["l"]) and trade["Z"] == trade["Y"]
    assert reports[0]["N"] is None and reports[0]["t"] == -1
    assert reports[3]["c"] == "cancel-1" and reports[3]["C"] == "keep"
    assert len({r["I"] for r in reports}) == 4, "execution ids unique"
    pos = [e for e in events if e["e"] == "outboundAccountPosition"]
    assert pos and all(set(p) == {"e", "E", "u", "B"} and all(set(b) == {"a", "f", "l"} for b in p["B"]) for p in pos)
    bu = [e for e in events if e["e"] == "balanceUpdate"]
    assert bu == [{"e": "balanceUpdate", "E": bu[0]["E"], "a": "USDT", "d": "25.50000000", "T": bu[0]["T"]}]


# ---------------------------------------------------------------------------------------------
# balances: conservation against a Decimal reference
# ---------------------------------------------------------------------------------------------
def _reference_balances(svc: OrderService, initial: dict[str, dict[str, str]]) -> dict[str, dict[str, Decimal]]:
    """Each account's balances recomputed from its own trades, in Decimal (no ledger involved)."""
    out = {}
    for name, acct in svc.accounts.items():
        bal = {a: D(v) for a, v in initial[name].items()}
        for symbol, rows in acct.trades.items():
            v = svc.venues[symbol]
            for order_id, f in rows:
                qty, quote = D(f.qty) / 10**8, D(f.quote) / 10**8
                sign = 1 if v.orders[order_id].side == 1 else -1
                bal[v.base] = bal.get(v.base, D(0)) + sign * qty
                bal[v.quote] = bal.get(v.quote, D(0)) - sign * quote
                bal[f.commission_asset] = bal.get(f.commission_asset, D(0)) - D(f.commission) / 10**8
        out[name] = bal
    return out


def _service(seed: int, fees: FeeConfig | None = None, accounts=None, queue_model: str = "trade_through"):
    cfg = SimulatorConfig.from_dict({"seed": seed, "depth_levels": 60, "rate": 20000})
    gen = MarketGenerator(specs(cfg), seed=seed, rate=20000, depth_levels=60)
    initial = accounts or {"a": {"USDT": "50000", "BTC": "1", "ETH": "10", "BNB": "0.01"},
                           "b": {"USDT": "3000", "BTC": "0.05", "ETH": "1"}}
    accs = [AccountConfig(name=n, balances={k: to_fixed(v) for k, v in bal.items()}) for n, bal in initial.items()]
    clock = {"ms": 1_700_000_000_000}
    svc = OrderService(specs=specs(cfg), books={s: GeneratedBook(b) for s, b in gen.books.items()},
                       ledger=Ledger(accs), accounts=list(initial), fees=fees or FeeConfig(),
                       clock_ms=lambda: clock["ms"], max_open_orders=20, queue_model=queue_model)
    return svc, gen, clock, initial


ACTIONS = st.lists(st.tuples(
    st.sampled_from(["limit", "limit", "market_qty", "market_quote", "maker", "ioc", "fok", "cancel", "step"]),
    st.sampled_from(["a", "b"]), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.sampled_from(["BUY", "SELL"]),
    st.integers(-8, 8), st.integers(1, 400)), min_size=5, max_size=40)


def _run_actions(svc, gen, clock, actions):
    for kind, acct, sym, side, ticks, size in actions:
        clock["ms"] += 7
        if kind == "step":  # half a second of generated market: resting orders may fill
            for _ in range(5):
                clock["ms"] += 100
                svc.on_generated(gen.step(clock["ms"]))
            continue
        v = svc.venues[sym]
        bid, ask = v.book.best()
        if kind == "cancel":
            open_ = list(svc.accounts[acct].open.get(sym, {}))
            if open_:
                svc.dispatch("order.cancel", acct, {"symbol": sym, "orderId": str(open_[size % len(open_)])})
            continue
        ref = ask if side == "BUY" else bid
        px = max(v.tick, ref + ticks * v.tick * 2)
        qty = size * v.step * (10 if sym == "BTCUSDT" else 1)
        p = {"symbol": sym, "side": side}
        if kind in ("limit", "ioc", "fok"):
            p.update(type="LIMIT", timeInForce={"limit": "GTC", "ioc": "IOC", "fok": "FOK"}[kind])
        elif kind == "maker":
            p.update(type="LIMIT_MAKER")
        else:
            p.update(type="MARKET")
        if p["type"] != "MARKET":
            p.update(price=f"{D(px) / 10**8:f}", quantity=f"{D(qty) / 10**8:f}")
        elif kind == "market_qty":
            p.update(quantity=f"{D(qty) / 10**8:f}")
        else:
            p.update(quoteOrderQty=str(5 + size))
        try:
            svc.dispatch("order.place", acct, p)
        except BinanceError as exc:
            assert exc.code in (-2010, -1013), (p, exc)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), actions=ACTIONS, bnb=st.booleans(), queue=st.booleans())
def test_random_order_sequences_conserve_every_asset_exactly(seed, actions, bnb, queue):
    fees = FeeConfig.from_dict({"maker": "0.00075", "taker": "0.001", "asset": "BNB",
                                "asset_prices": {"USDT": "600"}}) if bnb else FeeConfig()
    svc, gen, clock, initial = _service(seed, fees, queue_model="queue_position" if queue else "trade_through")
    _run_actions(svc, gen, clock, actions)
    assert svc.ledger.conservation_errors() == []
    ref = _reference_balances(svc, initial)
    for name in svc.accounts:
        for asset in svc.ledger.assets(name):
            free, locked = svc.ledger.balance(name, asset)
            assert D(free + locked) / 10**8 == ref[name].get(asset, D(0)), (name, asset)
    for name, acct in svc.accounts.items():  # nothing open -> nothing locked
        for sym in list(acct.open):
            if acct.open[sym]:
                svc.dispatch("openOrders.cancelAll", name, {"symbol": sym})
        assert all(svc.ledger.balance(name, a)[1] == 0 for a in svc.ledger.assets(name)), name
    assert svc.ledger.conservation_errors() == []


def test_seeded_order_sequence_over_http_conserves_balances(env_keys):
    import random

    async def body(sim, http, c):
        rng = random.Random(5)
        for i in range(60):
            kind = rng.choice(["limit", "market", "quote", "cancel"])
            sym = rng.choice(["BTCUSDT", "ETHUSDT"])
            side = rng.choice(["BUY", "SELL"])
            if kind == "cancel":
                opened = await c.ok("GET", "/api/v3/openOrders", {"symbol": sym})
                if opened:
                    await c.call("DELETE", "/api/v3/order", {"symbol": sym, "orderId": rng.choice(opened)["orderId"]})
                continue
            book = await depth(http, sym, 5)
            ref = D(book["asks" if side == "BUY" else "bids"][0][0])
            qty = D(rng.randint(1, 30)) * (D("0.0001") if sym == "BTCUSDT" else D("0.001"))
            if kind == "limit":
                px = ref + D(rng.randint(-5, 5)) * D("0.01")
                st, _, b = await c.order(symbol=sym, side=side, type="LIMIT", timeInForce="GTC", quantity=str(qty),
                                         price=str(px))
            elif kind == "market":
                st, _, b = await c.order(symbol=sym, side=side, type="MARKET", quantity=str(qty))
            else:
                st, _, b = await c.order(symbol=sym, side=side, type="MARKET", quoteOrderQty=str(rng.randint(5, 80)))
            assert st == 200 or b["code"] in (-2010, -1013), b
        for sym in ("BTCUSDT", "ETHUSDT"):
            await c.call("DELETE", "/api/v3/openOrders", {"symbol": sym})
        account = await c.ok("GET", "/api/v3/account")
        trades = {s: await c.ok("GET", "/api/v3/myTrades", {"symbol": s, "limit": 1000}) for s in ("BTCUSDT", "ETHUSDT")}
        return account, trades, (await http.get("/sim/accounts")).json()

    account, trades, summary = running(body, rate=8000)
    assert summary["conservation_errors"] == []
    bal = {"USDT": D("100000"), "BTC": D("1"), "ETH": D("10")}
    for sym, rows in trades.items():
        base = sym[:-4]
        for t in rows:
            sign = 1 if t["isBuyer"] else -1
            bal[base] += sign * D(t["qty"])
            bal["USDT"] -= sign * D(t["quoteQty"])
            bal[t["commissionAsset"]] -= D(t["commission"])
    got = {b["asset"]: D(b["free"]) + D(b["locked"]) for b in account["balances"]}
    assert got == bal, "the account equals its trades replayed in Decimal"
    assert all(D(b["locked"]) == 0 for b in account["balances"])
    assert sum(len(r) for r in trades.values()) > 0


def test_fee_asset_pays_commission_when_covered_else_native():
    fees = FeeConfig.from_dict({"maker": "0.001", "taker": "0.001", "asset": "BNB", "asset_prices": {"USDT": "500"}})
    svc, gen, clock, _ = _service(3, fees, accounts={"a": {"USDT": "10000", "BNB": "0.002"}})
    r1 = svc.dispatch("order.place", "a", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quoteOrderQty": "600"})
    r2 = svc.dispatch("order.place", "a", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quoteOrderQty": "600"})
    f1, f2 = r1.body["fills"], r2.body["fills"]
    assert {f["commissionAsset"] for f in f1} == {"BNB"}, "0.6 USDT fee = 0.0012 BNB, covered"
    assert sum(D(f["commission"]) for f in f1) <= D("0.002")
    assert {f["commissionAsset"] for f in f2} == {"BTC"}, "BNB left does not cover it: native fee"
    assert svc.ledger.conservation_errors() == []


# ---------------------------------------------------------------------------------------------
# replayed market
# ---------------------------------------------------------------------------------------------
def test_orders_match_against_the_replayed_book(shared_data, env_keys):
    path = shared_data / "hftbacktest" / "ethusdt_20240808.gz"

    async def main():
        cfg = SimulatorConfig.from_dict({"port": 0, "replay": [str(path)], "replay_speed": 0})
        async with Simulator(cfg, []) as sim, httpx.AsyncClient(base_url=sim.base_url) as http:
            c = Client(http)
            snap = orjson.loads(sim.source.snapshot("ETHUSDT", 5000))
            ask0 = D(snap["asks"][0][0])
            book = sim.orders.venues["ETHUSDT"].book
            before = book.best()
            st, _, order = await c.order(symbol="ETHUSDT", side="BUY", type="MARKET", quantity="0.01")
            # the recording trades from 2679.00 to 2685.37: both sides of the touch get traded through
            bid, ask = snap["bids"][0][0], snap["asks"][0][0]
            rest = [await c.ok("POST", "/api/v3/order", {"symbol": "ETHUSDT", "side": side, "type": "LIMIT",
                                                          "timeInForce": "GTC", "quantity": "0.01", "price": px})
                    for side, px in (("BUY", bid), ("SELL", ask))]
            async with aiohttp.ClientSession() as s:  # a subscriber starts the replay
                async with s.ws_connect(f"{sim.ws_url}/ws/ethusdt@trade"):
                    await wait_until(lambda: sim.source.done, "the replay to finish")
            final = [await c.ok("GET", "/api/v3/order", {"symbol": "ETHUSDT", "orderId": o["orderId"]}) for o in rest]
            trades = await c.ok("GET", "/api/v3/myTrades", {"symbol": "ETHUSDT"})
            return ask0, before, st, order, book.last_update_id, snap["lastUpdateId"], final, trades

    ask0, before, st, order, last_u, snap_u, final, trades = arun(main())
    assert st == 200 and order["status"] == "FILLED"
    assert D(order["fills"][0]["price"]) == ask0 and before[1] == to_fixed(str(ask0))
    assert last_u > snap_u, "the replayed diffs kept the order side's book"
    assert [o["status"] for o in final] == ["FILLED", "FILLED"], "resting orders filled by the replayed market"
    makers = [t for t in trades if t["isMaker"]]
    assert {(t["isBuyer"], D(t["price"])) for t in makers} == {(True, D(final[0]["price"])),
                                                             (False, D(final[1]["price"]))}


# ---------------------------------------------------------------------------------------------
# helpers used by the fault tests (test_simulator_orders_faults.py)
# ---------------------------------------------------------------------------------------------
def test_signed_query_hmac_matches_the_documented_signature():
    q = signed_query({"symbol": "LTCBTC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "1",
                      "price": "0.1", "recvWindow": 5000, "timestamp": DOC_TS}, secret=SECRET)
    assert q == f"{DOC_PAYLOAD}&signature={DOC_SIG}"
    assert hmac.new(SECRET.encode(), DOC_PAYLOAD.encode(), hashlib.sha256).hexdigest() == DOC_SIG


def test_old_closed_orders_are_forgotten_past_the_history_limit_open_ones_kept():
    svc, gen, clock, _ = _service(4)
    svc.history_limit = 20
    svc.orders_per_10s = svc.orders_per_day = 10**9
    v = svc.venues["BTCUSDT"]
    bid, _ = v.book.best()
    low = f"{D(bid - 100 * v.tick) / 10**8:f}"
    keep = svc.dispatch("order.place", "a", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                             "timeInForce": "GTC", "quantity": "0.001", "price": low}).body["orderId"]
    for _ in range(40):
        svc.dispatch("order.place", "a", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "IOC",
                                          "quantity": "0.001", "price": low})
    assert 20 <= len(v.orders) <= 22 and keep in v.orders
    with pytest.raises(BinanceError) as ei:
        svc.dispatch("order.status", "a", {"symbol": "BTCUSDT", "orderId": str(keep + 1)})
    assert ei.value.code == -2013
    hist = svc.dispatch("allOrders", "a", {"symbol": "BTCUSDT", "limit": "1000"}).body
    assert hist[0]["orderId"] == keep and len(hist) == len(v.orders)


def test_warm_compiles_the_order_path_without_error():
    from processes.simulator.orders import warm

    warm()

"""Order-side faults seen from a real signed client over loopback: each does what faults.py says.

The pattern every "unknown outcome" test checks is the exactly-once building
block: the client loses the answer, then finds the order by the
``newClientOrderId`` it chose.
"""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from test_simulator_orders import KEY, SECRET, Client, depth, expect, now_ms, pause, running


@pytest.fixture(autouse=True)
def env_keys(monkeypatch):
    monkeypatch.setenv("BINANCE_SIM_API_KEY", KEY)
    monkeypatch.setenv("BINANCE_SIM_API_SECRET", SECRET)


async def set_faults(http: httpx.AsyncClient, **faults) -> dict:
    r = await http.post("/sim/fault", json=faults)
    assert r.status_code == 200, r.text
    return r.json()


async def resting_buy(c: Client, http: httpx.AsyncClient, cid: str, *, timeout: float | None = None,
                      bid: Decimal | None = None):
    bid = bid or Decimal((await depth(http))["bids"][0][0])
    return await c.call("POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                  "timeInForce": "GTC", "quantity": "0.001", "price": str(bid - 20),
                                                  "newClientOrderId": cid}, timeout=timeout)  # fmt: skip


async def lookup(c: Client, cid: str):
    return await c.call("GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": cid})


def test_dropped_response_disconnects_but_the_order_exists():
    async def body(sim, http, c):
        await pause(http)
        await set_faults(http, order_fault_sequence=["ok", "drop"])
        first = await resting_buy(c, http, "first")
        with pytest.raises(httpx.RemoteProtocolError):
            await resting_buy(c, http, "lost-answer")
        after = await lookup(c, "lost-answer")  # a new connection: the pool replaced the dropped one
        third = await resting_buy(c, http, "third")
        return first, after, third, sim.stats()["faults"]["order_faults"]

    first, after, third, n_faults = running(body)
    assert first[0] == 200 and third[0] == 200, "only the second request was faulted"
    assert after[0] == 200 and after[2]["status"] == "NEW" and after[2]["clientOrderId"] == "lost-answer"
    assert n_faults == 1


def test_dropped_cancel_still_cancels():
    async def body(sim, http, c):
        await pause(http)
        placed = await resting_buy(c, http, "to-cancel")
        await set_faults(http, order_fault_sequence=["drop"])
        with pytest.raises(httpx.RemoteProtocolError):
            await c.call("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "to-cancel"})
        return placed, await lookup(c, "to-cancel")

    placed, after = running(body)
    assert placed[0] == 200 and after[2]["status"] == "CANCELED"


def test_hung_answer_times_the_client_out_and_the_order_exists_then_504_for_a_patient_client():
    async def body(sim, http, c):
        await pause(http)
        await set_faults(http, order_fault_sequence=["hang", "hang"], order_hang_s=1.0)
        with pytest.raises(httpx.ReadTimeout):
            await resting_buy(c, http, "impatient", timeout=0.3)
        found = await lookup(c, "impatient")
        t0 = time.monotonic()
        patient = await resting_buy(c, http, "patient", timeout=10)
        return found, patient, time.monotonic() - t0, await lookup(c, "patient")

    found, patient, waited, patient_order = running(body)
    assert found[0] == 200 and found[2]["status"] == "NEW"
    expect(patient, 504, -1007, "Timeout waiting for response from backend server. Send status unknown; "
                                "execution status unknown.")
    assert waited >= 0.9
    assert patient_order[0] == 200, "executed although the answer said unknown"


@pytest.mark.parametrize("status, code", [(500, -1001), (502, -1007), (503, -1008), (504, -1007)])
def test_5xx_answer_means_unknown_and_the_order_was_placed(status, code):
    async def body(sim, http, c):
        await pause(http)
        await set_faults(http, order_fault_sequence=[str(status)])
        return await resting_buy(c, http, "five"), await lookup(c, "five")

    answer, found = running(body)
    expect(answer, status, code)
    assert found[0] == 200 and found[2]["status"] == "NEW"


def test_429_and_418_refuse_the_order_before_the_engine():
    async def body(sim, http, c):
        await pause(http)
        await set_faults(http, order_fault_sequence=["429", "418"], retry_after_s=7)
        too_many = await resting_buy(c, http, "r429")
        banned = await resting_buy(c, http, "r418")
        return too_many, banned, await lookup(c, "r429"), await lookup(c, "r418")

    too_many, banned, l429, l418 = running(body)
    body429 = expect(too_many, 429, -1015)
    assert body429["msg"].startswith("Too many new orders; current limit is ")
    assert too_many[1]["Retry-After"] == "7"
    expect(banned, 418, -1003)
    assert banned[1]["Retry-After"] == "7"
    expect(l429, 400, -2013)
    expect(l418, 400, -2013)


def test_rest_status_sequence_answers_before_the_handler_so_nothing_is_placed():
    async def body(sim, http, c):
        await pause(http)
        bid = Decimal((await depth(http))["bids"][0][0])
        await set_faults(http, rest_status_sequence=[503])
        return await resting_buy(c, http, "early", bid=bid), await lookup(c, "early")

    answer, found = running(body)
    assert answer[0] == 503
    expect(found, 400, -2013)


def test_delayed_ack_arrives_after_the_user_data_events():
    async def body(sim, http, c):
        await pause(http)
        seen: list[float] = []
        sim.orders.add_listener("main", lambda ev: seen.append(time.monotonic()))
        await set_faults(http, order_ack_delay_ms=300)
        t0 = time.monotonic()
        answer = await resting_buy(c, http, "slow")
        return answer, t0, time.monotonic(), seen

    answer, t0, t1, seen = running(body)
    assert answer[0] == 200
    assert t1 - t0 >= 0.3
    assert seen and seen[0] - t0 < t1 - t0 - 0.2, "the events went out before the answer"


def test_configured_order_faults_apply_from_start():
    async def body(sim, http, c):
        await pause(http)
        return await resting_buy(c, http, "cfg")

    expect(running(body, faults={"order_fault_sequence": ["503"]}), 503, -1008)


@pytest.mark.parametrize("skew_ms, msg", [
    (-10_000, "Timestamp for this request was 1000ms ahead of the server's time."),
    (10_000, "Timestamp for this request is outside of the recvWindow."),
])
def test_clock_skew_rejects_unsynced_clients_and_a_synced_client_passes(skew_ms, msg):
    async def body(sim, http, c):
        server = (await http.get("/api/v3/time")).json()["serverTime"]
        unsynced = await c.call("GET", "/api/v3/account")
        c.offset_ms = server - now_ms()
        synced = await c.call("GET", "/api/v3/account")
        info = (await http.get("/api/v3/exchangeInfo")).json()["serverTime"]
        return server - now_ms(), unsynced, synced, info - now_ms()

    offset, unsynced, synced, info_offset = running(body, faults={"clock_skew_ms": skew_ms})
    assert abs(offset - skew_ms) < 1000 and abs(info_offset - skew_ms) < 1000
    expect(unsynced, 400, -1021, msg)
    assert synced[0] == 200


def test_clock_skew_set_at_runtime():
    async def body(sim, http, c):
        ok = await c.call("GET", "/api/v3/account")
        await set_faults(http, clock_skew_ms=-5000)
        return ok, await c.call("GET", "/api/v3/account")

    ok, skewed = running(body)
    assert ok[0] == 200
    expect(skewed, 400, -1021)

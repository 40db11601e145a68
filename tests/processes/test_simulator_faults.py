"""Each injected fault does what it says, seen from a real client over loopback."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from processes.simulator.config import FaultConfig
from processes.simulator.faults import ACT_ABORT, ACT_CLOSE, ACT_SEND, ConnectionFaults, FaultStats
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

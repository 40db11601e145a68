"""Replay mode over loopback: recorded frames byte for byte, recorded snapshots on request."""

from __future__ import annotations

import time

import aiohttp
import orjson

from core.recordings import KIND_EXCHANGE_INFO, KIND_SNAPSHOT, KIND_WS, RecordingWriter, iter_frames, iter_recording_dir
from processes.simulator import Simulator, SimulatorConfig
from simulator_helpers import RefBook, arun, get_json

CLOSING = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def _replay_sim(paths, speed=0.0) -> Simulator:
    cfg = SimulatorConfig.from_dict({"port": 0, "replay": [str(p) for p in paths], "replay_speed": speed})
    return Simulator(cfg, [])


async def _receive_n(ws, n: int, timeout: float = 20.0) -> list[bytes]:
    out = []
    while len(out) < n:
        msg = await ws.receive(timeout=timeout)
        assert msg.type not in CLOSING, f"connection ended after {len(out)} of {n} frames"
        assert msg.type == aiohttp.WSMsgType.TEXT
        out.append(msg.data.encode())
    return out


def test_hftbacktest_replay_serves_frames_and_snapshot_byte_for_byte_and_the_book_syncs(shared_data):
    path = shared_data / "hftbacktest" / "ethusdt_20240808.gz"
    frames = list(iter_frames(path))
    expected = [f.payload for f in frames if f.kind == KIND_WS]
    recorded_snap = next(f.payload for f in frames if f.kind == KIND_SNAPSHOT)
    streams = sorted({orjson.loads(p)["stream"] for p in expected})
    assert streams == ["ethusdt@bookTicker", "ethusdt@depth@100ms", "ethusdt@trade"]

    async def body():
        async with _replay_sim([path]) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/stream?streams={'/'.join(streams)}") as ws:
                first = await _receive_n(ws, 1)
                # the client asks for the snapshot only now (after buffering): the recorded body comes back
                async with http.get(f"{sim.base_url}/api/v3/depth", params={"symbol": "ETHUSDT", "limit": "1000"}) as r:
                    assert r.status == 200
                    snap = await r.read()
                rest = await _receive_n(ws, len(expected) - 1)
            return first + rest, snap

    got, snap = arun(body())
    assert snap == recorded_snap
    assert len(got) == len(expected)
    assert got == expected, "every recorded frame, in order, byte for byte"
    book = RefBook()
    for raw in got:
        m = orjson.loads(raw)
        if m["stream"] == "ethusdt@depth@100ms":
            book.feed(m["data"])
    book.set_snapshot(orjson.loads(snap))  # procedure: buffered diffs, then the snapshot; raises on any gap
    assert book.applied == 3434 - 2  # SOURCES.md: the 2 diffs before the snapshot drop, the rest chain


def test_raw_client_gets_the_recorded_data_bytes(shared_data):
    path = shared_data / "hftbacktest" / "ethusdt_20240808.gz"
    envelopes = [f.payload for f in iter_frames(path) if f.kind == KIND_WS and f.payload.startswith(b'{"stream":"ethusdt@trade"')]

    async def body():
        async with _replay_sim([path]) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/ws/ethusdt@trade") as ws:
                return await _receive_n(ws, len(envelopes))

    got = arun(body())
    assert len(got) == 6106
    for raw, env in zip(got, envelopes):
        assert env == b'{"stream":"ethusdt@trade","data":' + raw + b"}"
        assert orjson.loads(raw)["e"] == "trade"


def test_cryptofeed_recording_replays_all_streams_snapshots_and_exchange_info(shared_data):
    folder = shared_data / "cryptofeed" / "2021-04-17_be4e5c8"
    frames = list(iter_recording_dir(folder, "BINANCE"))
    expected = [f.payload for f in frames if f.kind == KIND_WS and f.payload.startswith(b'{"stream":')]
    snaps = {f.symbol: f.payload for f in frames if f.kind == KIND_SNAPSHOT}
    info = next(f.payload for f in frames if f.kind == KIND_EXCHANGE_INFO)
    streams = sorted({orjson.loads(p)["stream"] for p in expected})
    assert len(snaps) == 10 and len(streams) > 20

    async def body():
        async with _replay_sim([folder]) as sim, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.ws_url}/stream?streams={'/'.join(streams)}") as ws:
                got = await _receive_n(ws, len(expected))
            served = {}
            for sym in snaps:
                async with http.get(f"{sim.base_url}/api/v3/depth", params={"symbol": sym}) as r:
                    served[sym] = await r.read()
            async with http.get(f"{sim.base_url}/api/v3/exchangeInfo") as r:
                served_info = await r.read()
            status, _, unknown = await get_json(http, f"{sim.base_url}/api/v3/depth", symbol="NOPEUSDT")
            return got, served, served_info, (status, unknown)

    got, served, served_info, unknown = arun(body())
    assert got == expected
    assert served == snaps, "each symbol's recorded snapshot body, byte for byte"
    assert served_info == info
    assert unknown == (400, {"code": -1121, "msg": "Invalid symbol."})


def test_own_recording_plays_at_recorded_speed_and_as_fast_as_possible(tmp_path):
    base_ns = 1_700_000_000_000_000_000
    payloads = [
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"61000.00000000",'
        b'"q":"0.01000000","T":%d,"m":true,"M":true}}' % (1700000000000 + i * 100, 10 + i, 1700000000000 + i * 100)
        for i in range(5)
    ]
    snapshot = b'{"lastUpdateId":42,"bids":[["61000.00000000","1.00000000"]],"asks":[["61000.01000000","2.00000000"]]}'
    with RecordingWriter(tmp_path, "sim-test") as w:
        w.write(base_ns, "depth_snapshot", snapshot, "BTCUSDT")
        for i, p in enumerate(payloads):
            w.write(base_ns + i * 150_000_000, "ws", p, "BTCUSDT")  # 150 ms apart

    async def body(speed):
        async with _replay_sim([tmp_path], speed=speed) as sim, aiohttp.ClientSession() as http:
            # playback starts when the first client subscribes, so not before t0: the last frame
            # (600 ms after the first in the recording) cannot arrive before t0 + 0.6 s at speed 1
            t0 = time.monotonic()
            async with http.ws_connect(f"{sim.ws_url}/stream?streams=btcusdt@trade") as ws:
                got = await _receive_n(ws, 5)
                t_end = time.monotonic()
            async with http.get(f"{sim.base_url}/api/v3/depth", params={"symbol": "BTCUSDT"}) as r:
                snap = await r.read()
            return got, t_end - t0, snap

    got, span, snap = arun(body(1.0))
    assert got == payloads and snap == snapshot
    # a lower bound only (the recorded spacing is the behaviour; a loaded host may take longer)
    assert span >= 0.6 - 0.005, "4 gaps of 150 ms at recorded speed"
    got_fast, _, _ = arun(body(0.0))
    assert got_fast == payloads

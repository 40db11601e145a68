"""The feed client (picows + httpx) against the in-process simulator, over real loopback sockets.

Every test runs ``FeedClient`` against ``processes.simulator.Simulator`` on
port 0: generated markets, replays of real Binance recordings from
``../shared/data``, and injected faults (disconnects, serverShutdown, 429/418,
malformed frames). Records the feed publishes are compared with what
``core.decode.Decoder`` gives for the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from core.decode import Decoder
from core.recordings import KIND_SNAPSHOT, KIND_WS, RecordingWriter, iter_frames, list_recording_files
from core.records import (
    FLAG_BEGIN,
    FLAG_END,
    MD_AGG_TRADE,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_EVENT,
    MD_SNAP_ASK,
    MD_SNAP_BEGIN,
    MD_SNAP_BID,
    MD_SNAP_END,
    MD_STATUS,
    MD_TICKER_ASK,
    MD_TICKER_BID,
    MD_TRADE,
    STATUS_RECONNECTED,
)
from processes.feed_client import FeedClient, FeedSettings, depth_weight
from processes.simulator import Simulator
from processes.simulator.replay import split_ws_frame
from simulator_helpers import arun, make_cfg, sim_for, specs

SNAP_KINDS = (MD_SNAP_BEGIN, MD_SNAP_BID, MD_SNAP_ASK, MD_SNAP_END)
DEPTH_KINDS = (MD_DEPTH_BID, MD_DEPTH_ASK, MD_DEPTH_NONE)
# every field but the two clocks (recv_ns differs between a live run and a replay; pub_ns always)
CONTENT = ["exch_ms", "first_id", "last_id", "price", "qty", "symbol", "kind", "flags", "aux"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class Collector:
    """The ``publish`` callback: keeps every published chunk (copied; the feed reuses its buffer)."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def __call__(self, recs: np.ndarray) -> None:
        self.chunks.append(recs.copy())

    def all(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, MD_EVENT)


class MaxRng(random.Random):
    """Backoff jitter always at its upper bound: a test that must not back off would time out."""

    def uniform(self, a, b):
        return b


def settings_for(sim: Simulator, symbols=("BTCUSDT", "ETHUSDT"), **kw) -> FeedSettings:
    d = dict(ws_url=sim.ws_url, rest_url=sim.base_url, symbols=tuple(symbols), reconnect_base_s=0.05,
             reconnect_cap_s=0.2, snapshot_wait_first_diff_s=0.5, rest_retry_base_s=0.05, healthy_after_s=5.0)
    d.update(kw)
    return FeedSettings(**d)


async def wait_until(pred, timeout: float, what: str, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


@contextlib.asynccontextmanager
async def running_feed(settings: FeedSettings, **kw):
    """A FeedClient running in a task; stopped (and its errors raised) on exit."""
    col = Collector()
    fc = FeedClient(settings, col, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(fc.run(stop))
    try:
        yield fc, col
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)  # re-raises anything run() raised


def ws_records(recs: np.ndarray) -> np.ndarray:
    """The records that came from WebSocket frames (no status, no snapshot)."""
    k = recs["kind"]
    return recs[(k != MD_STATUS) & ~np.isin(k, SNAP_KINDS)]


def snapshot_blocks(col: Collector, sid: int) -> list[np.ndarray]:
    """Published snapshots of symbol ``sid``, each as the one chunk it was published in."""
    return [c for c in col.chunks if len(c) and c["kind"][0] == MD_SNAP_BEGIN and c["symbol"][0] == sid]


def decode_all(decoder: Decoder, frames) -> np.ndarray:
    out = decoder.new_out()
    parts = []
    for payload, recv_ns in frames:
        n = decoder.decode(payload, recv_ns, out)
        parts.append(out[:n].copy())
    return np.concatenate(parts) if parts else np.zeros(0, MD_EVENT)


def assert_same_content(got: np.ndarray, want: np.ndarray) -> None:
    assert len(got) == len(want), f"{len(got)} records published, {len(want)} expected"
    for f in CONTENT:
        bad = np.flatnonzero(got[f] != want[f])
        assert not len(bad), f"field {f} differs first at record {bad[0]}: {got[bad[0]]} vs {want[bad[0]]}"


def check_chain(recs: np.ndarray, sid: int, after_snapshot: int = 0) -> int:
    """Binance's sync rules on the feed's output for one symbol, from its ``after_snapshot``-th snapshot.

    Returns how many diffs were applied. Raises AssertionError on a bridge or chain violation.
    """
    mine = recs[recs["symbol"] == sid]
    begins = np.flatnonzero(mine["kind"] == MD_SNAP_BEGIN)
    assert len(begins) > after_snapshot, f"symbol {sid}: no snapshot #{after_snapshot}"
    b = begins[after_snapshot]
    last = int(mine["last_id"][b])
    # a book buffers the diffs of the current connection while it waits for the snapshot
    reconnects = np.flatnonzero((mine["kind"] == MD_STATUS) & (mine["aux"] == STATUS_RECONNECTED))
    start = reconnects[reconnects < b][-1] if np.any(reconnects < b) else 0
    diffs = mine[start:]
    diffs = diffs[np.isin(diffs["kind"], DEPTH_KINDS) & ((diffs["flags"] & FLAG_BEGIN) != 0)]
    applied, prev_u = 0, None
    for U, u in zip(diffs["first_id"].tolist(), diffs["last_id"].tolist()):
        if u <= last and prev_u is None:
            continue  # before the snapshot: dropped, as Binance says
        if prev_u is None:
            assert U <= last + 1 <= u, f"symbol {sid}: first diff U={U} u={u} does not bridge lastUpdateId={last}"
        else:
            assert U == prev_u + 1, f"symbol {sid}: gap, U={U} after u={prev_u}"
        prev_u = u
        applied += 1
    return applied


def check_message_framing(recs: np.ndarray) -> None:
    """Every diff message is FLAG_BEGIN ... FLAG_END with one (U, u) throughout."""
    d = recs[np.isin(recs["kind"], DEPTH_KINDS)]
    begins = np.flatnonzero(d["flags"] & FLAG_BEGIN)
    ends = np.flatnonzero(d["flags"] & FLAG_END)
    assert len(begins) == len(ends) and np.all(begins <= ends)
    assert np.all(begins[1:] == ends[:-1] + 1)
    for b, e in zip(begins, ends):
        assert len(set(d["last_id"][b : e + 1].tolist())) == 1


def check_snapshot_block(block: np.ndarray) -> None:
    k = block["kind"]
    assert k[0] == MD_SNAP_BEGIN and k[-1] == MD_SNAP_END
    levels = len(block) - 2
    assert block["aux"][0] == levels and block["aux"][-1] == levels
    assert np.all(np.isin(k[1:-1], (MD_SNAP_BID, MD_SNAP_ASK)))
    assert len(set(block["last_id"].tolist())) == 1 and len(set(block["symbol"].tolist())) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# real Binance recordings replayed by the simulator -> feed -> the decoder's records
# ---------------------------------------------------------------------------------------------
def _hft_excerpt(shared_data: Path, tmp_path: Path, lines: int = 5000) -> Path:
    """The first ``lines`` lines of the hftbacktest BTCUSDT recording (depth, trade, bookTicker + snapshot)."""
    dst = tmp_path / "btcusdt_excerpt.gz"  # the file name carries the snapshot's symbol in this format
    with gzip.open(shared_data / "hftbacktest" / "btcusdt_20240808.gz", "rb") as src, gzip.open(dst, "wb") as out:
        for _ in range(lines):
            out.write(src.readline())
    return dst


REPLAY_CASES = {
    # name: (recording, symbols, per-symbol streams, record kinds that must appear)
    "cryptofeed_depth_aggtrade_kline": (
        "cryptofeed/2021-04-04_2997020/BINANCE-ee25be.0", ("BTCUSDT", "ETHUSDT", "DOTUSDT"),
        ("depth@100ms", "aggTrade", "kline_1m"), {MD_DEPTH_BID, MD_DEPTH_ASK, MD_AGG_TRADE},
    ),
    "hftbacktest_depth_trade_bookticker": (
        None, ("BTCUSDT",), ("depth@100ms", "trade", "bookTicker"),
        {MD_DEPTH_BID, MD_DEPTH_ASK, MD_TRADE, MD_TICKER_BID, MD_TICKER_ASK},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REPLAY_CASES))
def test_replayed_binance_session_publishes_exactly_the_decoders_records(case, shared_data, tmp_path):
    rel, symbols, streams, kinds = REPLAY_CASES[case]
    path = shared_data / rel if rel else _hft_excerpt(shared_data, tmp_path)
    frames = list(iter_frames(path))
    ws = [(f.payload, f.recv_ns) for f in frames if f.kind == KIND_WS and split_ws_frame(f.payload)]
    snaps = {f.symbol: f.payload for f in frames if f.kind == KIND_SNAPSHOT}
    assert set(snaps) == set(symbols)

    async def body():
        cfg = make_cfg(replay=[str(path)], replay_speed=0)
        async with Simulator(cfg, specs(cfg, symbols)) as sim:
            async with running_feed(settings_for(sim, symbols, streams=streams)) as (fc, col):
                await wait_until(lambda: fc.stats.frames >= len(ws) and fc.stats.snapshots >= len(symbols),
                                 20, "the whole replay and one snapshot per symbol")
                await asyncio.sleep(0.1)  # nothing more may arrive
            return fc, col

    fc, col = arun(body(), 40)
    got = col.all()
    assert fc.stats.frames == len(ws) and fc.stats.connects == 1 and fc.stats.decode_errors == {}
    # the WebSocket records: exactly the decoder's, in the recorded order
    want = decode_all(Decoder(list(symbols)), ws)
    assert kinds <= set(want["kind"].tolist())
    assert_same_content(ws_records(got), want)
    live = ws_records(got)
    assert np.all(live["recv_ns"] > 0) and np.all(live["exch_ms"][live["kind"] != MD_TICKER_BID] >= 0)
    if "kline_1m" in streams:
        assert fc.decoder.ignored["kline"] == sum(b'@kline_' in p[:40] for p, _ in ws) > 0
    ref = Decoder(list(symbols))
    out = ref.new_out()
    for sid, sym in enumerate(symbols):
        # STATUS_RECONNECTED comes first for every symbol, before any of its data
        first = got[got["symbol"] == sid][0]
        assert first["kind"] == MD_STATUS and first["aux"] == STATUS_RECONNECTED
        # the snapshot: one chunk, SNAP_BEGIN..SNAP_END, equal to decoding the recorded body
        blocks = snapshot_blocks(col, sid)
        assert len(blocks) == 1
        check_snapshot_block(blocks[0])
        n = ref.decode_snapshot(snaps[sym], sid, 1, out)
        assert_same_content(blocks[0], out[:n])
        assert check_chain(got, sid) > 100


# ---------------------------------------------------------------------------------------------
# generated market: sequencing, framing, resync on request
# ---------------------------------------------------------------------------------------------
def test_generated_stream_obeys_binance_sequencing_and_resync_requests_fetch_one_symbol():
    async def body():
        async with sim_for() as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, 10, "two snapshots")
                await asyncio.sleep(0.6)
                assert fc.request_resync("ETHUSDT") and not fc.request_resync("DOGEUSDT")
                assert not fc.request_resync(7)
                await wait_until(lambda: fc.stats.snapshots == 3, 5, "the requested snapshot")
                await asyncio.sleep(1.0)  # margin for a loaded machine: ~10 diffs per symbol
            return fc, col, sim.stats()

    fc, col, sim_stats = arun(body())
    got = col.all()
    assert sim_stats["rest"]["snapshots"] == 3 and fc.stats.snapshot_requests == 3
    assert len(snapshot_blocks(col, 0)) == 1 and len(snapshot_blocks(col, 1)) == 2
    for b in snapshot_blocks(col, 0) + snapshot_blocks(col, 1):
        check_snapshot_block(b)
    check_message_framing(ws_records(got))
    assert check_chain(got, 0) > 5 and check_chain(got, 1) > 5
    assert check_chain(got, 1, after_snapshot=1) > 2  # the resync snapshot bridges too
    assert fc.stats.frames == sim_stats["frames_sent"]
    assert fc.stats.records == len(got)


def test_pings_are_answered_so_the_exchange_keeps_the_connection():
    async def body():
        async with sim_for(ping_interval_s=0.15, pong_timeout_s=0.3) as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await asyncio.sleep(1.5)
            return fc, sim.stats()

    fc, st = arun(body())
    assert st["pings_sent"] >= 5
    assert st["pong_timeouts"] == 0 and st["connections"] == 1 and fc.stats.connects == 1


# ---------------------------------------------------------------------------------------------
# reconnects
# ---------------------------------------------------------------------------------------------
def test_dropped_connection_reconnects_resubscribes_and_resyncs_every_symbol():
    async def body():
        async with sim_for() as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, 10, "two snapshots")
                await asyncio.sleep(0.3)
                async with httpx.AsyncClient(base_url=sim.base_url) as http:
                    r = await http.post("/sim/disconnect")
                assert r.json() == {"disconnected": 1}
                await wait_until(lambda: fc.stats.connects == 2 and fc.stats.snapshots == 4, 10,
                                 "a reconnect and two new snapshots")
                await asyncio.sleep(1.0)  # margin for a loaded machine: ~10 diffs per symbol
            return fc, col, sim.stats()

    fc, col, st = arun(body())
    got = col.all()
    assert st["connections"] == 2 and fc.stats.disconnects >= 1
    status = got[got["kind"] == MD_STATUS]
    for sid in (0, 1):
        mine = got[got["symbol"] == sid]
        reconnected = np.flatnonzero((mine["kind"] == MD_STATUS) & (mine["aux"] == STATUS_RECONNECTED))
        begins = np.flatnonzero(mine["kind"] == MD_SNAP_BEGIN)
        assert len(reconnected) == 2 and len(begins) == 2
        # the second connection: status first, then its own snapshot, then a bridged chain
        assert reconnected[1] < begins[1]
        after = mine[reconnected[1]:]
        assert np.count_nonzero(np.isin(after["kind"], DEPTH_KINDS)) > 0  # resubscribed: diffs flow again
        assert check_chain(got, sid, after_snapshot=1) > 2
    assert len(status) == 4


def test_server_shutdown_notice_reconnects_at_once_without_backoff():
    async def body():
        async with sim_for() as sim:
            # any backoff would be the full 30 s: the test would time out
            async with running_feed(settings_for(sim, reconnect_base_s=30, reconnect_cap_s=30),
                                    rng=MaxRng()) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, 10, "two snapshots")
                async with httpx.AsyncClient(base_url=sim.base_url) as http:
                    assert (await http.post("/sim/shutdown_notice")).json() == {"notified": 1}
                t0 = time.monotonic()
                await wait_until(lambda: fc.stats.connects == 2, 3, "the reconnect")
                took = time.monotonic() - t0
                await wait_until(lambda: fc.stats.snapshots == 4, 5, "new snapshots")
            return fc, took, sim.stats()

    fc, took, st = arun(body())
    assert fc.stats.server_shutdowns == 1 and st["connections"] == 2
    assert took < 2.0


def test_connection_is_replaced_before_it_reaches_its_max_age():
    async def body():
        async with sim_for() as sim:
            s = settings_for(sim, max_connection_age_s=0.4, reconnect_base_s=30, reconnect_cap_s=30)
            async with running_feed(s, rng=MaxRng()) as (fc, col):
                await wait_until(lambda: fc.stats.connects >= 3, 4, "two planned reconnects")
            return fc, col

    fc, col = arun(body())
    assert fc.stats.age_reconnects >= 2
    got = col.all()
    assert np.count_nonzero((got["kind"] == MD_STATUS) & (got["aux"] == STATUS_RECONNECTED)) >= 3 * 2


def test_exchange_down_at_start_is_retried_until_it_comes_up():
    port = free_port()

    async def body():
        cfg = make_cfg(port=port)
        sim = Simulator(cfg, specs(cfg))
        s = FeedSettings(ws_url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}",
                         symbols=("BTCUSDT", "ETHUSDT"), reconnect_base_s=0.05, reconnect_cap_s=0.2,
                         snapshot_wait_first_diff_s=0.5)
        async with running_feed(s) as (fc, col):
            await wait_until(lambda: fc.stats.connect_failures >= 3, 5, "failed connects")
            assert fc.stats.connects == 0 and not fc.connected
            async with sim:
                await wait_until(lambda: fc.stats.connects == 1 and fc.stats.snapshots == 2, 10, "connect + snapshots")
        return fc

    fc = arun(body())
    assert fc.stats.connect_failures >= 3


def test_backoff_delay_is_full_jitter_under_a_capped_exponential():
    s = FeedSettings(ws_url="ws://x", rest_url="http://x", symbols=("BTCUSDT",), reconnect_base_s=0.5,
                     reconnect_cap_s=30.0)
    fc = FeedClient(s, lambda r: None, rng=random.Random(3))
    for attempt in range(12):
        bound = min(30.0, 0.5 * 2**attempt)
        d = np.array([fc.backoff_delay(attempt) for _ in range(2000)])
        assert d.min() >= 0.0 and d.max() <= bound
        assert d.min() < 0.05 * bound and d.max() > 0.95 * bound  # full jitter: the whole range is used
        assert 0.45 * bound < d.mean() < 0.55 * bound
    assert 0 <= fc.backoff_delay(10_000) <= 30.0  # no overflow on a very long outage


# ---------------------------------------------------------------------------------------------
# REST limits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [429, 418])
def test_rate_limit_answer_blocks_every_rest_call_until_retry_after_passes(status):
    async def body():
        cfg = make_cfg(faults={"rest_status_sequence": [status], "retry_after_s": 1})
        async with Simulator(cfg, specs(cfg)) as sim:
            times: list[float] = []

            async def watch():  # when the simulator saw each REST request
                seen = 0
                while True:
                    n = sim.rest_stats["requests"]
                    if n > seen:
                        times.extend([time.monotonic()] * (n - seen))
                        seen = n
                    await asyncio.sleep(0.002)

            w = asyncio.create_task(watch())
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, 10, "both snapshots")
            w.cancel()
            return fc, times, sim.stats()

    fc, times, st = arun(body())
    assert st["rest"][str(status)] == 1 and fc.stats.rest_rate_limited == 1
    assert len(times) == 3  # the refused call, then one per symbol
    # neither symbol's snapshot was asked for before Retry-After (1 s) had passed
    assert times[1] - times[0] >= 0.98, f"REST call {times[1] - times[0]:.3f}s after a {status} with Retry-After 1"


def test_snapshots_wait_for_the_next_minute_when_the_weight_budget_is_used():
    if time.time() % 60 > 55:  # keep the whole test inside one wall-clock minute
        time.sleep(61 - time.time() % 60)

    async def body():
        async with sim_for() as sim:
            # depth limit 1000 costs 50; budget 0.8 * 100 = 80: the second snapshot must wait
            s = settings_for(sim, rest_weight_limit_1m=100, snapshot_limit=1000)
            async with running_feed(s) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 1 and fc.stats.rest_weight_waits == 1, 10,
                                 "one snapshot, then a wait")
                await asyncio.sleep(1.0)
                return fc.stats.snapshot_requests, fc.stats.snapshots, sim.rest_stats["requests"], \
                    fc.stats.rest_used_weight_1m

    requests, snapshots, seen, used = arun(body())
    assert depth_weight(1000) == 50 and used == 50
    assert requests == 1 and snapshots == 1 and seen == 1


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_truncated_frames_are_counted_and_skipped_and_the_stream_stays_whole():
    async def body():
        async with sim_for(faults={"malformed_probability": 0.2}) as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, 10, "two snapshots")
                await asyncio.sleep(0.8)
                sim.source.paused = True
                await asyncio.sleep(0.4)  # the last (already generated) frames drain
                sim.set_faults({"malformed_probability": 0.0})
                await asyncio.sleep(0.3)
                assert fc.connected
            return fc, col, sim.stats()

    fc, col, st = arun(body())
    injected = st["faults"]["malformed"]
    assert injected > 10
    assert fc.stats.decode_errors == {"malformed_json": injected}
    assert fc.stats.connects == 1
    got = col.all()
    assert check_chain(got, 0) > 3 and check_chain(got, 1) > 3  # every real frame still arrived, in order


BAD_FRAMES = {
    # kind: a combined-stream frame on a subscribed stream (Binance shapes, one thing wrong)
    "unknown_symbol": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"XRPUSDT","t":1,"p":"1.0","q":"1.0","T":1,"m":true,"M":true}}',
    "bad_field_type": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":"1","p":"1.0","q":"1.0","T":1,"m":true,"M":true}}',
    "bad_number": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.0x","q":"1.0","T":1,"m":true,"M":true}}',
    "negative_qty": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1.0","q":"-1.0","T":1,"m":true,"M":true}}',
    "negative_price": b'{"stream":"btcusdt@bookTicker","data":{"u":5,"s":"BTCUSDT","b":"-1.0","B":"1.0","a":"2.0","A":"1.0"}}',
    "out_of_range": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9223372036854775808,"p":"1.0","q":"1.0","T":1,"m":true,"M":true}}',
    "missing_field": b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","p":"1.0","q":"1.0","T":1,"m":true,"M":true}}',
    "unknown_stream": b'{"stream":"btcusdt@trade","data":{"e":"somethingNew","E":1,"s":"BTCUSDT"}}',
}  # fmt: skip


def test_bad_frames_of_every_kind_are_counted_once_each_and_good_frames_still_decode(shared_data, tmp_path):
    src = _hft_excerpt(shared_data, tmp_path, lines=400)
    good = [f for f in iter_frames(src)]
    rec_dir = tmp_path / "bad"
    with RecordingWriter(rec_dir, "bad") as w:
        bad = iter(BAD_FRAMES.values())
        for i, f in enumerate(good):
            w.write(f.recv_ns, f.kind, f.payload, symbol=f.symbol if f.kind == KIND_SNAPSHOT else None)
            if i % 20 == 10:  # bad frames between good ones
                payload = next(bad, None)
                if payload is not None:
                    w.write(f.recv_ns, KIND_WS, payload)
    ws_good = [(f.payload, f.recv_ns) for f in good if f.kind == KIND_WS]

    async def body():
        cfg = make_cfg(replay=[str(rec_dir)], replay_speed=0)
        async with Simulator(cfg, specs(cfg, ["BTCUSDT"])) as sim:
            async with running_feed(settings_for(sim, ["BTCUSDT"])) as (fc, col):
                await wait_until(lambda: fc.stats.frames >= len(ws_good) + len(BAD_FRAMES), 15, "the replay")
                await wait_until(lambda: fc.stats.snapshots == 1, 5, "the snapshot")
                assert fc.connected
            return fc, col

    fc, col = arun(body(), 40)
    assert fc.stats.decode_errors == dict.fromkeys(BAD_FRAMES, 1)
    assert_same_content(ws_records(col.all()), decode_all(Decoder(["BTCUSDT"]), ws_good))


# ---------------------------------------------------------------------------------------------
# recording round trip: live -> file -> simulator replay -> feed == decoding the file
# ---------------------------------------------------------------------------------------------
def test_recorded_session_replayed_through_simulator_and_feed_gives_the_same_records(tmp_path):
    symbols = ("BTCUSDT", "ETHUSDT")

    async def record():
        writer = RecordingWriter(tmp_path, "md", rotate_bytes=200_000)  # small: the session spans several files
        async with sim_for() as sim:
            async with running_feed(settings_for(sim), recorder=writer) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, 10, "two snapshots")
                await asyncio.sleep(1.0)
        writer.close()
        return fc, col

    fc1, col1 = arun(record())
    files = list_recording_files(tmp_path, "md")
    assert len(files) >= 2
    frames = [f for p in files for f in iter_frames(p)]
    ws = [(f.payload, f.recv_ns) for f in frames if f.kind == KIND_WS]
    snaps = [f for f in frames if f.kind == KIND_SNAPSHOT]
    assert len(ws) == fc1.stats.frames and len(snaps) == 2

    # decoding the file directly gives exactly what the live feed published, receive times included
    direct = decode_all(Decoder(list(symbols)), ws)
    live = ws_records(col1.all())
    assert_same_content(live, direct)
    assert np.array_equal(live["recv_ns"], direct["recv_ns"])
    ref = Decoder(list(symbols))
    out = ref.new_out()
    direct_snaps = {}
    for f in snaps:
        n = ref.decode_snapshot(f.payload, symbols.index(f.symbol), f.recv_ns, out)
        direct_snaps[f.symbol] = out[:n].copy()
    for sid, sym in enumerate(symbols):
        (block,) = snapshot_blocks(col1, sid)
        assert_same_content(block, direct_snaps[sym])
        assert np.array_equal(block["recv_ns"], direct_snaps[sym]["recv_ns"])

    async def replay():
        cfg = make_cfg(replay=[str(tmp_path)], replay_speed=0)
        async with Simulator(cfg, specs(cfg, symbols)) as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.frames >= len(ws) and fc.stats.snapshots == 2, 15, "the replay")
                await asyncio.sleep(0.1)
            return fc, col

    fc2, col2 = arun(replay(), 40)
    assert fc2.stats.frames == len(ws)
    assert_same_content(ws_records(col2.all()), direct)
    for sid, sym in enumerate(symbols):
        (block,) = snapshot_blocks(col2, sid)
        assert_same_content(block, direct_snaps[sym])

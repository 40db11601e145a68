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
    STATUS_SNAPSHOT_FAILED,
)
from processes.feed_client import SNAPSHOT_ATTEMPTS, FeedClient, FeedSettings, depth_weight
from processes.simulator import Simulator
from processes.simulator.replay import split_ws_frame
from simulator_helpers import arun, make_cfg, sim_for, specs

SNAP_KINDS = (MD_SNAP_BEGIN, MD_SNAP_BID, MD_SNAP_ASK, MD_SNAP_END)
DEPTH_KINDS = (MD_DEPTH_BID, MD_DEPTH_ASK, MD_DEPTH_NONE)
# every field but the two clocks (recv_ns differs between a live run and a replay; pub_ns always)
CONTENT = ["exch_ms", "first_id", "last_id", "price", "qty", "symbol", "kind", "flags", "aux"]
# how long a test waits for a condition before it fails: generous, because the test host is a
# loaded 2-CPU machine; tests wait for what they need to see, never for a fixed time
DEADLINE = 30.0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class Collector:
    """The ``publish`` callback: keeps every published chunk (copied; the feed reuses its buffer).

    For each status chunk it also notes when it came (CLOCK_MONOTONIC s) and, once ``client`` is
    set, the client's counters at that moment (``statuses``: (time, aux, FeedStats.as_dict())).
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.client: FeedClient | None = None
        self.statuses: list[tuple[float, int, dict]] = []

    def __call__(self, recs: np.ndarray) -> None:
        self.chunks.append(recs.copy())
        if len(recs) and recs["kind"][0] == MD_STATUS:
            stats = self.client.stats.as_dict() if self.client is not None else {}
            self.statuses.append((time.monotonic(), int(recs["aux"][0]), stats))

    def all(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, MD_EVENT)


class MaxRng(random.Random):
    """Backoff jitter always at its upper bound: a test that must not back off would time out.

    ``draws`` counts the backoff delays drawn (a reconnect that must not back off draws none).
    """

    draws = 0

    def uniform(self, a, b):
        self.draws += 1
        return b


class BoundsRng(random.Random):
    """Backoff jitter of at most 10 ms; records (upper bound, CLOCK_MONOTONIC s) of every draw."""

    def __init__(self) -> None:
        super().__init__(0)
        self.draws: list[tuple[float, float]] = []

    def uniform(self, a, b):
        self.draws.append((b, time.monotonic()))
        return min(b, 0.01)


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
    col.client = fc
    stop = asyncio.Event()
    task = asyncio.create_task(fc.run(stop))
    try:
        yield fc, col
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)  # re-raises anything run() raised


def ws_records(recs: np.ndarray) -> np.ndarray:
    """The records that came from WebSocket frames (no status, no snapshot)."""
    k = recs["kind"]
    return recs[(k != MD_STATUS) & ~np.isin(k, SNAP_KINDS)]


def diffs_after_snapshot(col: Collector, sid: int, snapshot_no: int = 0) -> int:
    """Diff messages of symbol ``sid`` published after its ``snapshot_no``-th snapshot (0 before it)."""
    recs = col.all()
    mine = recs[recs["symbol"] == sid]
    begins = np.flatnonzero(mine["kind"] == MD_SNAP_BEGIN)
    if len(begins) <= snapshot_no:
        return 0
    after = mine[begins[snapshot_no]:]
    return int(np.count_nonzero(np.isin(after["kind"], DEPTH_KINDS) & ((after["flags"] & FLAG_BEGIN) != 0)))


def status_positions(recs: np.ndarray, sid: int, code: int) -> np.ndarray:
    """Indices, among symbol ``sid``'s records, of its MD_STATUS records with ``code``."""
    mine = recs[recs["symbol"] == sid]
    return np.flatnonzero((mine["kind"] == MD_STATUS) & (mine["aux"] == code))


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
                                 DEADLINE, "the whole replay and one snapshot per symbol")
                await asyncio.sleep(0.1)  # nothing more may arrive
            return fc, col

    fc, col = arun(body(), 3 * DEADLINE)
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
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "two snapshots")
                await wait_until(lambda: min(diffs_after_snapshot(col, 0), diffs_after_snapshot(col, 1)) >= 8,
                                 DEADLINE, "diffs after both snapshots", step=0.05)
                assert fc.request_resync("ETHUSDT") and not fc.request_resync("DOGEUSDT")
                assert not fc.request_resync(7)
                await wait_until(lambda: fc.stats.snapshots == 3, DEADLINE, "the requested snapshot")
                await wait_until(lambda: diffs_after_snapshot(col, 1, snapshot_no=1) >= 5, DEADLINE,
                                 "diffs after the resync snapshot", step=0.05)
                # stop the market: every frame sent must arrive, and be counted
                sim.source.paused = True
                await wait_until(lambda: fc.stats.frames == sim.stats()["frames_sent"], DEADLINE,
                                 "every frame the simulator sent to arrive")
                sim_stats = sim.stats()
            return fc, col, sim_stats

    fc, col, sim_stats = arun(body(), 3 * DEADLINE)
    got = col.all()
    assert sim_stats["rest"]["snapshots"] == 3 and fc.stats.snapshot_requests == 3
    assert len(snapshot_blocks(col, 0)) == 1 and len(snapshot_blocks(col, 1)) == 2
    for b in snapshot_blocks(col, 0) + snapshot_blocks(col, 1):
        check_snapshot_block(b)
    check_message_framing(ws_records(got))
    assert check_chain(got, 0) > 5 and check_chain(got, 1) > 5
    assert check_chain(got, 1, after_snapshot=1) > 2  # the resync snapshot bridges too
    assert fc.stats.records == len(got)


def test_pings_are_answered_so_the_exchange_keeps_the_connection():
    # the simulator notes each pong (a connection without one for pong_timeout_s + ping_interval_s
    # is dropped; the timeout is long here so a stalled test host cannot drop the feed)
    async def body():
        async with sim_for(ping_interval_s=0.2, pong_timeout_s=10) as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.connected and sim.stats()["clients"] == 1, DEADLINE, "the connection")
                (client,) = sim.hub.clients
                await wait_until(lambda: sim.stats()["pings_sent"] >= 3, DEADLINE, "three pings")
                seen = time.monotonic()
                # last_pong starts at the connect and moves only on a pong: the feed still answers
                await wait_until(lambda: client.last_pong > seen, DEADLINE, "a pong after the third ping")
            return fc, sim.stats()

    fc, st = arun(body(), 3 * DEADLINE)
    assert st["pings_sent"] >= 3
    assert st["pong_timeouts"] == 0 and st["connections"] == 1 and fc.stats.connects == 1


# ---------------------------------------------------------------------------------------------
# reconnects
# ---------------------------------------------------------------------------------------------
def test_dropped_connection_reconnects_resubscribes_and_resyncs_every_symbol():
    async def body():
        async with sim_for() as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "two snapshots")
                await wait_until(lambda: min(diffs_after_snapshot(col, 0), diffs_after_snapshot(col, 1)) >= 3,
                                 DEADLINE, "diffs after both snapshots", step=0.05)
                async with httpx.AsyncClient(base_url=sim.base_url) as http:
                    r = await http.post("/sim/disconnect")
                assert r.json() == {"disconnected": 1}
                await wait_until(lambda: fc.stats.connects == 2 and fc.stats.snapshots == 4, DEADLINE,
                                 "a reconnect and two new snapshots")
                await wait_until(lambda: min(diffs_after_snapshot(col, 0, 1), diffs_after_snapshot(col, 1, 1)) >= 5,
                                 DEADLINE, "diffs after the new snapshots", step=0.05)
            return fc, col, sim.stats()

    fc, col, st = arun(body(), 3 * DEADLINE)
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
    rng = MaxRng()

    async def body():
        async with sim_for() as sim:
            # any backoff would be drawn (counted) and last 120 s: the wait would time out first
            async with running_feed(settings_for(sim, reconnect_base_s=120, reconnect_cap_s=120),
                                    rng=rng) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "two snapshots")
                async with httpx.AsyncClient(base_url=sim.base_url) as http:
                    assert (await http.post("/sim/shutdown_notice")).json() == {"notified": 1}
                await wait_until(lambda: fc.stats.connects == 2, DEADLINE, "the reconnect")
                await wait_until(lambda: fc.stats.snapshots == 4, DEADLINE, "new snapshots")
            return fc, sim.stats()

    fc, st = arun(body(), 3 * DEADLINE)
    assert fc.stats.server_shutdowns == 1 and st["connections"] == 2
    assert rng.draws == 0, "the reconnect after serverShutdown drew a backoff delay"


def test_connection_is_replaced_before_it_reaches_its_max_age():
    rng = MaxRng()

    async def body():
        async with sim_for() as sim:
            s = settings_for(sim, max_connection_age_s=0.4, reconnect_base_s=120, reconnect_cap_s=120)
            async with running_feed(s, rng=rng) as (fc, col):
                await wait_until(lambda: fc.stats.connects >= 3, DEADLINE, "two planned reconnects")
                draws = rng.draws
            return fc, col, draws

    fc, col, draws = arun(body(), 3 * DEADLINE)
    assert fc.stats.age_reconnects >= 2
    assert draws == 0, "a planned reconnect drew a backoff delay"
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
            await wait_until(lambda: fc.stats.connect_failures >= 3, DEADLINE, "failed connects")
            assert fc.stats.connects == 0 and not fc.connected
            async with sim:
                await wait_until(lambda: fc.stats.connects == 1 and fc.stats.snapshots == 2, DEADLINE,
                                 "connect + snapshots")
        return fc

    fc = arun(body(), 3 * DEADLINE)
    assert fc.stats.connect_failures >= 3


class HeldSnapshotSim(Simulator):
    """The simulator, holding its first GET /api/v3/depth until ``release`` is set: a snapshot in flight."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.release = asyncio.Event()
        self.held: list[str] = []  # the symbol of every depth request, in arrival order

    async def _depth(self, request):
        self.held.append(request.query.get("symbol", ""))
        if len(self.held) == 1:
            await self.release.wait()
        return await super()._depth(request)


def test_snapshot_in_flight_across_a_reconnect_is_discarded_and_fetched_again_on_the_new_stream():
    async def body():
        cfg = make_cfg()
        sim = HeldSnapshotSim(cfg, specs(cfg))
        async with sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: len(sim.held) == 1, DEADLINE, "the first snapshot request")
                assert fc.stats.snapshots == 0
                sim.hub.disconnect_all()  # the stream drops while the snapshot is in flight
                await wait_until(lambda: fc.stats.connects == 2, DEADLINE, "the reconnect")
                sim.release.set()  # the old connection's snapshot arrives now, after the new stream began
                await wait_until(lambda: fc.stats.snapshots_discarded == 1 and fc.stats.snapshots == 2, DEADLINE,
                                 "the stale snapshot discarded, both symbols snapshotted again")
                await wait_until(lambda: min(diffs_after_snapshot(col, 0), diffs_after_snapshot(col, 1)) >= 5,
                                 DEADLINE, "diffs after the new snapshots", step=0.05)
            return fc, col, sim.held

    fc, col, held = arun(body(), 3 * DEADLINE)
    got = col.all()
    stale = fc.symbol_ids[held[0]]
    assert fc.stats.snapshot_requests == len(held) == 3 and fc.stats.snapshots_discarded == 1
    assert held.count(held[0]) == 2, "the symbol whose snapshot went stale was asked for again"
    for sid in (0, 1):
        mine = got[got["symbol"] == sid]
        reconnected = status_positions(got, sid, STATUS_RECONNECTED)
        snap = np.flatnonzero(np.isin(mine["kind"], SNAP_KINDS))
        assert len(reconnected) == 2
        # the stale snapshot was never published: the one snapshot of each symbol comes after the new
        # connection's status, from a request made on the new connection, and the new stream bridges it
        assert len(snapshot_blocks(col, sid)) == 1
        assert snap.min() > reconnected[1]
        assert check_chain(got, sid) > 2


def test_backoff_starts_again_from_the_initial_delay_after_a_healthy_connection():
    port = free_port()
    base, cap, healthy = 0.05, 5.0, 1.0
    rng = BoundsRng()

    async def body():
        cfg = make_cfg(port=port)
        sim = Simulator(cfg, specs(cfg))
        s = FeedSettings(ws_url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}",
                         symbols=("BTCUSDT", "ETHUSDT"), reconnect_base_s=base, reconnect_cap_s=cap,
                         healthy_after_s=healthy, snapshot_wait_first_diff_s=0.5)
        async with running_feed(s, rng=rng) as (fc, col):
            # the exchange is down: each failed connect doubles the backoff bound
            await wait_until(lambda: fc.stats.connect_failures >= 3, DEADLINE, "failed connects")
            async with sim:
                await wait_until(lambda: fc.stats.connects == 1, DEADLINE, "the connect")
                # a connection dropped at once was not healthy: the bound keeps growing
                sim.hub.disconnect_all()
                await wait_until(lambda: fc.stats.connects == 2, DEADLINE, "the reconnect")
                # a connection that stayed up for healthy_after_s: the bound starts over
                await wait_until(lambda: time.monotonic() - col.statuses[-1][0] >= healthy + 0.2, DEADLINE,
                                 "a healthy period")
                sim.hub.disconnect_all()
                await wait_until(lambda: fc.stats.connects == 3, DEADLINE, "the second reconnect")
                draws = list(rng.draws)  # before the simulator stops (that drop would draw more)
                connected = [t for t, aux, _ in col.statuses if aux == STATUS_RECONNECTED]
        return draws, connected

    draws, connected = arun(body(), 3 * DEADLINE)
    assert len(connected) == 3  # one status chunk (every symbol) per connect
    connect_times = connected
    failures = [b for b, t in draws if t < connect_times[0]]
    drops = [(b, t) for b, t in draws if t >= connect_times[0]]
    assert len(failures) >= 3 and len(drops) == 2
    # the documented rule, replayed: bound = min(cap, base * 2**attempt); attempt + 1 per draw;
    # attempt = 0 when the connection that just ended lived >= healthy_after_s
    attempt = 0
    for k, (bound, t) in enumerate(draws):
        if t >= connect_times[0]:
            lived = t - max(c for c in connect_times if c <= t)
            if lived >= healthy:
                attempt = 0
        assert bound == pytest.approx(min(cap, base * 2**attempt)), f"draw {k}: bound {bound}, attempt {attempt}"
        attempt += 1
    assert max(failures) >= 4 * base  # the bound had grown ...
    assert drops[-1][0] == pytest.approx(base)  # ... and after the healthy connection it started over


def test_a_stream_cut_every_10_s_reconnects_from_the_initial_delay_every_time():
    """The default ``healthy_after_s`` is below the 10 s between cuts of scripts/chaos.py feed_disconnect: each
    connection counts as healthy, so every reconnect starts from ``reconnect_base_s``. At 30 s the bound
    doubled on every cut up to the 30 s cap, and the feed stayed down 11-25 s after a cut."""
    s = FeedSettings(ws_url="ws://x", rest_url="http://x", symbols=("BTCUSDT",))
    assert s.healthy_after_s < 10.0 <= s.reconnect_cap_s
    assert s.healthy_after_s >= 2 * s.reconnect_base_s  # a connection dropped at once still backs off


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
def answer_times(sim: Simulator) -> list[tuple[float, float, int]]:
    """(CLOCK_MONOTONIC s, wall-clock s, status) of every REST answer the simulator sends, as it sends it.

    An answer is prepared after its request arrived, so the time between a refusal and the next
    answer is at least the time between the refusal and the next request: a safe lower bound.
    """
    times: list[tuple[float, float, int]] = []

    async def note(request, response):
        if request.path.startswith("/api/"):
            times.append((time.monotonic(), time.time(), response.status))

    sim.app.on_response_prepare.append(note)
    return times


@pytest.mark.parametrize("status", [429, 418])
def test_rate_limit_answer_blocks_every_rest_call_until_retry_after_passes(status):
    async def body():
        cfg = make_cfg(faults={"rest_status_sequence": [status], "retry_after_s": 1})
        sim = Simulator(cfg, specs(cfg))
        times = answer_times(sim)
        async with sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "both snapshots")
            return fc, times, sim.stats()

    fc, times, st = arun(body(), 3 * DEADLINE)
    assert st["rest"][str(status)] == 1 and fc.stats.rest_rate_limited == 1
    assert [code for _, _, code in times] == [status, 200, 200]  # the refused call, then one per symbol
    # neither symbol's snapshot was asked for before Retry-After (1 s) had passed (a lower bound:
    # the duration is the behaviour here)
    gap = times[1][0] - times[0][0]
    assert gap >= 0.99, f"REST call {gap:.3f}s after a {status} with Retry-After 1"


def test_snapshot_failing_with_5xx_until_the_attempts_run_out_is_counted_reported_and_retried_later():
    async def body():
        faults = {"snapshot_fail_count": SNAPSHOT_ATTEMPTS, "snapshot_fail_status": 503}
        async with sim_for(faults=faults) as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "both snapshots, one after failing")
                await wait_until(lambda: min(diffs_after_snapshot(col, 0), diffs_after_snapshot(col, 1)) >= 5,
                                 DEADLINE, "diffs after both snapshots", step=0.05)
                assert fc.connected  # a failing REST endpoint never drops the stream
            return fc, col, sim.stats()

    fc, col, st = arun(body(), 3 * DEADLINE)
    got = col.all()
    assert st["faults"]["snapshot_failures"] == SNAPSHOT_ATTEMPTS
    assert fc.stats.snapshot_failures == SNAPSHOT_ATTEMPTS and fc.stats.snapshot_requests == SNAPSHOT_ATTEMPTS + 2
    assert fc.stats.snapshots == 2 and fc.stats.connects == 1
    # one STATUS_SNAPSHOT_FAILED, published when the attempts ran out: not before, not after
    failed = [(aux, stats) for _, aux, stats in col.statuses if aux == STATUS_SNAPSHOT_FAILED]
    assert len(failed) == 1
    _, at = failed[0]
    assert at["snapshot_requests"] == at["snapshot_failures"] == SNAPSHOT_ATTEMPTS and at["snapshots"] == 0
    status = got[(got["kind"] == MD_STATUS) & (got["aux"] == STATUS_SNAPSHOT_FAILED)]
    (sid,) = status["symbol"].tolist()
    # the book of that symbol was told, then left to retry: its snapshot came later and bridges
    mine = got[got["symbol"] == sid]
    (told,) = status_positions(got, sid, STATUS_SNAPSHOT_FAILED)
    assert status_positions(got, sid, STATUS_RECONNECTED)[0] < told < np.flatnonzero(mine["kind"] == MD_SNAP_BEGIN)[0]
    for s in (0, 1):
        assert len(snapshot_blocks(col, s)) == 1
        check_snapshot_block(snapshot_blocks(col, s)[0])
        assert check_chain(got, s) > 2


def test_snapshots_wait_for_the_next_minute_when_the_weight_budget_is_used():
    # the client must still be in the first snapshot's minute when it wants the second one
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)

    async def body():
        sim = sim_for()
        times = answer_times(sim)
        async with sim:
            # depth limit 1000 costs 50; budget 0.8 * 100 = 80: the second snapshot must wait
            s = settings_for(sim, rest_weight_limit_1m=100, snapshot_limit=1000)
            async with running_feed(s) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 1 and fc.stats.rest_weight_waits == 1, DEADLINE,
                                 "one snapshot, then a wait")
                await asyncio.sleep(1.0)  # a window in which a second request would show
                return fc.stats, list(times)

    stats, times = arun(body(), 3 * DEADLINE)
    assert depth_weight(1000) == 50 and stats.rest_used_weight_1m == 50
    assert stats.rest_weight_waits == 1 and times and times[0][2] == 200
    # nothing more was asked in the first snapshot's wall-clock minute (Binance's weight window);
    # the next minute may have begun meanwhile on a slow host, and then the second snapshot may come
    first_minute = int(times[0][1] // 60)
    assert all(int(wall // 60) > first_minute for _, wall, _ in times[1:]), times
    assert stats.snapshot_requests == len(times) and stats.snapshots == len(times) <= 2


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_truncated_frames_are_counted_and_skipped_and_the_stream_stays_whole():
    async def body():
        async with sim_for(faults={"malformed_probability": 0.2}) as sim:
            async with running_feed(settings_for(sim)) as (fc, col):
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "two snapshots")
                await wait_until(lambda: sim.stats()["faults"]["malformed"] > 10
                                 and min(diffs_after_snapshot(col, 0), diffs_after_snapshot(col, 1)) >= 6,
                                 DEADLINE, "malformed frames and diffs after both snapshots", step=0.05)
                # no more faults from here: the injected count is final
                sim.set_faults({"malformed_probability": 0.0})
                sim.source.paused = True
                injected = sim.stats()["faults"]["malformed"]
                await wait_until(lambda: fc.stats.frames == sim.stats()["frames_sent"]
                                 and fc.stats.decode_errors.get("malformed_json", 0) >= injected, DEADLINE,
                                 "every frame sent, each injected malformed frame among them, to arrive")
                assert fc.connected
            return fc, col, sim.stats()

    fc, col, st = arun(body(), 3 * DEADLINE)
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
                await wait_until(lambda: fc.stats.frames >= len(ws_good) + len(BAD_FRAMES), DEADLINE, "the replay")
                await wait_until(lambda: fc.stats.snapshots == 1, DEADLINE, "the snapshot")
                assert fc.connected
            return fc, col

    fc, col = arun(body(), 3 * DEADLINE)
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
                await wait_until(lambda: fc.stats.snapshots == 2, DEADLINE, "two snapshots")
                # enough frames to rotate: the session must span several files
                await wait_until(lambda: fc.stats.bytes > 600_000, DEADLINE, "600 kB of frames", step=0.05)
        writer.close()
        return fc, col

    fc1, col1 = arun(record(), 3 * DEADLINE)
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
                await wait_until(lambda: fc.stats.frames >= len(ws) and fc.stats.snapshots == 2, DEADLINE,
                                 "the replay")
                await asyncio.sleep(0.1)  # nothing more may arrive
            return fc, col

    fc2, col2 = arun(replay(), 3 * DEADLINE)
    assert fc2.stats.frames == len(ws)
    assert_same_content(ws_records(col2.all()), direct)
    for sid, sym in enumerate(symbols):
        (block,) = snapshot_blocks(col2, sid)
        assert_same_content(block, direct_snaps[sym])

"""Feed stage: all market-data network I/O, published into the ``md`` ring.

The feed is driven by its own event loop (uvloop: it sleeps in epoll on its
socket, which is its wake-up), so it is a stage with ``drive()`` instead of
``do_work()`` and must be alone in its process (``core.config.LOOP_STAGES``);
heartbeats and commands are served from inside the loop.

``market_data.source`` picks the source:

``exchange`` (the default)
    ``processes.feed_client.FeedClient`` on uvloop: a picows combined-stream
    WebSocket to ``market_data.ws_url`` for every configured instrument and
    ``market_data.streams``, REST depth snapshots from ``market_data.rest_url``
    (httpx) when the book asks (``{"type": "resync", "symbol": <id>}``) and
    after every (re)connect. The same code talks to the local simulator
    (mode ``sim``), Binance mainnet market data (``config/binance-paper.json``)
    and the Spot Testnet (``config/binance-testnet.json``): only the URLs
    differ. ``market_data.recording_dir`` (when set) records every frame and
    snapshot body with its receive time to rotating gzip files
    (``core.recordings.RecordingWriter``, prefix ``md``); the simulator replays
    them (``simulator.replay``).
``synthetic``
    the seeded generator of ``processes.synthetic`` at the configured rate,
    one snapshot per symbol first and again on a resync command (offline
    latency profiling without sockets).

Publishing (both sources): ``pub_ns`` is stamped just before the records
become visible. The ``feed`` hop (pub_ns - recv_ns) gets one sample per
exchange message (a frame or a snapshot body: its records share both
stamps) from the exchange source, one per record from the synthetic one.
With the ``block`` policy a full ring makes the feed wait with its idle
strategy (counted in ``md_full``): nothing is dropped, the socket simply is
not read meanwhile. With ``overwrite`` it never waits (a lapped book resyncs).

The asyncio loop also serves the control plane every ``CONTROL_POLL_S``:
stop requests, resync / reconnect commands, and heartbeats with the feed's
counters (frames, records, reconnects, snapshots, decode errors by kind,
rate-limited answers, ``exch_time_reanchors``). Hostile frames (``core.hostile``:
unknown symbols, implausible exchange times, absurd values, wrong types,
truncated, oversized, non-UTF-8, JSON that is no Binance message) are
``decode_errors`` by kind (``core.decode``): counted, logged once per kind,
dropped; the socket keeps being read.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from core.decode import MAX_RECORDS_PER_FRAME, Decoder
from core.records import MD_EVENT, MD_STATUS
from processes.feed_client import FeedClient, FeedSettings
from processes.synthetic import SyntheticSource
from processes.stage import RingWriter, Stage
from ringbuffers.ring import FULL, Ring, segment_name

CONTROL_POLL_S = 0.002  # stop/commands are seen within a few ms even while the socket is quiet
STATS_EVERY_S = 0.1  # how often the counters are copied into ctx.stats (heartbeats send them)
RECORDING_PREFIX = "md"

# A real frame (hftbacktest BTCUSDT 2024-08-08) and a small REST body to load the numba decoders before ready.
_WARM_FRAME = (
    b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161260010,"s":"BTCUSDT","U":50093242069,'
    b'"u":50093242099,"b":[["61829.76000000","2.99683000"]],"a":[["61829.77000000","0.44378000"]]}}'
)
_WARM_SNAPSHOT = b'{"lastUpdateId":1,"bids":[["1.00000000","2.00000000"]],"asks":[["1.01000000","3.00000000"]]}'


# ---------------------------------------------------------------------------
# exchange source
# ---------------------------------------------------------------------------
class RingPublisher:
    """The feed's side of the ``md`` ring (single producer: this stage), on a ``RingWriter``.

    ``records(recs)`` is the ``FeedClient`` publish callback (status and
    snapshot records; every frame when the fast path is off);
    ``publish_frame`` / ``recent`` are its ``frame_sink`` (decode + publish in
    one numba call). Block policy: waits with the process's idle strategy
    while the ring is full, heartbeating, until it has room or a stop is
    requested (then the rest of that message is dropped: the pipeline is
    shutting down).
    """

    def __init__(self, ring: Ring, ctx, hop):
        self.ring = ring
        self.ctx = ctx
        self.hop = hop
        self.writer = RingWriter(ring, ctx, scratch=max(ring.capacity // 4, MAX_RECORDS_PER_FRAME))
        self.block = self.writer.block
        self.dropped_at_stop = 0  # records not published because a stop came while the ring was full
        self._slots64 = ring.slots.view(np.int64).reshape(ring.capacity, 8)
        self._mask = ring.capacity - 1

    @property
    def full_waits(self) -> int:
        return self.writer.full_waits

    def records(self, recs: np.ndarray) -> None:
        total = len(recs)
        done = self.writer.publish(recs)
        if done and recs["kind"][0] != MD_STATUS:  # status records have no frame behind them
            self.hop.record(int(recs["pub_ns"][0]) - int(recs["recv_ns"][0]))  # one sample per message, as for frames
        if done < total:
            self.dropped_at_stop += total - done

    def publish_frame(self, decoder: Decoder, payload: bytes, recv_ns: int) -> int:
        n = decoder.decode_publish(payload, recv_ns, self.ring)
        if n == FULL:
            while True:
                n = decoder.publish_pending(self.ring)
                if n != FULL:
                    break
                if not self.writer.wait():
                    return 0  # stopping; the decoder keeps the records pending, nobody reads them
        if n > 0:
            self.ring.notify()  # the decode kernel published from numba: wake a futex-waiting consumer
            # pub_ns was stamped in the kernel; read it back from our own last slot
            self.hop.record(int(self._slots64[(self.ring.published - 1) & self._mask, 1]) - recv_ns)
        return n

    def recent(self, n: int) -> np.ndarray:
        """Copies of the last ``n`` records this producer published (n <= capacity)."""
        end = self.ring.published
        idx = np.arange(end - n, end) & self._mask
        return self.ring.slots[idx]


def feed_settings(config) -> FeedSettings:
    md = config.market_data
    return FeedSettings(ws_url=md.ws_url, rest_url=md.rest_url, symbols=tuple(i.symbol for i in config.instruments),
                        streams=tuple(md.streams), snapshot_limit=md.snapshot_limit)


def make_recorder(config):
    """The frame recorder of ``market_data.recording_dir``, or None when recording is off."""
    md = config.market_data
    if not md.recording_dir:
        return None
    from core.recordings import RecordingWriter

    return RecordingWriter(md.recording_dir, RECORDING_PREFIX, rotate_bytes=md.recording_rotate_mb << 20,
                           rotate_seconds=md.recording_rotate_s)


def _warm(config, decoder: Decoder) -> None:
    """Load the decode kernels (disk cache) before ready, on a private scratch ring."""
    out = decoder.new_out()
    decoder.decode(_WARM_FRAME, 1, out)
    decoder.decode_snapshot(_WARM_SNAPSHOT, 0, 1, out)
    name = segment_name(config.instance, f"feed-warmup-{os.getpid()}")
    ring = Ring.create(name, MD_EVENT, capacity=64, consumers=1, policy="overwrite")
    try:
        decoder.decode_publish(_WARM_FRAME, 1, ring)
    finally:
        ring.close()
        ring.unlink()
    decoder.errors.update(dict.fromkeys(decoder.errors, 0))  # warm-up frames are not traffic
    decoder.reset_time_gate()  # ...and their (2024) exchange time must not be the gate's reference


def heartbeat_stats(client: FeedClient, pub: RingPublisher) -> dict:
    st = client.stats.as_dict()
    st["md_full"] = pub.full_waits
    st["dropped_at_stop"] = pub.dropped_at_stop
    st["fast_path_frames"] = client.decoder.fast
    st["slow_path_frames"] = client.decoder.slow
    st["exch_time_reanchors"] = client.decoder.time_reanchors
    return st


async def _control(ctx, client: FeedClient, pub: RingPublisher, stop: asyncio.Event) -> None:
    """Serve the control plane from inside the loop: stop, commands, counters."""
    next_stats = 0.0
    while not stop.is_set():
        if ctx.should_stop():
            stop.set()
            return
        for cmd in ctx.commands():
            kind = cmd.get("type")
            if kind == "resync":
                sym = cmd.get("symbol")
                if isinstance(sym, (int, str)) and not isinstance(sym, bool):
                    client.request_resync(sym)
                else:
                    ctx.log.warning("feed: resync command without a symbol id: %r", cmd)
            elif kind == "reconnect":
                client.reconnect_soon()
            else:
                ctx.log.warning("feed: unknown command %r ignored", kind)
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + STATS_EVERY_S
            ctx.heartbeat(**heartbeat_stats(client, pub))
        else:
            ctx.heartbeat()
        await asyncio.sleep(CONTROL_POLL_S)


async def _run_exchange(ctx, client: FeedClient, pub: RingPublisher) -> None:
    stop = asyncio.Event()
    control = asyncio.create_task(_control(ctx, client, pub, stop))
    try:
        await client.run(stop)
    finally:
        stop.set()
        await control


def run_exchange(config, ctx) -> None:
    ring = ctx.outputs["md"]
    pub = RingPublisher(ring, ctx, ctx.latency.hop("feed"))
    recorder = make_recorder(config)
    # the one-call decode+publish path needs room for any single message in the ring
    sink = pub if ring.capacity >= MAX_RECORDS_PER_FRAME else None
    client = FeedClient(feed_settings(config), pub.records, recorder=recorder, frame_sink=sink)
    _warm(config, client.decoder)
    if sink is None:
        ctx.log.info("feed: md ring capacity %d < %d: decoding and publishing in two steps", ring.capacity,
                     MAX_RECORDS_PER_FRAME)
    ctx.ready()
    if ctx.should_stop():
        return
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is a dependency; plain asyncio still works
        runner = asyncio.run
    try:
        runner(_run_exchange(ctx, client, pub))
    finally:
        if recorder is not None:
            recorder.close()
        ctx.stats.update(heartbeat_stats(client, pub))


# ---------------------------------------------------------------------------
# synthetic source (offline, no sockets)
# ---------------------------------------------------------------------------
def make_source(config) -> SyntheticSource:
    """The synthetic source for ``config`` (instrument filters from the file when given)."""
    syn = config.market_data.synthetic
    first = config.instruments[0]
    tick = first.tick_size or syn.tick_size
    lot = first.lot_size or syn.lot_size
    return SyntheticSource(len(config.instruments), rate_per_s=syn.rate_per_s, seed=syn.seed,
                           depth_levels=syn.depth_levels, start_price=syn.start_price, tick_size=tick, lot_size=lot)


def _publish_all(writer: RingWriter, recs, hop) -> None:
    """Publish a whole message (a snapshot), waiting while the ring is full."""
    k = writer.publish(recs)
    if k:
        hop.record_many(recs["pub_ns"][:k] - recs["recv_ns"][:k])


def run_synthetic(config, ctx) -> None:
    out = ctx.outputs["md"]
    writer = RingWriter(out, ctx, scratch=ctx.process.batch)
    hop = ctx.latency.hop("feed")
    src = make_source(config)
    scratch = np.zeros(16, MD_EVENT)
    src.generate(scratch, 16)  # warm the generator kernel before ready
    src = make_source(config)  # ...and restart from the seed
    batch = ctx.process.batch
    wrap = np.zeros(batch, MD_EVENT)  # scratch for a message that straddles the ring's wrap point
    ctx.ready()
    for sym in range(src.n_symbols):
        _publish_all(writer, src.snapshot(sym), hop)
    src.start()
    published = 0
    while not ctx.should_stop():
        for cmd in ctx.commands():
            if cmd.get("type") == "resync" and 0 <= int(cmd.get("symbol", -1)) < src.n_symbols:
                _publish_all(writer, src.snapshot(int(cmd["symbol"])), hop)
        n = min(src.due(), batch)
        k = 0
        if n >= 2:
            dst = out.claim(n)
            if dst is None:
                ctx.stats["md_full"] = ctx.stats.get("md_full", 0) + 1
            else:
                k = src.generate(dst, len(dst))
                if k == 0 and len(dst) < n:
                    # claim() stops at the wrap point and the generator writes whole
                    # messages only: a message that straddles the wrap goes through
                    # a scratch buffer and publish_batch, which wraps.
                    out.commit(0)
                    k = src.generate(wrap, n)
                    _publish_all(writer, wrap[:k], hop)
                    published += k
                    ctx.idle.idle(k)
                    ctx.heartbeat(published=published)
                    continue
                writer.commit(dst, True, k)
                hop.record_many(dst["pub_ns"][:k] - dst["recv_ns"][:k])
                published += k
        ctx.idle.idle(k)
        ctx.heartbeat(published=published)


class FeedStage(Stage):
    """The feed as a stage: ``drive()`` runs the source's loop until the process is told to stop."""

    def __init__(self, config, ctx):
        self.config = config
        self.ctx = ctx

    def drive(self) -> None:
        if self.config.market_data.source == "synthetic":
            run_synthetic(self.config, self.ctx)
        else:
            run_exchange(self.config, self.ctx)

    def do_work(self) -> int:  # never called: the feed is driven by its own loop (drive)
        raise RuntimeError("the feed stage is driven by its event loop; it cannot share a duty cycle")

    def counters(self) -> dict:
        return dict(self.ctx.stats)


def make_stage(config, ctx) -> FeedStage:
    return FeedStage(config, ctx)


def warm(config) -> None:
    """Load this worker's numba kernels from the disk cache without touching the pipeline's rings.

    Called by the supervisor's spare process (``processes.runtime.warm_all``)
    so a feed restarted from the spare is ready at once: the decoder kernels
    (exchange source, on a private scratch ring) or the generator kernel
    (synthetic source).
    """
    if config.market_data.source == "synthetic":
        make_source(config).generate(np.zeros(16, MD_EVENT), 16)
    else:
        _warm(config, Decoder([i.symbol for i in config.instruments]))

"""The feed worker (processes/feed.py): md ring publishing, control plane, and the whole system run.

In-process: the worker's asyncio loop with a real md ring, a stand-in
control plane (the ``StageContext`` contract of ``processes.stage``) and the simulator on
port 0. As a process: ``python -m processes.supervisor`` in sim mode with the
exchange feed and recording on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import load_config
from core.decode import Decoder
from core.latency import LatencySet
from core.recordings import KIND_SNAPSHOT, KIND_WS, iter_frames, list_recording_files
from core.records import MD_EVENT, MD_SNAP_BEGIN
from processes import feed
from processes.feed_client import FeedClient, FeedSettings
from ringbuffers.idle import make_idle
from ringbuffers.ring import Ring, segment_name
from simulator_helpers import sim_for

ROOT = Path(__file__).resolve().parents[2]


class FakeCtx:
    """The parts of ``processes.stage.StageContext`` the feed uses; commands are injected by the test."""

    def __init__(self, ring: Ring):
        self.outputs = {"md": ring}
        self.idle = make_idle("backoff", spins=10, yields=5, min_sleep_ns=20_000, max_sleep_ns=200_000)
        self.log = logging.getLogger("test.feed")
        self.latency = LatencySet()
        self.stats: dict = {}
        self.pending: list[dict] = []
        self.stop = False
        self.heartbeats = 0

    def heartbeat(self, **stats) -> None:
        self.heartbeats += 1
        self.stats.update(stats)

    def should_stop(self) -> bool:
        return self.stop

    def commands(self) -> list[dict]:
        out, self.pending = self.pending, []
        return out


def drain(ring: Ring, into: list, stop: threading.Event, start) -> None:
    """Consumer thread: waits ``start`` (seconds, or an Event: the ring fills up meanwhile), then reads everything."""
    if isinstance(start, threading.Event):
        start.wait(30)
    else:
        time.sleep(start)
    while True:
        p = ring.poll(4096)
        if len(p.records):
            into.append(p.records.copy())
        ring.release()
        if not len(p.records):
            if stop.is_set():
                return
            time.sleep(0.001)


@pytest.mark.parametrize("capacity", [1024, 16384], ids=["two_step_publish", "one_call_decode_publish"])
def test_full_block_ring_makes_the_feed_wait_and_nothing_is_lost_or_reordered(instance, capacity):
    name = segment_name(instance, "md")
    ring = Ring.create(name, MD_EVENT, capacity=capacity, consumers=1, policy="block")
    reader = Ring.attach(name, MD_EVENT, 0)
    got: list[np.ndarray] = []
    done = threading.Event()
    # the consumer starts only once the ring is full and the feed has had to wait (a condition, not a delay)
    go = threading.Event()
    t = threading.Thread(target=drain, args=(reader, got, done, go), daemon=True)
    try:
        ctx = FakeCtx(ring)
        pub = feed.RingPublisher(ring, ctx, ctx.latency.hop("feed"))
        sink = pub if capacity >= 16384 else None

        async def body():
            async with sim_for(rate=10000) as sim:
                s = FeedSettings(ws_url=sim.ws_url, rest_url=sim.base_url, symbols=("BTCUSDT", "ETHUSDT"),
                                 snapshot_wait_first_diff_s=0.3)
                client = FeedClient(s, pub.records, frame_sink=sink)
                task = asyncio.create_task(feed._run_exchange(ctx, client, pub))
                t.start()
                deadline = time.monotonic() + 40
                while client.stats.snapshots < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                while pub.full_waits == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # the ring fills up: the consumer has not started yet
                go.set()
                # (a request while the symbol's snapshot is still pending would coalesce with it)
                ctx.pending.append({"type": "resync", "symbol": 1})
                while client.stats.snapshots < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.5)  # ~15 more 100 ms diffs per symbol after the last snapshot
                sim.source.paused = True
                await asyncio.sleep(0.5)
                ctx.stop = True  # the control task sees it within a few ms and stops the client
                await asyncio.wait_for(task, 5)
                return client

        client = asyncio.run(body())
        time.sleep(0.2)
        done.set()
        t.join(5)
        recs = np.concatenate(got)
        published = ring.published
    finally:
        done.set()
        go.set()
        reader.close()
        ring.close()
        ring.unlink()
    st = client.stats
    assert pub.full_waits > 0, "the ring never filled: the test did not exercise the wait"
    assert pub.dropped_at_stop == 0
    assert len(recs) == st.records == published
    # order and completeness: frames in receive order, every diff message whole, chains unbroken
    assert np.all(recs["pub_ns"] >= recs["recv_ns"]) and np.all(recs["recv_ns"] > 0)
    assert frames_in_receive_order(recs)
    snaps = recs[recs["kind"] == MD_SNAP_BEGIN]
    assert sorted(snaps["symbol"].tolist()) == [0, 1, 1]  # the resync command fetched ETHUSDT again
    from test_feed import check_chain, check_message_framing, ws_records

    check_message_framing(ws_records(recs))
    assert check_chain(recs, 0) > 5 and check_chain(recs, 1, after_snapshot=1) > 2
    assert ctx.stats["frames"] == st.frames and ctx.stats["md_full"] == pub.full_waits
    assert ctx.latency.hop("feed").count == st.frames + st.snapshots  # one sample per message


def frames_in_receive_order(recs: np.ndarray) -> bool:
    """WebSocket records keep receive order (snapshots are stamped at the HTTP answer: left out)."""
    from test_feed import ws_records

    return bool(np.all(np.diff(ws_records(recs)["recv_ns"]) >= 0))


def test_binance_configs_load_and_point_the_same_feed_at_binance():
    paper = load_config(ROOT / "config" / "binance-paper.json", env={}, host_cpus=None)
    assert paper.mode == "paper" and paper.market_data.source == "exchange"
    s = feed.feed_settings(paper)
    assert s.stream_url().startswith("wss://data-stream.binance.vision/stream?streams=btcusdt@depth@100ms/")
    assert s.rest_url == "https://data-api.binance.vision"
    env = {"BINANCE_TESTNET_API_KEY": "k", "BINANCE_TESTNET_API_SECRET": "s"}
    testnet = load_config(ROOT / "config" / "binance-testnet.json", env=env, host_cpus=None)
    assert testnet.mode == "live" and testnet.execution.api_key_env == "BINANCE_TESTNET_API_KEY"
    assert feed.feed_settings(testnet).stream_url().startswith("wss://stream.testnet.binance.vision/stream?streams=")
    assert feed.feed_settings(testnet).rest_url == "https://testnet.binance.vision"
    text = (ROOT / "config" / "binance-testnet.json").read_text()
    assert "api_key\"" not in text and "api_secret\"" not in text  # keys only from the environment
    with pytest.raises(Exception, match="BINANCE_TESTNET_API_KEY"):
        load_config(ROOT / "config" / "binance-testnet.json", env={}, host_cpus=None)


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def test_supervised_sim_run_feeds_the_pipeline_and_records_a_replayable_session(tmp_path):
    port = free_port()
    inst = f"fw-{os.getpid()}-{port}"
    d = json.loads((ROOT / "config" / "system.json").read_text())
    assert d["mode"] == "sim" and d["market_data"]["source"] == "exchange"  # the default runs the real feed
    d["instance"] = inst
    d["simulator"] = {"port": port, "rate": 3000, "depth_levels": 200}
    d["metrics"]["enabled"] = False
    md = d["market_data"]
    md.update(ws_url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}",
              recording_dir=str(tmp_path / "rec"), recording_rotate_mb=1)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(d))
    summary_path = tmp_path / "summary.json"
    env = dict(os.environ)  # conftest configured the keyed numba cache (core.numba_cache)
    try:
        p = subprocess.run([sys.executable, "-m", "processes.supervisor", "--config", str(cfg_path), "--duration", "4",
                            "--summary-json", str(summary_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=400)
    finally:
        for seg in os.listdir("/dev/shm"):
            if seg.startswith(f"ringtrader.{inst}."):
                os.unlink(os.path.join("/dev/shm", seg))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    fc = s["stages"]["feed"]["counters"]
    assert fc["connects"] == 1 and fc["snapshots"] == 2 and fc["frames"] > 100
    assert fc["decode_errors_total"] == 0 and fc["md_full"] == 0 and s["processes"]["feed"]["restarts"] == 0
    assert s["restarts"] == 0  # the first start kills nobody (heartbeats count only after the go)
    assert s["rings"]["md"]["published"] == fc["records"] == s["rings"]["md"]["consumed"]["book"]
    assert s["latency"]["feed"]["count"] == fc["frames"] + fc["snapshots"]
    # the recording holds every frame and both snapshot bodies; decoding it gives the ring's records
    files = list_recording_files(tmp_path / "rec", "md")
    frames = [f for path in files for f in iter_frames(path)]
    ws = [f for f in frames if f.kind == KIND_WS]
    snaps = [f for f in frames if f.kind == KIND_SNAPSHOT]
    assert len(ws) == fc["frames"] and sorted(f.symbol for f in snaps) == ["BTCUSDT", "ETHUSDT"]
    dec = Decoder(["BTCUSDT", "ETHUSDT"])
    out = dec.new_out()
    n = sum(dec.decode(f.payload, f.recv_ns, out) for f in ws)
    n += sum(dec.decode_snapshot(f.payload, ["BTCUSDT", "ETHUSDT"].index(f.symbol), f.recv_ns, out) for f in snaps)
    assert n + 2 == fc["records"]  # + one STATUS_RECONNECTED per symbol at connect


def test_synthetic_source_keeps_flowing_across_many_ring_wraps(instance):
    """A message straddling the wrap point must not stall the synthetic feed (claim() stops at the wrap)."""
    from types import SimpleNamespace

    cfg = load_config(ROOT / "config" / "system.json", env={"RINGTRADER__MARKET_DATA__SOURCE": "synthetic"},
                      host_cpus=None)
    name = segment_name(instance, "md")
    ring = Ring.create(name, MD_EVENT, capacity=256, consumers=1, policy="block")
    reader = Ring.attach(name, MD_EVENT, 0)
    got: list[np.ndarray] = []
    done = threading.Event()
    t = threading.Thread(target=drain, args=(reader, got, done, 0.0), daemon=True)
    ctx = FakeCtx(ring)
    ctx.process = SimpleNamespace(batch=64)
    ctx.ready = lambda: None
    worker = threading.Thread(target=feed.run_synthetic, args=(cfg, ctx), daemon=True)
    try:
        t.start()
        worker.start()
        deadline = time.monotonic() + 20
        while ring.published < 10 * ring.capacity and time.monotonic() < deadline:
            time.sleep(0.05)
        ctx.stop = True
        worker.join(5)
        time.sleep(0.1)
        done.set()
        t.join(5)
        published = ring.published
    finally:
        ctx.stop = True
        done.set()
        reader.close()
        ring.close()
        ring.unlink()
    assert published >= 10 * 256, f"the synthetic feed stalled at {published} records"
    recs = np.concatenate(got)
    assert len(recs) == published
    from test_feed import check_message_framing

    check_message_framing(recs[recs["kind"] <= 3])

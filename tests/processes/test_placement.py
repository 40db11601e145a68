"""The placement never changes behaviour: one recorded session through two placements gives the same records.

A real Binance recording (../shared/data, hftbacktest BTCUSDT 2024-08-08) is
decoded into md records and published into a real md ring; the stage
processes are spawned exactly as the supervisor does
(``processes.runtime.worker_main``): once with book, signal, risk and
execution in one engine process (config/system.json), once with one process
per stage (the dedicated host's shape). Every record of every ring is then
compared, timestamps aside (recv/pub/in_pub ns): byte for byte equal.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from core import records
from core.book_replay import load_session
from core.config import RINGS, parse_config
from core.recordings import iter_session
from core.records import MD_SNAP_BEGIN
from processes.runtime import worker_main
from ringbuffers.control import ControlQueue
from ringbuffers.ring import Ring, list_segments, segment_name

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "hftbacktest"
N_MD = 30000  # md records of the session replayed (snapshot, diffs, trades, tickers)
TRACE = ("recv_ns", "pub_ns", "in_pub_ns")


@pytest.fixture(scope="module")
def session_md() -> np.ndarray:
    s = load_session(iter_session([DATA / "btcusdt_20240808.gz"]), ["BTCUSDT"])
    md = s.md
    first_snap = int(np.flatnonzero(md["kind"] == MD_SNAP_BEGIN)[0])
    md = md[: first_snap + N_MD].copy()
    assert np.count_nonzero(md["kind"] == MD_SNAP_BEGIN) >= 1
    return md


def _config(instance: str, placement: str, signal: dict | None = None, mode: str = "sim") -> object:
    d = json.loads((ROOT / "config" / "system.json").read_text())
    d["instance"] = instance
    d["mode"] = mode
    d["signal"].update(signal or {})
    eng = {k: v for k, v in d["placement"]["engine"].items() if k != "stages"}
    eng["idle"] = {"strategy": "backoff", "spins": 20, "yields": 2, "min_sleep_us": 20, "max_sleep_us": 500}
    if placement == "engine":
        d["placement"] = {"feed": {**eng, "stages": ["feed"]},
                          "engine": {**eng, "stages": ["book", "signal", "risk", "execution"]}}
    else:
        d["placement"] = {st: {**eng, "stages": [st]} for st in ("feed", "book", "signal", "risk", "execution")}
    d["placement"]["simulator"] = {"cpus": eng["cpus"], "enabled": False}
    for r in d["rings"].values():
        if isinstance(r, dict):
            r.update(capacity=1 << 17, policy="block")  # the whole session fits: nothing wraps, all can be read back
    # bars close on trades only within the run: the timer (estimated exchange time) would need a minute of wall time
    d["book"] = {"bar_watermark_ms": 60000}
    d["supervisor"]["heartbeat_interval_ms"] = 50
    return parse_config(d, host_cpus=None)


def _run(placement: str, md: np.ndarray, signal: dict | None = None, keep_trace: bool = False,
         mode: str = "sim", inspect=None) -> dict[str, np.ndarray]:
    instance = f"pl-{uuid.uuid4().hex[:8]}"
    cfg = _config(instance, placement, signal, mode)
    rings = {r: Ring.create(segment_name(instance, r), records.ALL_DTYPES[dt], cfg.rings[r].capacity, len(cons),
                            "block") for r, (dt, _p, cons) in RINGS.items()}
    ctx = mp.get_context("spawn")
    procs = []
    try:
        for name, pcfg in cfg.placement.items():
            if not pcfg.stages or pcfg.stages == ("feed",):
                continue  # the test is the feed; no simulator
            cmd, evt = ControlQueue(1 << 16), ControlQueue(8 << 20)
            p = ctx.Process(target=worker_main, args=(name, cfg, cmd, evt, 1))
            p.start()
            procs.append((name, p, cmd, evt))
        for name, p, cmd, evt in procs:
            _wait(evt, lambda m: m["type"] == "ready", 240, name)
        for _name, _p, cmd, _evt in procs:
            cmd.put({"type": "start"})
        feed = rings["md"]
        recs = md.copy()
        recs["pub_ns"] = np.maximum(recs["recv_ns"], time.monotonic_ns())
        recs["recv_ns"] = recs["pub_ns"] - 1  # a monotonic trace (the recorded clock is another host's)
        done = 0
        while done < len(recs):
            done += feed.publish_batch(recs[done:done + 4096])
        deadline = time.monotonic() + 120
        last, stable_since = None, time.monotonic()
        while time.monotonic() < deadline:
            st = {r: (ring.published, tuple(ring.stats().consumed)) for r, ring in rings.items()}
            if st != last:
                last, stable_since = st, time.monotonic()
            drained = all(all(c == pub for c in cons) for pub, cons in st.values())
            if drained and time.monotonic() - stable_since > 0.5:
                break
            for *_rest, evt in procs:
                _errors(evt)
            time.sleep(0.05)
        else:
            raise AssertionError(f"the pipeline did not drain: {last}")
        if inspect is not None:
            inspect(cfg)  # while the processes still run (the journal is complete: the rings are drained)
        out = {}
        for r, ring in rings.items():
            got = ring.slots[: ring.published].copy()
            for f in TRACE if not keep_trace else ():
                if f in got.dtype.names:
                    got[f] = 0
            out[r] = got
        return out
    finally:
        for _name, p, cmd, _evt in procs:
            cmd.put({"type": "shutdown"})
        for _name, p, cmd, evt in procs:
            p.join(20)
            if p.exitcode is None:
                p.kill()
                p.join(5)
            cmd.close()
            evt.close()
        for ring in rings.values():
            ring.unlink()
            ring.close()
        assert list_segments(instance) == []


def _errors(evt) -> list:
    msgs = evt.get_many(timeout=0, max_messages=1000)
    for m in msgs:
        if m.get("type") == "log" and m.get("level") == "ERROR":
            raise AssertionError(f"{m.get('msg')}\n{m.get('exc', '')}")
    return msgs


def _wait(evt, pred, timeout: float, name: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in _errors(evt):
            if pred(m):
                return m
        time.sleep(0.02)
    raise AssertionError(f"{name}: event not seen")


def test_one_engine_process_and_one_process_per_stage_give_identical_records(session_md):
    engine = _run("engine", session_md)
    split = _run("split", session_md)
    assert len(engine["md"]) == len(session_md)
    for r in RINGS:
        assert len(engine[r]) == len(split[r]) > 0, r
        # every named field (BOOK_EVENT is a union: its fields overlap), not the padding between them
        differ = {f: int(np.count_nonzero(~((engine[r][f] == split[r][f])
                                            | (np.isnan(engine[r][f]) & np.isnan(split[r][f]))
                                            if engine[r][f].dtype.kind == "f" else engine[r][f] == split[r][f])))
                  for f in engine[r].dtype.names}  # NaN (an ATR not warm yet) equals NaN
        bad = [f for f, n in differ.items() if n]
        where = np.flatnonzero(engine[r][bad[0]] != split[r][bad[0]])[:3] if bad else []
        assert not bad, f"ring {r}: records differ in {bad} at {where}: {engine[r][where]} vs {split[r][where]}"
    # the session really exercised the book: valid tops, trades and bars came out of it
    kinds = np.bincount(engine["book"]["kind"], minlength=5)
    assert kinds[records.BK_TOP] > 100 and kinds[records.BK_TRADE] > 100 and kinds[records.BK_BAR] > 0


def test_the_live_signal_stage_emits_what_the_research_api_computes(session_md, tmp_path):
    """The real engine process vs ``core.features.FeatureComputer`` + ``core.strategies.replay_signals``.

    A logistic model whose weights touch every feature makes each ML signal's
    strength a function of the whole feature vector, so equal strengths mean
    equal features; the rule strategy and the probe ride along.
    """
    from core.book_worker_kernels import BookConfig, BookEngine
    from core.features import FEATURE_NAMES, FEATURE_VERSION, FeatureComputer
    from core.models import save_linear_npz
    from core.strategies import R_ML_LONG, R_ML_SHORT, SignalSettings, replay_signals

    cfg0 = _config("research", "engine")
    b = cfg0.book
    engine = BookEngine(BookConfig(n_symbols=len(cfg0.instruments), levels_capacity=b.levels_capacity,
                                   buffer_capacity=b.buffer_capacity, bar_intervals_ms=tuple(b.bar_intervals_ms),
                                   bar_watermark_ms=b.bar_watermark_ms, emit_empty_bars=b.emit_empty_bars,
                                   depth_throttle_ms=b.depth_throttle_ms))
    research_book = engine.process_all(session_md)
    rows = FeatureComputer(cfg0).compute(research_book, on=("bar", "top"))
    X = np.column_stack([rows[n] for n in FEATURE_NAMES])
    warm = np.isfinite(X).all(axis=1)
    assert warm.sum() > 50
    scale = np.median(np.abs(X[warm]), axis=0)
    w = np.where(scale > 0, 0.3 / np.where(scale > 0, scale, 1), 0.0) * np.resize([1.0, -1.0, 0.5], len(scale))
    bias = -float(np.median(X[warm] @ w))
    model = tmp_path / "all_features.npz"
    save_linear_npz(model, w, bias, "logistic", FEATURE_NAMES, FEATURE_VERSION)
    signal = {"max_staleness_ms": 600_000, "update_interval_ms": 200, "strategies": [
        {"name": "mr", "type": "rsi_macd_bb", "qty": "0.001"},
        {"name": "ml", "type": "ml", "on": ["bar", "top"], "qty": "0.001", "model": str(model),
         "params": {"buy_above": 0.6, "sell_below": 0.4}},
        {"name": "probe", "type": "trace_probe"}]}

    live = _run("engine", session_md, signal=signal, keep_trace=True)
    cfg = _config("research", "engine", signal)
    research = replay_signals(SignalSettings.build(cfg), live["book"])
    # the book the live stage read is the one the research path builds from the same md
    for f in ("kind", "symbol", "state", "top_bid_px", "top_ask_qty", "tr_qty", "bar_close", "bar_volume"):
        assert np.array_equal(live["book"][f], research_book[f]), f
    assert len(live["signals"]) == len(research) > len(live["book"])
    for f in research.dtype.names:
        if f != "pub_ns":
            assert np.array_equal(live["signals"][f], research[f], equal_nan=research[f].dtype.kind == "f"), \
                f"signals differ in {f}"
    ml = research[np.isin(research["reason"], (R_ML_LONG, R_ML_SHORT))]
    assert len(ml) > 0, "the model never crossed a threshold: the comparison saw no ML decision"


def test_paper_mode_fills_an_approved_order_against_the_recorded_book_and_journals_the_position(session_md,
                                                                                                 tmp_path):
    """mode paper, the real engine process: a model that always says buy -> risk sizes and approves one
    market order -> the paper venue fills it against the recorded book (taker, fee in base) -> the journal
    has the fills and a position of the filled quantity less the base commission."""
    from core.features import FEATURE_NAMES, FEATURE_VERSION
    from core.models import save_linear_npz
    from core.records import EX_NEW, EX_TRADE, ORD_NEW, SIDE_BUY
    from processes.journal import Journal, journal_path

    model = tmp_path / "always_buy.npz"
    save_linear_npz(model, np.zeros(len(FEATURE_NAMES)), 5.0, "logistic", FEATURE_NAMES, FEATURE_VERSION)
    signal = {"max_staleness_ms": 600_000, "strategies": [
        {"name": "buyer", "type": "ml", "on": ["bar"], "qty": "0.001", "model": str(model)}]}
    seen = {}

    def journal_state(cfg):
        j = Journal(journal_path(cfg))
        try:
            seen["positions"] = j.positions("fifo")
            seen["fills"] = j.query("SELECT symbol, trade_id, px, qty, commission FROM fills")
        finally:
            j.close()

    got = _run("engine", session_md, signal=signal, keep_trace=True, mode="paper", inspect=journal_state)
    orders = got["orders"][got["orders"]["action"] == ORD_NEW]
    assert len(orders) == 1 and orders["side"][0] == SIDE_BUY and orders["qty"][0] == 100_000
    rep = got["reports"]
    assert rep["exec_type"][0] == EX_NEW and rep["client_order_id"][0] == orders["client_order_id"][0]
    fills = rep[rep["exec_type"] == EX_TRADE]
    assert fills["last_qty"].sum() == 100_000 and fills["cum_qty"][-1] == 100_000
    # a taker fill at the recorded book of its activation (1 ms of paper latency after the decision: the
    # replay runs faster than real time, so the market may have moved a little from the decision's mid)
    assert np.all(np.abs(fills["last_px"] / orders["ref_px"][0] - 1) < 0.005) and np.all(fills["is_maker"] == 0)
    commission = int(fills["commission"].sum())
    assert commission > 0 and np.all(fills["commission_asset"] == 1)  # a buy pays its fee in the base asset
    assert len(seen["fills"]) == len(fills)
    from decimal import Decimal

    assert seen["positions"]["BTCUSDT"]["position"] == Decimal(100_000 - commission) / 10**8

#!/usr/bin/env python3
"""Benchmark: the signal stage's per-bar cost, the indicators against TA-Lib, and the book->signal hop.

    .venv/bin/python scripts/bench_signal.py [--bars 1000000] [--symbols 16] [--no-hop] [--json]

One run, rows named so a reader can pair them (``--json``: a list of
``{"name", "ns_per_bar"}``, plus extra fields where useful):

* ``ringtrader streaming``: the signal stage's kernel (``core.strategies.
  sig_process``, what ``processes.signal.signal_step`` runs) on a stream of
  closed 1 s bars round-robin over ``--symbols`` symbols, each bar preceded
  by a top-of-book change: per bar per symbol, the four indicators (RSI,
  MACD, Bollinger, ATR) + returns/volatility + the whole feature vector +
  the rule strategy + the ML strategy scoring the shipped LightGBM example
  model (``config/models/example.txt``; a 22-weight logistic model when it
  is absent). The top events' own cost is included.
* ``ringtrader streaming, indicators only``: ``core.indicators.stream_update``
  alone (from scripts/bench_indicators.py).
* ``talib.stream``: ``talib.stream.RSI/MACD/BBANDS/ATR`` per new bar on a
  1000-bar history (scripts/bench_indicators.py), and the same with TA-Lib
  0.8.2's incremental handles (``.update``).
* ``ringtrader batch X`` / ``talib X`` for rsi, macd, bbands, atr on
  ``--bars`` bars (interleaved, median of repeats).
* ``book->signal hop`` (unless ``--no-hop``): p50/p99 from
  ``scripts/latency_profile.py`` (the default small placement, synthetic
  source, 2000 ev/s, 15 s), in µs.

Targets (issue: signal stage): streaming >= 10x faster than talib.stream and
<= 1 us per bar per symbol; batch no slower than TA-Lib for each of the four.
Timing only: nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from core.numba_cache import configure  # noqa: E402

configure()

import numpy as np  # noqa: E402

from core.config import load_config  # noqa: E402
from core.features import FEATURE_NAMES, FEATURE_VERSION, new_feature_state  # noqa: E402
from core.records import BK_BAR, BK_TOP, BOOK_EVENT, BOOK_VALID, FIXED_SCALE, SIGNAL  # noqa: E402
from core.strategies import SignalSettings, model_arrays, new_strategy_state, sig_process  # noqa: E402

EXAMPLE_MODEL = ROOT / "config" / "models" / "example.txt"


def _stream(n_bars: int, n_sym: int, seed: int = 3) -> np.ndarray:
    """Per symbol: a random walk of 1 s bars, each preceded by a valid top (2 records per bar)."""
    rng = np.random.default_rng(seed)
    per = n_bars // n_sym
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, (per, n_sym)), axis=0))
    ev = np.zeros(2 * per * n_sym, BOOK_EVENT)
    i = np.arange(per * n_sym)
    c = closes.reshape(-1)
    sym = np.tile(np.arange(n_sym), per)
    recv = 1_000_000_000 + i * 1_000_000
    top, bar = ev[0::2], ev[1::2]
    for e in (top, bar):
        e["symbol"] = sym
        e["state"] = BOOK_VALID
        e["recv_ns"] = recv
        e["pub_ns"] = recv + 100
    top["kind"] = BK_TOP
    top["recv_ns"] -= 500
    top["top_bid_px"] = np.round((c - 0.01) * FIXED_SCALE)
    top["top_ask_px"] = np.round((c + 0.01) * FIXED_SCALE)
    top["top_bid_qty"] = top["top_ask_qty"] = FIXED_SCALE
    bar["kind"] = BK_BAR
    bar["bar_interval_ms"] = 1000
    bar["bar_close"] = np.round(c * FIXED_SCALE)
    bar["bar_high"] = np.round(c * 1.001 * FIXED_SCALE)
    bar["bar_low"] = np.round(c * 0.999 * FIXED_SCALE)
    bar["bar_volume"] = FIXED_SCALE
    bar["bar_quote_volume"] = np.round(c * FIXED_SCALE)
    bar["exch_ms"] = bar["bar_close_ms"] = 1_700_000_000_999 + (i // n_sym) * 1000
    return ev


def _settings(n_sym: int, model_path: Path) -> SignalSettings:
    d = json.loads((ROOT / "config" / "system.json").read_text())
    d["instruments"] = [{"symbol": f"S{i}USDT", "tick_size": "0.01", "lot_size": "0.00001", "min_notional": "5"}
                        for i in range(n_sym)]
    d["signal"]["strategies"] = [
        {"name": "mean_reversion", "type": "rsi_macd_bb", "qty": "0.001"},
        {"name": "model", "type": "ml", "on": ["bar"], "qty": "0.001", "model": str(model_path)}]
    from core.config import parse_config

    cfg = parse_config(d, host_cpus=None)
    object.__setattr__(cfg, "source_path", str(ROOT / "config" / "system.json"))
    return SignalSettings.build(cfg)


def streaming(n_sym: int, n_bars: int = 400_000, repeats: int = 5) -> dict:
    import tempfile

    tmp = None
    path = EXAMPLE_MODEL
    if not path.exists():
        from core.models import save_linear_npz

        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "logistic.npz"
        save_linear_npz(path, np.linspace(-1, 1, len(FEATURE_NAMES)) * 1e-3, 0.0, "logistic", FEATURE_NAMES,
                        FEATURE_VERSION)
    s = _settings(n_sym, path)
    ev = _stream(n_bars, n_sym)
    out = np.zeros(1 << 12, SIGNAL)
    model = model_arrays(s)
    times = []
    for _ in range(repeats + 1):  # the first run compiles / warms
        fs, st = new_feature_state(s.features, n_sym), new_strategy_state(s)
        t0 = time.perf_counter_ns()
        sig_process(st, fs, model, ev, len(ev), np.int64(0), out, np.int64(0), np.int64(len(out) - 1), np.int64(0))
        times.append(time.perf_counter_ns() - t0)
    bars = len(ev) // 2
    if tmp is not None:
        tmp.cleanup()
    return {"name": "ringtrader streaming", "ns_per_bar": round(statistics.median(times[1:]) / bars, 1),
            "symbols": n_sym, "model": s.model.kind_name if s.model else None,
            "model_file": str(path.relative_to(ROOT)) if path == EXAMPLE_MODEL else "logistic (22 weights)",
            "note": "4 indicators + features + rule + model, per bar per symbol, incl. one top event per bar"}


def hop() -> list[dict]:
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "latency_profile.py"), "--placements", "small",
                        "--seconds", "15", "--json"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    if p.returncode != 0:
        return [{"name": "book->signal hop", "ns_per_bar": None, "error": (p.stderr or p.stdout)[-500:]}]
    r = json.loads(p.stdout)
    h = r["placements"]["small"]["latency"].get("book->signal") or {}
    return [{"name": "book->signal hop p50", "ns_per_bar": None, "us": h.get("p50_us"), "count": h.get("count")},
            {"name": "book->signal hop p99", "ns_per_bar": None, "us": h.get("p99_us")}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bars", type=int, default=1_000_000, help="bars for the batch rows")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--symbols", type=int, default=16)
    ap.add_argument("--no-hop", action="store_true", help="skip the latency_profile run (book->signal hop)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from bench_indicators import bench

    load_config(ROOT / "config" / "system.json", host_cpus=None)  # the shipped config must load
    rows = [streaming(args.symbols)]
    ind = bench(args.bars, args.repeats)
    for r in ind:
        if r["name"].startswith("ringtrader stream_update"):
            r = {**r, "name": "ringtrader streaming, indicators only"}
        elif r["name"].startswith("talib.stream (") or r["name"] == "talib.stream":
            r = {**r, "name": "talib.stream"}
        rows.append(r)
    if not args.no_hop:
        rows += hop()
    by = {r["name"]: r.get("ns_per_bar") for r in rows}
    ts = by.get("talib.stream")
    summary = {"streaming_vs_talib_stream": round(ts / by["ringtrader streaming"], 1) if ts else None,
               "streaming_ns_per_bar": by["ringtrader streaming"],
               "batch_ratio_ringtrader_over_talib": {
                   k: round(by[f"ringtrader batch {k}"] / by[f"talib {k}"], 3)
                   for k in ("rsi", "macd", "bbands", "atr") if by.get(f"ringtrader batch {k}") and by.get(f"talib {k}")}}
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "summary": summary, "load_avg": os.getloadavg()}, indent=2) + "\n")
        return 0
    print(f"{'row':<58}{'ns/bar':>12}")
    for r in rows:
        v = r.get("ns_per_bar")
        extra = f"  {r['us']} us" if "us" in r else ""
        print(f"{r['name']:<58}{'' if v is None else f'{v:,.1f}':>12}{extra}")
    print(f"streaming: {summary['streaming_vs_talib_stream']}x faster than talib.stream; "
          f"{summary['streaming_ns_per_bar']} ns per bar per symbol (target >= 10x and <= 1000 ns)")
    print("batch ringtrader/talib time ratio (target <= 1):", summary["batch_ratio_ringtrader_over_talib"])
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

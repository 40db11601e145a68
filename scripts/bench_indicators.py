#!/usr/bin/env python3
"""Benchmark: core.indicators against TA-Lib, batch and streaming.

    .venv/bin/python scripts/bench_indicators.py [--bars 1000000] [--repeats 7] [--json]

Batch rows: each of rsi, macd, bbands, atr on the same ``n_bars`` random-walk
bars (with high/low around the close), ringtrader's function and the
``talib`` function called alternately in one run (interleaved, so drift in
the machine's load hits both), median of ``repeats`` timings, in ns per bar.
Both sides allocate their output arrays inside the timed call.

Streaming rows, ns per bar per symbol:

* ``ringtrader stream_update (4 indicators + ret/vol)``: ``stream_update``
  called from a numba loop (``core.indicators.stream_feed``) as the signal
  stage calls it, bars round-robin over ``STREAM_SYMBOLS`` symbols, all ten
  outputs per bar (RSI, MACD x3, BBANDS x3, ATR, return, volatility);
* ``talib.stream (RSI+MACD+BBANDS+ATR)``: ``talib.stream.RSI/MACD/BBANDS/ATR``
  called per new bar on the last ``STREAM_HISTORY`` bars, from Python (the
  classic use of ``talib.stream``; in TA-Lib 0.8.2 each call builds a stream
  handle over the whole history and we read its ``.value``);
* ``talib.stream handles .update (RSI+MACD+BBANDS+ATR)``: TA-Lib 0.8.2's
  incremental API, the four handles built once and fed one bar each with
  ``.update`` from Python (O(1) per bar, but four Python calls).

The results are checked before timing (stream == batch, batch == talib on
these bars), so a fast wrong answer cannot win. Timing only: nothing here
is a test. ``bench()`` is imported by ``scripts/bench_signal.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import talib  # noqa: E402
from talib import stream as ta_stream  # noqa: E402

from core import indicators as ind  # noqa: E402

STREAM_SYMBOLS = 16  # symbols the streaming bars are spread over (round-robin)
STREAM_HISTORY = 1000  # bars of history each talib.stream call recomputes
TALIB_STREAM_BARS = 2000  # new bars timed for the talib.stream rows (Python-bound)


def _bars(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 50_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
    high = close * (1.0 + np.abs(rng.normal(0.0, 5e-4, n)))
    low = close * (1.0 - np.abs(rng.normal(0.0, 5e-4, n)))
    return high, low, close


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    na, nb_ = np.isnan(a), np.isnan(b)
    return bool((na == nb_).all() and (a[~na] == b[~nb_]).all())


def _timed(fn) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def _batch_cases(h, lo, c):
    return {
        "rsi": (lambda: ind.rsi(c, 14), lambda: talib.RSI(c, 14)),
        "macd": (lambda: ind.macd(c, 12, 26, 9), lambda: talib.MACD(c, 12, 26, 9)),
        "bbands": (lambda: ind.bbands(c, 20, 2.0, 2.0), lambda: talib.BBANDS(c, 20, 2.0, 2.0, 0)),
        "atr": (lambda: ind.atr(h, lo, c, 14), lambda: talib.ATR(h, lo, c, 14)),
    }


def _check_batch(cases) -> None:
    for name, (ours, theirs) in cases.items():
        a, b = ours(), theirs()
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        if not all(_same(x, y) for x, y in zip(a, b)):
            raise RuntimeError(f"ringtrader {name} differs from talib on the bench bars")


def _talib_stream_bar(hh, ll, cc) -> tuple:
    """talib.stream over a history: TA-Lib 0.8.2 builds a stream handle from it (the whole history is computed)."""
    return (ta_stream.RSI(cc, 14).value, ta_stream.MACD(cc, 12, 26, 9).value,
            ta_stream.BBANDS(cc, 20, 2.0, 2.0, 0).value, ta_stream.ATR(hh, ll, cc, 14).value)


def bench(n_bars: int = 1_000_000, repeats: int = 7) -> list[dict]:
    """Rows ``{"name", "ns_per_bar"}``: batch rsi/macd/bbands/atr (ours, talib) and streaming (see module doc)."""
    h, lo, c = _bars(n_bars)
    cases = _batch_cases(h, lo, c)
    _check_batch(cases)  # also compiles / loads our kernels before timing
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, (ours, theirs) in cases.items():
            times.setdefault(f"ringtrader batch {name}", []).append(_timed(ours))
            times.setdefault(f"talib {name}", []).append(_timed(theirs))
    rows = [{"name": k, "ns_per_bar": statistics.median(v) / n_bars} for k, v in times.items()]

    # Streaming, ours: every bar through stream_update inside a numba loop; chunks reuse one output block.
    params = ind.make_stream_params()
    chunk = 8192
    syms = (np.arange(n_bars, dtype=np.int64) % STREAM_SYMBOLS)
    out = np.empty((chunk, ind.N_OUT))
    m = min(n_bars, 5000)
    check = ind.stream_series(params, h[:m], lo[:m], c[:m])
    if not (_same(check[:, ind.OUT_RSI], ind.rsi(c[:m]))
            and _same(check[:, ind.OUT_ATR], ind.atr(h[:m], lo[:m], c[:m]))):
        raise RuntimeError("stream_update differs from the batch functions on the bench bars")
    stream_times = []
    for _ in range(repeats):
        st = ind.new_stream_state(params, STREAM_SYMBOLS)
        t0 = time.perf_counter_ns()
        for a in range(0, n_bars, chunk):
            b = min(a + chunk, n_bars)
            ind.stream_feed(st, syms[a:b], h[a:b], lo[a:b], c[a:b], out[:b - a])
        stream_times.append(time.perf_counter_ns() - t0)
    rows.append({"name": "ringtrader stream_update (4 indicators + ret/vol)",
                 "ns_per_bar": statistics.median(stream_times) / n_bars})

    # Streaming, talib.stream: each new bar recomputes over the last STREAM_HISTORY bars.
    n_new = max(1, min(TALIB_STREAM_BARS, n_bars - STREAM_HISTORY))
    s0 = n_bars - n_new - STREAM_HISTORY  # history before the first timed bar (may be < 0 for tiny runs)
    s0 = max(0, s0)
    first_new = n_bars - n_new
    rsi_last = _talib_stream_bar(h[-STREAM_HISTORY:], lo[-STREAM_HISTORY:], c[-STREAM_HISTORY:])[0]
    if not _same(np.array([rsi_last]), ind.rsi(c[-STREAM_HISTORY:])[-1:]):
        raise RuntimeError("talib.stream.RSI differs from rsi on the bench bars")
    ta_times = []
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter_ns()
        for k in range(first_new, n_bars):
            s = max(0, k + 1 - STREAM_HISTORY)
            _talib_stream_bar(h[s:k + 1], lo[s:k + 1], c[s:k + 1])
        ta_times.append(time.perf_counter_ns() - t0)
    rows.append({"name": "talib.stream (RSI+MACD+BBANDS+ATR)", "ns_per_bar": statistics.median(ta_times) / n_new})

    # The same handles fed one bar at a time with .update (TA-Lib 0.8.2's incremental API), from Python.
    up_times = []
    for _ in range(max(1, repeats // 2)):
        hs, ls, cs = h[s0:first_new], lo[s0:first_new], c[s0:first_new]
        handles = (ta_stream.RSI(cs, 14), ta_stream.MACD(cs, 12, 26, 9), ta_stream.BBANDS(cs, 20, 2.0, 2.0, 0))
        atr_h = ta_stream.ATR(hs, ls, cs, 14)
        hl, ll, cl = h[first_new:].tolist(), lo[first_new:].tolist(), c[first_new:].tolist()
        t0 = time.perf_counter_ns()
        for k in range(n_new):
            x = cl[k]
            for hd in handles:
                hd.update(x)
            atr_h.update(hl[k], ll[k], x)
        up_times.append(time.perf_counter_ns() - t0)
        if not _same(np.array([handles[0].value]), ind.rsi(c[s0:])[-1:]):
            raise RuntimeError("talib.stream.RSI(...).update differs from rsi on the bench bars")
    rows.append({"name": "talib.stream handles .update (RSI+MACD+BBANDS+ATR)",
                 "ns_per_bar": statistics.median(up_times) / n_new})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bars", type=int, default=1_000_000, help="bars per batch call / streamed bars")
    ap.add_argument("--repeats", type=int, default=7, help="timings per row (median reported)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    rows = bench(args.bars, args.repeats)
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    width = max(len(r["name"]) for r in rows)
    sys.stdout.write(f"{'':{width}}  ns/bar   ({args.bars} bars, median of {args.repeats})\n")
    for r in rows:
        sys.stdout.write(f"{r['name']:{width}}  {r['ns_per_bar']:8.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark: L2 level updates per second on a real recorded Binance update stream.

    .venv/bin/python scripts/bench_book.py [--updates 2000000] [--recording A.gz --recording B.gz] [--json]

The stream is the recorded diff-depth levels of one symbol (default: the
hftbacktest ETHUSDT 2024 session in ../shared/data), applied on top of its
REST snapshot, repeated until it holds ``--updates`` level updates; each
repetition starts again from the snapshot (for the worker entry point: a feed
reconnect, the snapshot, the recorded diffs), because the recorded diffs only
make a sane book from that snapshot. Every implementation gets the same
snapshot and the same updates, in one run:

* ``ringtrader book_set_level``: the core/book.py kernel in a numba loop
  (level updates only);
* ``ringtrader process_md_batch``: the book worker's whole entry point on
  MD_EVENT records (sync checks, top-change BK_TOP events, bars state);
* ``nautilus OrderBook (L2_MBP)``: NautilusTrader's Rust-backed book fed
  ``OrderBookDeltas`` per diff (objects built before timing), run in a
  separate venv ``.bench-venv/`` (nautilus-trader pins deps this project
  must not take) in a subprocess; the stream goes through a temp .npy file;
* ``python dict book``: a plain dict per side, best bid/ask by max/min per diff.

After each run the final best bid/ask of every implementation is checked
against the ringtrader book, so a fast wrong answer cannot win.
Reports updates/s and ratios. Timing only: nothing here is a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from core.book import alloc_book, book_clear, book_set_level, book_snapshot_append, book_snapshot_finish, book_top  # noqa: E402
from core.book_replay import load_session  # noqa: E402
from core.book_worker_kernels import BookConfig, BookEngine, md_snapshot, md_status  # noqa: E402
from core.records import (  # noqa: E402
    FLAG_BEGIN,
    FLAG_END,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_SNAP_ASK,
    MD_SNAP_BID,
    MD_SNAP_BEGIN,
    STATUS_RECONNECTED,
)
from core.recordings import iter_session  # noqa: E402

BENCH_VENV = ROOT / ".bench-venv"
DEFAULT_RECORDING = [ROOT / ".." / "shared" / "data" / "hftbacktest" / f"ethusdt_2024080{d}.gz" for d in (8, 9)]
STREAM_DTYPE = np.dtype([("side", "i1"), ("px", "<i8"), ("qty", "<i8"), ("diff", "<i8")])

NAUTILUS_CHILD = r'''
import sys, time, json
import numpy as np
from nautilus_trader.model.book import OrderBook
from nautilus_trader.model.data import BookOrder, OrderBookDelta, OrderBookDeltas
from nautilus_trader.model.enums import BookAction, BookType, OrderSide
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.model.objects import Price, Quantity

snap = np.load(sys.argv[1])
stream = np.load(sys.argv[2])
reps = int(sys.argv[3])
repeat = int(sys.argv[4])
iid = InstrumentId.from_str("BENCH.BINANCE")
S = 10**8

def px(v):
    return Price.from_str(f"{v // S}.{v % S:08d}")

def qty(v):
    return Quantity.from_str(f"{v // S}.{v % S:08d}")

seq = 0
def delta(side, p, q):
    global seq
    seq += 1
    action = BookAction.DELETE if q == 0 else BookAction.UPDATE
    order = BookOrder(OrderSide.BUY if side == 0 else OrderSide.SELL, px(p), qty(q), 0)
    return OrderBookDelta(iid, action, order, 0, seq, 0, 0)

book = OrderBook(iid, BookType.L2_MBP)
init = OrderBookDeltas(iid, [OrderBookDelta.clear(iid, 0, 0, 0)] + [delta(int(s), int(p), int(q)) for s, p, q, _ in snap])
# one OrderBookDeltas per recorded diff, built before timing
batches = []
cur = []
last = stream["diff"][0] if len(stream) else 0
for s, p, q, d in stream:
    if d != last and cur:
        batches.append(OrderBookDeltas(iid, cur))
        cur = []
    last = d
    cur.append(delta(int(s), int(p), int(q)))
if cur:
    batches.append(OrderBookDeltas(iid, cur))
dt = float("inf")
for _ in range(repeat):
    t0 = time.perf_counter()
    for _ in range(reps):
        book.apply_deltas(init)  # back to the snapshot, as every other implementation does
        for b in batches:
            book.apply_deltas(b)
    dt = min(dt, time.perf_counter() - t0)
bb = book.best_bid_price(); ba = book.best_ask_price()
print(json.dumps({"seconds": dt, "updates": len(stream) * reps, "version": __import__("nautilus_trader").__version__,
                  "best_bid": str(bb), "best_ask": str(ba)}))
'''


@nb.njit(cache=True, nogil=True)
def _kernel_apply(keys, qtys, count, snap_side, snap_px, snap_qty, side, px, qty, reps):
    """Per repetition: load the snapshot, then apply the stream through book_set_level."""
    n = 0
    for _ in range(reps):
        book_clear(count, 0)
        for i in range(snap_side.shape[0]):
            book_snapshot_append(keys, qtys, count, 0, snap_side[i], snap_px[i], snap_qty[i])
        book_snapshot_finish(keys, qtys, count, 0)
        for i in range(side.shape[0]):
            book_set_level(keys, qtys, count, 0, side[i], px[i], qty[i])
            n += 1
    return n


def load_stream(paths):
    """(snapshot levels, diff-level stream, diffs (U,u) after the snapshot) of the first symbol."""
    s = load_session(iter_session(paths))
    md = s.md[s.md["symbol"] == 0]
    snap_begin = np.flatnonzero(md["kind"] == MD_SNAP_BEGIN)
    if not len(snap_begin):
        raise SystemExit("the recording holds no depth snapshot: cannot build a book to benchmark")
    L = int(md[snap_begin[0]]["last_id"])
    snap = md[(md["kind"] == MD_SNAP_BID) | (md["kind"] == MD_SNAP_ASK)]
    snap = snap[snap["last_id"] == L]
    depth = md[np.isin(md["kind"], (MD_DEPTH_BID, MD_DEPTH_ASK, MD_DEPTH_NONE)) & (md["last_id"] > L)]
    return s.symbols[0], L, snap, depth


def build_inputs(L, snap, depth, reps):
    snap_arr = np.zeros(len(snap), STREAM_DTYPE)
    snap_arr["side"] = np.where(snap["kind"] == MD_SNAP_BID, 0, 1)
    snap_arr["px"] = snap["price"]
    snap_arr["qty"] = snap["qty"]
    lv = depth[depth["kind"] != MD_DEPTH_NONE]
    diff_no = np.cumsum((depth["flags"] & FLAG_BEGIN) != 0) - 1
    stream = np.zeros(len(lv), STREAM_DTYPE)
    stream["side"] = np.where(lv["kind"] == MD_DEPTH_BID, 0, 1)
    stream["px"] = lv["price"]
    stream["qty"] = lv["qty"]
    stream["diff"] = diff_no[depth["kind"] != MD_DEPTH_NONE]
    # md records for the worker entry point: each repetition is a feed reconnect,
    # the snapshot again, then the recorded diffs (which bridge it, as recorded)
    snap_md = md_snapshot(0, L, [(int(p), int(q)) for s, p, q, _ in snap_arr if s == 0],
                          [(int(p), int(q)) for s, p, q, _ in snap_arr if s == 1])
    one = np.concatenate([md_status(0, STATUS_RECONNECTED), snap_md, depth])
    one["symbol"] = 0
    md = np.concatenate([one] * reps)
    return snap_arr, stream, snap_md, md


def run_kernel(snap_arr, stream, reps):
    keys, qtys, count = alloc_book(1, 8192)
    side = stream["side"].astype(np.int64)
    px = stream["px"].copy()
    qty = stream["qty"].copy()
    ss = snap_arr["side"].astype(np.int64)
    sp = snap_arr["px"].copy()
    sq = snap_arr["qty"].copy()
    _kernel_apply(keys, qtys, count, ss, sp, sq, side[:10], px[:10], qty[:10], 1)  # warm up (compile)
    t0 = time.perf_counter()
    n = _kernel_apply(keys, qtys, count, ss, sp, sq, side, px, qty, reps)
    dt = time.perf_counter() - t0
    return n, dt, tuple(int(v) for v in book_top(keys, qtys, count, 0))


def run_engine(snap_md, md, n_updates):
    def fresh():
        return BookEngine(BookConfig(n_symbols=1, depth_throttle_ms=-1), out_capacity=65536)
    fresh().process_all(md[:20000])  # warm up
    e = fresh()
    t0 = time.perf_counter()
    i = 0
    while i < len(md):  # batches as the worker would take them from the ring
        c, _ = e.process(md[i:i + 4096])
        i += c
    dt = time.perf_counter() - t0
    c = e.counters(0)
    assert e.is_valid(0) and c["chain_breaks"] == 0 and c["crossed"] == 0, c
    return n_updates, dt, e.top(0)


def run_dict(snap_arr, stream, reps):
    snap_rows = snap_arr.tolist()
    rows = stream.tolist()
    bounds = np.flatnonzero(np.diff(stream["diff"])) + 1
    ends = set((bounds - 1).tolist()) | {len(rows) - 1}
    top = None
    t0 = time.perf_counter()
    for _ in range(reps):
        bids, asks = {}, {}
        for s, p, q, _d in snap_rows:
            (bids if s == 0 else asks)[p] = q
        for i, (s, p, q, _d) in enumerate(rows):
            book = bids if s == 0 else asks
            if q == 0:
                book.pop(p, None)
            else:
                book[p] = q
            if i in ends:
                bb = max(bids)
                ba = min(asks)
                top = (bb, bids[bb], ba, asks[ba])
    dt = time.perf_counter() - t0
    return len(rows) * reps, dt, top


def ensure_bench_venv(log) -> str | None:
    """Create .bench-venv with nautilus-trader if needed; returns None or why it is unavailable."""
    py = BENCH_VENV / "bin" / "python"
    try:
        if not py.exists():
            log("creating .bench-venv with nautilus-trader (one-off, a few minutes)...")
            venv.EnvBuilder(with_pip=True, clear=True).create(BENCH_VENV)
        chk = subprocess.run([str(py), "-c", "import nautilus_trader, numpy"], capture_output=True, text=True)
        if chk.returncode != 0:
            inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "nautilus_trader", "numpy"],
                                  capture_output=True, text=True, timeout=900)
            if inst.returncode != 0:
                return "pip install failed: " + (inst.stderr.strip().splitlines() or ["?"])[-1]
            chk = subprocess.run([str(py), "-c", "import nautilus_trader, numpy"], capture_output=True, text=True)
            if chk.returncode != 0:
                return "import failed: " + (chk.stderr.strip().splitlines() or ["?"])[-1]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_nautilus(snap_arr, stream, reps, repeat, log):
    why = ensure_bench_venv(log)
    if why:
        return None, why
    with tempfile.TemporaryDirectory(prefix="bench_book_") as tmp:
        sp = Path(tmp) / "snap.npy"
        st = Path(tmp) / "stream.npy"
        cp = Path(tmp) / "child.py"
        np.save(sp, snap_arr)
        np.save(st, stream)
        cp.write_text(NAUTILUS_CHILD)
        try:
            r = subprocess.run([str(BENCH_VENV / "bin" / "python"), str(cp), str(sp), str(st), str(reps), str(repeat)],
                               capture_output=True, text=True, timeout=1800)
        except subprocess.SubprocessError as exc:
            return None, f"{type(exc).__name__}: {exc}"
    if r.returncode != 0:
        return None, "run failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return orjson.loads(r.stdout.strip().splitlines()[-1]), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=2_000_000, help="level updates per implementation (approx.)")
    ap.add_argument("--recording", action="append", help="recording file(s) of one session (default: ETHUSDT 2024)")
    ap.add_argument("--no-nautilus", action="store_true", help="skip the NautilusTrader comparison")
    ap.add_argument("--repeat", type=int, default=3, help="runs per implementation; the fastest counts (shared hosts are noisy)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    paths = [Path(p) for p in args.recording] if args.recording else DEFAULT_RECORDING
    symbol, L, snap, depth = load_stream(paths)
    n_levels = int((depth["kind"] != MD_DEPTH_NONE).sum())
    reps = max(1, -(-args.updates // n_levels))
    snap_arr, stream, snap_md, md = build_inputs(L, snap, depth, reps)
    n_total = len(stream) * reps
    log(f"stream: {symbol} {n_levels} recorded level updates in {int(depth['flags'].__and__(FLAG_END).astype(bool).sum())}"
        f" diffs, snapshot {len(snap_arr)} levels, x{reps} = {n_total} updates")

    results = []
    tops = {}

    def best_of(name, fn):
        runs = [fn() for _ in range(max(1, args.repeat))]
        n, dt, top = min(runs, key=lambda r: r[1])
        results.append({"name": name, "updates": n, "seconds": dt, "updates_per_s": n / dt})
        tops[name] = top

    best_of("ringtrader book_set_level", lambda: run_kernel(snap_arr, stream, reps))
    best_of("ringtrader process_md_batch", lambda: run_engine(snap_md, md, n_total))
    best_of("python dict book", lambda: run_dict(snap_arr, stream, reps))
    nautilus_note = None
    if args.no_nautilus:
        nautilus_note = "skipped (--no-nautilus)"
    else:
        res, why = run_nautilus(snap_arr, stream, reps, max(1, args.repeat), log)
        if res is None:
            nautilus_note = why
            log(f"nautilus-trader unavailable: {why}")
        else:
            results.append({"name": f"nautilus OrderBook L2_MBP {res['version']}", "updates": res["updates"],
                            "seconds": res["seconds"], "updates_per_s": res["updates"] / res["seconds"]})
            S = 10**8
            ref = tops["ringtrader book_set_level"]
            want = (f"{ref[0] // S}.{ref[0] % S:08d}", f"{ref[2] // S}.{ref[2] % S:08d}")
            got = (res["best_bid"], res["best_ask"])
            if tuple(str(float(x)) for x in got) != tuple(str(float(x)) for x in want):
                log(f"WARNING: nautilus final top {got} != ringtrader {want}")
    ref = tops["ringtrader book_set_level"]
    for name, t in tops.items():
        if t != ref:
            log(f"WARNING: {name} final top {t} != {ref}")

    naut = next((r for r in results if r["name"].startswith("nautilus")), None)
    dict_r = next(r for r in results if r["name"] == "python dict book")
    for r in results:
        r["vs_dict"] = r["updates_per_s"] / dict_r["updates_per_s"]
        r["vs_nautilus"] = r["updates_per_s"] / naut["updates_per_s"] if naut else None
    if args.json:
        out = {"symbol": symbol, "updates": n_total, "recorded_level_updates": n_levels, "repetitions": reps,
               "implementations": [{"name": r["name"], "updates_per_s": r["updates_per_s"], "seconds": r["seconds"],
                                    "vs_nautilus": r["vs_nautilus"], "vs_dict": r["vs_dict"]} for r in results],
               "nautilus": "ok" if naut else f"unavailable: {nautilus_note}"}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    w = max(len(r["name"]) for r in results)
    print(f"{'implementation'.ljust(w)}  {'updates':>10}  {'seconds':>8}  {'updates/s':>12}  {'vs nautilus':>11}  {'vs dict':>8}")
    for r in results:
        vn = f"{r['vs_nautilus']:.2f}x" if r["vs_nautilus"] is not None else "n/a"
        print(f"{r['name'].ljust(w)}  {r['updates']:>10}  {r['seconds']:>8.3f}  {r['updates_per_s']:>12,.0f}  "
              f"{vn:>11}  {r['vs_dict']:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

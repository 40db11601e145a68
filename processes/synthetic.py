"""Seeded synthetic market-event source: MD_EVENT records at a configured rate.

A permanent source for latency profiling and offline runs (config
``market_data.source = "synthetic"``); the real feed uses it in place of the
WebSocket. It emits exactly what the feed emits for Binance, so the book
worker treats it like the exchange:

- at start (and on ``snapshot(symbol)``, e.g. after a resync request) a
  snapshot: ``MD_SNAP_BEGIN`` (aux = level count), the levels, ``MD_SNAP_END``,
  all with ``last_id = lastUpdateId``;
- depth diffs that chain (``U = previous u + 1``, one update id per diff),
  framed with FLAG_BEGIN/FLAG_END; a diff carries the new absolute quantity of
  one or two levels (0 removes);
- trades (``MD_TRADE``) at the best bid or ask, each followed by the diff
  that shrinks (or removes) the traded level.

Model (per symbol): quantities in lots on a window of ``W`` price ticks; every
tick below ``split`` is a bid level, every tick at or above it an ask level,
so the book can never cross. Events: a quantity change on one of the top
``depth_levels`` levels of a side (60 %), a trade (25 %), or a one-tick move
of the mid (15 %: the best level of one side is removed and that price
becomes a level of the other side, in one diff). The same seed gives the same
sequence of records.

Generation runs in one numba kernel per batch over preallocated state; the
Python class only paces it (``rate_per_s`` records per second of
CLOCK_MONOTONIC) and stamps ``recv_ns``/``pub_ns``.
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np

from core.records import (
    FLAG_BEGIN,
    FLAG_BUYER_MAKER,
    FLAG_END,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_EVENT,
    MD_SNAP_ASK,
    MD_SNAP_BEGIN,
    MD_SNAP_BID,
    MD_SNAP_END,
    MD_TRADE,
)

WINDOW = 1024  # price ticks modelled per symbol
MAX_LOTS = 1000  # a level holds 1..MAX_LOTS lots
MAX_RECORDS_PER_EVENT = 2  # the largest message (a mid move, or a trade + its diff) has 2 records

# state columns (int64 per symbol)
S_SPLIT = 0  # first ask tick
S_UPDATE_ID = 1  # last depth update id sent (u)
S_TRADE_ID = 2  # last trade id sent
S_NCOLS = 3


@nb.njit(cache=True, inline="always")
def _next(rng):
    """xorshift64*: one uint64 step of the generator state held in rng[0]."""
    x = rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng[0] = x
    return x * np.uint64(0x2545F4914F6CDD1D)


@nb.njit(cache=True, inline="always")
def _below(rng, n):
    """Uniform int in [0, n)."""
    return np.int64((_next(rng) >> np.uint64(11)) % np.uint64(n))


@nb.njit(cache=True, inline="always")
def _put(out, k, sym, kind, flags, first_id, last_id, px, qty, exch_ms):
    r = out[k]
    r.recv_ns = 0
    r.pub_ns = 0
    r.exch_ms = exch_ms
    r.first_id = first_id
    r.last_id = last_id
    r.price = px
    r.qty = qty
    r.symbol = sym
    r.kind = kind
    r.flags = flags
    r.aux = 0


@nb.njit(cache=True)
def nb_generate(qty, state, rng, params, out, n_max, exch_ms):
    """Append up to ``n_max`` records of whole messages to ``out``; returns the count.

    ``qty[s, tick]`` lots per level; ``state[s, S_*]``; ``rng[0]`` generator
    state; ``params = [n_symbols, depth, base_px, tick, lot, window]``.
    """
    n_sym = params[0]
    depth = params[1]
    base_px = params[2]
    tick = params[3]
    lot = params[4]
    window = params[5]
    k = 0
    while k + MAX_RECORDS_PER_EVENT <= n_max:
        s = _below(rng, n_sym)
        split = state[s, S_SPLIT]
        roll = _below(rng, 100)
        u = state[s, S_UPDATE_ID] + 1
        if roll < 60:
            # quantity change on one of the top `depth` levels
            is_bid = _below(rng, 2) == 0
            off = _below(rng, depth)
            t = split - 1 - off if is_bid else split + off
            if t < 0 or t >= window:
                continue
            q = 1 + _below(rng, MAX_LOTS)
            if _below(rng, 10) == 0:
                q = 0
            qty[s, t] = q
            _put(out, k, s, MD_DEPTH_BID if is_bid else MD_DEPTH_ASK, FLAG_BEGIN | FLAG_END, u, u,
                 base_px + (t - window // 2) * tick, q * lot, exch_ms)
            k += 1
            state[s, S_UPDATE_ID] = u
        elif roll < 85:
            # trade against the best level of one side, then the diff that shrinks it
            buyer_maker = _below(rng, 2) == 0  # aggressor sold: trade at the best bid
            t = split - 1
            if not buyer_maker:
                t = split
            while 0 <= t < window and qty[s, t] == 0:
                t = t - 1 if buyer_maker else t + 1
            if t < 0 or t >= window:
                continue
            traded = 1 + _below(rng, qty[s, t])
            tid = state[s, S_TRADE_ID] + 1
            state[s, S_TRADE_ID] = tid
            px = base_px + (t - window // 2) * tick
            _put(out, k, s, MD_TRADE, FLAG_BEGIN | FLAG_END | (FLAG_BUYER_MAKER if buyer_maker else 0),
                 tid, tid, px, traded * lot, exch_ms)
            qty[s, t] -= traded
            _put(out, k + 1, s, MD_DEPTH_BID if buyer_maker else MD_DEPTH_ASK, FLAG_BEGIN | FLAG_END, u, u,
                 px, qty[s, t] * lot, exch_ms)
            k += 2
            state[s, S_UPDATE_ID] = u
        else:
            # mid moves one tick: the best level of one side flips to the other side
            up = _below(rng, 2) == 0
            if split <= depth + 1:
                up = True
            if split >= window - depth - 1:
                up = False
            q = 1 + _below(rng, MAX_LOTS)
            if up:
                t = split  # ask level at `split` is removed; that price becomes the best bid
                qty[s, t] = q
                _put(out, k, s, MD_DEPTH_BID, FLAG_BEGIN, u, u, base_px + (t - window // 2) * tick, q * lot, exch_ms)
                _put(out, k + 1, s, MD_DEPTH_ASK, FLAG_END, u, u, base_px + (t - window // 2) * tick, 0, exch_ms)
                state[s, S_SPLIT] = split + 1
            else:
                t = split - 1  # best bid removed; that price becomes the best ask
                qty[s, t] = q
                _put(out, k, s, MD_DEPTH_BID, FLAG_BEGIN, u, u, base_px + (t - window // 2) * tick, 0, exch_ms)
                _put(out, k + 1, s, MD_DEPTH_ASK, FLAG_END, u, u, base_px + (t - window // 2) * tick, q * lot, exch_ms)
                state[s, S_SPLIT] = split - 1
            k += 2
            state[s, S_UPDATE_ID] = u
    return k


@nb.njit(cache=True)
def nb_snapshot(qty, state, params, s, out, exch_ms):
    """Write symbol ``s``'s full book as a snapshot message into ``out``; returns the count."""
    base_px = params[2]
    tick = params[3]
    lot = params[4]
    window = params[5]
    split = state[s, S_SPLIT]
    last = state[s, S_UPDATE_ID]
    levels = 0
    for t in range(window):
        if qty[s, t] > 0:
            levels += 1
    _put(out, 0, s, MD_SNAP_BEGIN, FLAG_BEGIN, last, last, 0, 0, exch_ms)
    out[0].aux = levels
    k = 1
    for t in range(split - 1, -1, -1):  # bids best first
        if qty[s, t] > 0:
            _put(out, k, s, MD_SNAP_BID, 0, last, last, base_px + (t - window // 2) * tick, qty[s, t] * lot, exch_ms)
            k += 1
    for t in range(split, window):  # asks best first
        if qty[s, t] > 0:
            _put(out, k, s, MD_SNAP_ASK, 0, last, last, base_px + (t - window // 2) * tick, qty[s, t] * lot, exch_ms)
            k += 1
    _put(out, k, s, MD_SNAP_END, FLAG_END, last, last, 0, 0, exch_ms)
    return k + 1


class SyntheticSource:
    """Paced, seeded generator of MD_EVENT batches for ``n_symbols`` instruments.

    ``poll(out)`` fills ``out`` with the records due by now (at most
    ``len(out)``, whole messages only) and stamps ``recv_ns`` (when the batch
    was generated) — the caller stamps ``pub_ns`` as it publishes.
    """

    def __init__(self, n_symbols: int, *, rate_per_s: int, seed: int, depth_levels: int = 20,
                 start_price: int = 100 * 10**8, tick_size: int = 10**6, lot_size: int = 10**3,
                 clock=time.monotonic_ns):
        if n_symbols < 1:
            raise ValueError(f"SyntheticSource: n_symbols must be >= 1, got {n_symbols}")
        depth = min(depth_levels, WINDOW // 4)
        # keep the lowest price of the window positive
        base = max(start_price, (WINDOW // 2 + 1) * tick_size)
        self.params = np.array([n_symbols, depth, base, tick_size, lot_size, WINDOW], np.int64)
        self.qty = np.zeros((n_symbols, WINDOW), np.int64)
        self.state = np.zeros((n_symbols, S_NCOLS), np.int64)
        self.state[:, S_SPLIT] = WINDOW // 2
        self.rng = np.array([((seed * 0x9E3779B97F4A7C15) | 1) & (2**64 - 1)], np.uint64)  # never 0: xorshift sticks at 0
        for s in range(n_symbols):  # a full starting book: `depth` levels each side
            for off in range(depth):
                self.qty[s, WINDOW // 2 - 1 - off] = 1 + int(_below(self.rng, MAX_LOTS))
                self.qty[s, WINDOW // 2 + off] = 1 + int(_below(self.rng, MAX_LOTS))
        self.rate_per_s = rate_per_s
        self.clock = clock
        self.n_symbols = n_symbols
        self.emitted = 0
        self._t0 = 0

    def start(self) -> None:
        """Start the pacing clock (records become due from now on)."""
        self._t0 = self.clock()
        self.emitted = 0

    def due(self) -> int:
        """Records due now and not yet emitted."""
        return (self.clock() - self._t0) * self.rate_per_s // 1_000_000_000 - self.emitted

    def poll(self, out: np.ndarray) -> int:
        """Generate the records due now into ``out`` (at most ``len(out)``); returns the count."""
        n = min(self.due(), len(out))
        if n < MAX_RECORDS_PER_EVENT:
            return 0
        return self.generate(out, n)

    def generate(self, out: np.ndarray, n: int) -> int:
        """Generate up to ``n`` records (whole messages) into ``out`` regardless of pacing."""
        now = self.clock()
        k = nb_generate(self.qty, self.state, self.rng, self.params, out, min(n, len(out)), time.time_ns() // 1_000_000)
        out["recv_ns"][:k] = now
        self.emitted += k
        return k

    def snapshot(self, symbol: int, out: np.ndarray | None = None) -> np.ndarray:
        """Symbol's current book as a snapshot message (a new array unless ``out`` is given)."""
        if out is None:
            out = np.zeros(WINDOW + 2, MD_EVENT)
        k = nb_snapshot(self.qty, self.state, self.params, symbol, out, time.time_ns() // 1_000_000)
        out["recv_ns"][:k] = self.clock()
        return out[:k]

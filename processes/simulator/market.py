"""Seeded market generator: order flow on exact integer books, as Binance would stream it.

Per symbol a latent fair price does a random walk; Poisson-distributed events
(adds, cancels, taker trades) hit the book near the top mostly and anywhere in
its ``depth_levels`` sometimes (see market_kernels.py). One ``step()`` generates
one ``tick_ms`` of flow for every symbol and returns, per symbol, the level
changes (with their book update ids), the trades and the top-of-book changes.
``DepthAccumulator`` folds level changes into Binance diffs (final absolute
quantity per changed level, ``U`` = first update id, ``u`` = last).

Prices and quantities stay integers (ticks, lots) until they are formatted for
the wire with ``Formatter``; ``FIXED_SCALE`` fixed point is the bridge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.fixedpoint import to_fixed
from core.records import FIXED_DECIMALS, FIXED_SCALE
from processes.simulator import market_kernels as mk
from processes.simulator.config import SymbolSpec

FIRST_UPDATE_ID = 1_000_000_000  # realistic magnitudes, so clients are tested with big ids
FIRST_TRADE_ID = 300_000_000
FIRST_AGG_ID = 100_000_000
FILL_PROBABILITY = 0.85  # share of ticks within depth_levels holding a level at start
MEAN_ORDER_NOTIONAL = 2_000  # quote units; sets the mean order size in lots
WALK_TICKS_PER_SQRT_S = 3.0  # volatility of the fair price, in ticks per sqrt(second)
P_ADD = 0.47
P_CANCEL = 0.41  # trades are the rest (12 %)


_FORMAT_CACHE_MAX = 16_384  # per formatter: quantities rarely repeat, and a 200k cap held ~40 MB each for hours


class Formatter:
    """Integer ticks/lots -> the decimal strings Binance sends (``"61837.63000000"``)."""

    def __init__(self, unit_fx: int, decimals: int):
        self.unit_fx = unit_fx
        self.decimals = decimals
        self._div = 10 ** (FIXED_DECIMALS - decimals)
        self._fdiv = 10**decimals
        self._cache: dict[int, str] = {}

    def __call__(self, units: int) -> str:
        s = self._cache.get(units)
        if s is None:
            v = units * self.unit_fx // self._div
            if self.decimals:
                whole, frac = divmod(v, self._fdiv)
                s = f"{whole}.{frac:0{self.decimals}d}"
            else:
                s = str(v)
            if len(self._cache) >= _FORMAT_CACHE_MAX:  # quantities rarely repeat and the walk wanders: keep it small
                self._cache.clear()
            self._cache[units] = s
        return s


@dataclass(slots=True)
class SymbolFlow:
    """What one symbol did during one generation step (numpy views, valid until the next step)."""

    symbol: str
    changes: np.ndarray  # int64 [n, CHG_COLS]
    trades: np.ndarray  # int64 [n, TRD_COLS]
    tops: np.ndarray  # int64 [n, TOP_COLS]
    events: int  # level changes + trades generated
    last_update_id: int  # book update id after the step


class SymbolBook:
    """One symbol's ladders, state vector and random stream."""

    def __init__(self, spec: SymbolSpec, *, seed: int, depth_levels: int, wire_decimals: int):
        self.spec = spec
        self.symbol = spec.symbol
        self.tick_fx = to_fixed(spec.tick_size)
        self.step_fx = to_fixed(spec.step_size)
        self.price_str = Formatter(self.tick_fx, wire_decimals)
        self.qty_str = Formatter(self.step_fx, wire_decimals)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        d = depth_levels
        # window: both sides' ranges plus room for the walk before a re-centre
        self.n = 4 * d + 4096
        self.bid = np.zeros(self.n, np.int64)
        self.ask = np.zeros(self.n, np.int64)
        self.st = np.zeros(mk.ST_SIZE, np.int64)
        start_ticks = to_fixed(spec.start_price) // self.tick_fx
        mid = self.n // 2
        st = self.st
        st[mk.ST_BASE] = start_ticks - mid
        st[mk.ST_BB] = mid - 1
        st[mk.ST_BA] = mid
        st[mk.ST_UID] = FIRST_UPDATE_ID
        st[mk.ST_TID] = FIRST_TRADE_ID
        st[mk.ST_AID] = FIRST_AGG_ID
        st[mk.ST_D] = d
        price_fx = to_fixed(spec.start_price)
        st[mk.ST_QMEAN] = max(1, MEAN_ORDER_NOTIONAL * FIXED_SCALE * FIXED_SCALE // (price_fx * self.step_fx))
        st[mk.ST_TOP_BB] = -1
        qmean = float(st[mk.ST_QMEAN])
        present = self.rng.random((2, d)) < FILL_PROBABILITY
        present[:, 0] = True  # the top levels exist
        sizes = (-np.log1p(-self.rng.random((2, d))) * qmean).astype(np.int64) + 1
        self.bid[mid - 1 - np.arange(d)] = np.where(present[0], sizes[0], 0)
        self.ask[mid + np.arange(d)] = np.where(present[1], sizes[1], 0)
        self.fair = float(mid) - 0.5  # ladder index units (fractional)
        self.walk_sigma_tick = 0.0
        # output buffers, grown on demand
        self._chg = np.zeros((0, mk.CHG_COLS), np.int64)
        self._trd = np.zeros((0, mk.TRD_COLS), np.int64)
        self._top = np.zeros((0, mk.TOP_COLS), np.int64)
        self._counts = np.zeros(mk.CNT_SIZE, np.int64)

    # -- state --------------------------------------------------------------
    @property
    def update_id(self) -> int:
        return int(self.st[mk.ST_UID])

    def best(self) -> tuple[int, int, int, int]:
        """(best bid ticks, qty lots, best ask ticks, qty lots)."""
        st = self.st
        base, bb, ba = int(st[mk.ST_BASE]), int(st[mk.ST_BB]), int(st[mk.ST_BA])
        return base + bb, int(self.bid[bb]), base + ba, int(self.ask[ba])

    def levels(self, limit: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top ``limit`` levels per side as (ticks, lots), best first."""
        st = self.st
        d = int(st[mk.ST_D])
        limit = max(0, min(limit, d))
        out_p = np.empty(limit, np.int64)
        out_q = np.empty(limit, np.int64)
        base = int(st[mk.ST_BASE])
        nb_ = mk.snapshot_side(self.bid, int(st[mk.ST_BB]), d, -1, limit, base, out_p, out_q)
        bids = list(zip(out_p[:nb_].tolist(), out_q[:nb_].tolist()))
        na = mk.snapshot_side(self.ask, int(st[mk.ST_BA]), d, 1, limit, base, out_p, out_q)
        asks = list(zip(out_p[:na].tolist(), out_q[:na].tolist()))
        return bids, asks

    def _recentre(self) -> None:
        st = self.st
        shift = int((st[mk.ST_BB] + st[mk.ST_BA]) // 2) - self.n // 2
        if shift == 0:
            return
        for arr in (self.bid, self.ask):
            moved = np.zeros_like(arr)
            if shift > 0:
                moved[: self.n - shift] = arr[shift:]
            else:
                moved[-shift:] = arr[: self.n + shift]
            arr[:] = moved
        st[mk.ST_BASE] += shift
        st[mk.ST_BB] -= shift
        st[mk.ST_BA] -= shift
        st[mk.ST_TOP_BB] -= shift
        st[mk.ST_TOP_BA] -= shift
        self.fair -= shift

    # -- generation -----------------------------------------------------------
    def step(self, n_events: int, t0_ms: int, tick_ms: int) -> SymbolFlow:
        rng = self.rng
        st = self.st
        # the latent fair price: a random walk, loosely tied to the book so the two never drift apart
        mid = 0.5 * (st[mk.ST_BB] + st[mk.ST_BA])
        self.fair += rng.normal(0.0, WALK_TICKS_PER_SQRT_S * math.sqrt(tick_ms / 1000.0))
        self.fair += 0.05 * (mid - self.fair)
        ev_ms = np.sort(rng.integers(t0_ms, t0_ms + tick_ms, n_events, dtype=np.int64)) if n_events else np.zeros(0, np.int64)
        d = int(st[mk.ST_D])
        chg_cap = n_events * 20 + 4 * d + 1024
        trd_cap = n_events * 16 + 64
        if self._chg.shape[0] < chg_cap:
            self._chg = np.zeros((chg_cap, mk.CHG_COLS), np.int64)
            self._top = np.zeros((chg_cap, mk.TOP_COLS), np.int64)
        if self._trd.shape[0] < trd_cap:
            self._trd = np.zeros((trd_cap, mk.TRD_COLS), np.int64)
        counts = self._counts
        counts[:] = 0
        rnd = rng.random(n_events * 12 + mk.RND_PER_EVENT_MAX * 2)
        stalls = 0
        while counts[mk.CNT_EVENTS] < n_events:
            before = int(counts[mk.CNT_EVENTS])
            mk.gen_events(
                self.bid, self.ask, st, self.fair, P_ADD, P_CANCEL, rnd, ev_ms, n_events,
                self._chg, self._trd, self._top, counts,
            )  # fmt: skip
            if counts[mk.CNT_EVENTS] >= n_events:
                break
            # it stopped early: window edge, or random numbers / outputs ran short
            if counts[mk.CNT_RND] + mk.RND_PER_EVENT_MAX > rnd.shape[0]:
                rnd = np.concatenate([rnd[: counts[mk.CNT_RND]], rng.random(n_events * 12 + 1024)])
            self._recentre()
            if counts[mk.CNT_EVENTS] == before:
                stalls += 1
                if stalls > 3:  # output arrays are full: the rest of the budget goes to the next step
                    break
        n_chg, n_trd, n_top = int(counts[mk.CNT_CHG]), int(counts[mk.CNT_TRD]), int(counts[mk.CNT_TOP])
        return SymbolFlow(
            symbol=self.symbol,
            changes=self._chg[:n_chg],
            trades=self._trd[:n_trd],
            tops=self._top[:n_top],
            events=n_chg + n_trd,
            last_update_id=self.update_id,
        )


class MarketGenerator:
    """All simulated symbols; ``step(now_ms)`` makes one ``tick_ms`` of flow for each."""

    def __init__(self, specs: list[SymbolSpec], *, seed: int = 42, rate: float = 2000.0,
                 depth_levels: int = 1000, tick_ms: int = 100, wire_decimals: int = 8):  # fmt: skip
        self.tick_ms = tick_ms
        self.rate = rate
        self.books: dict[str, SymbolBook] = {}
        for i, spec in enumerate(specs):
            self.books[spec.symbol] = SymbolBook(
                spec, seed=seed * 1_000_003 + i, depth_levels=depth_levels, wire_decimals=wire_decimals
            )
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self.events_total = 0

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def step(self, t0_ms: int, duration_ms: int | None = None) -> list[SymbolFlow]:
        """Generate ``duration_ms`` (default one tick) of flow that starts at exchange time ``t0_ms``.

        Events per step are Poisson with mean rate * duration * (approx. 1.14: the
        share of events that produce a level change or trade), split evenly over symbols.
        """
        dur = self.tick_ms if duration_ms is None else duration_ms
        # An event is one add/cancel/taker order; a taker order makes >1 changes+trades.
        # Scale so that (level changes + trades) per second ~= rate.
        lam = self.rate * dur / 1000.0 / len(self.books) / EVENTS_PER_ATTEMPT
        out = []
        for book in self.books.values():
            n = int(self._rng.poisson(lam))
            flow = book.step(n, t0_ms, dur)
            self.events_total += flow.events
            out.append(flow)
        return out


# Measured mean of (level changes + trades) per kernel event with the default mix
# (taker orders make ~5 changes+trades; trims add a few). Used only to hit the rate.
EVENTS_PER_ATTEMPT = 1.34


class DepthAccumulator:
    """Folds level changes into one Binance diff per period (100 ms or 1000 ms)."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []

    def add(self, changes: np.ndarray) -> None:
        if changes.shape[0]:
            self._parts.append(changes.copy())

    def take(self) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """(U, u, bids, asks) with the final absolute qty of each changed level, or None.

        bids: int64 [n, 2] (ticks, lots) by price descending; asks ascending.
        """
        if not self._parts:
            return None
        rows = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        self._parts = []
        first_u = int(rows[0, mk.CHG_UID])
        last_u = int(rows[-1, mk.CHG_UID])
        # last write wins: unique keys over the reversed rows give each key's last occurrence
        keys = rows[:, mk.CHG_PRICE] * 2 + rows[:, mk.CHG_SIDE]
        _, idx_rev = np.unique(keys[::-1], return_index=True)
        final = rows[rows.shape[0] - 1 - idx_rev]
        is_bid = final[:, mk.CHG_SIDE] == mk.SIDE_BID
        bids = final[is_bid][:, [mk.CHG_PRICE, mk.CHG_QTY]]
        asks = final[~is_bid][:, [mk.CHG_PRICE, mk.CHG_QTY]]
        bids = bids[np.argsort(-bids[:, 0], kind="stable")]
        asks = asks[np.argsort(asks[:, 0], kind="stable")]
        return first_u, last_u, bids, asks

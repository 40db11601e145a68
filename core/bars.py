"""Time-bar (kline) aggregation kernels over trades.

State: one int64 row per (symbol, interval) in ``bars[n_symbols, n_intervals,
BAR_NCOLS]``; the interval lengths are ``intervals_ms[n_intervals]``. A bar
covers ``[open_ms, open_ms + interval)`` by EXCHANGE trade time ``T`` (UTC
epoch ms, aligned to multiples of the interval, exactly like Binance klines),
so the fields equal Binance's kline fields when built from the same trades:

    open/high/low/close   trade prices (fixed point)
    volume                sum(qty)                               kline v
    quote_volume          sum(price*qty), exact, truncated to 1e-8  kline q
    taker_buy_base        sum(qty) where the buyer was the taker   kline V
    taker_buy_quote       sum(price*qty) where the buyer was taker kline Q
    trades                number of trades (aggTrade: l - f + 1)   kline n
    first/last trade id                                           kline f / L
    vwap                  quote_volume / volume (float analytics)

Exact quote volume: ``p`` and ``q`` are 1e8-scaled int64, so ``p*q`` is
1e16-scaled and overflows int64 for ordinary BTC trades. Each factor is split
as ``x = xh*1e8 + xl``; then ``p*q/1e8 = ph*qh*1e8 + ph*ql + pl*qh + pl*ql/1e8``
where every partial product fits int64, the last term's integer part joins the
whole accumulator and its remainder (< 1e8) goes to a remainder accumulator
that carries into the whole one. The sum is exact until it is reported, where
the sub-1e-8 remainder is truncated.

Closing: a bar closes when a trade with ``T >= open + interval`` arrives, or
when ``bar_on_timer`` sees ``now_exch_ms >= open + interval + watermark``
(no trade needs to follow). A trade older than the open bar (it arrived after
the timer closed its bar) is counted as late and left out of the bars; it is
still forwarded as a trade.

Empty intervals (documented choice, as Binance's klines do): an interval with
no trade after the symbol's first trade yields a bar with open = high = low =
close = previous close, zero volumes, ``trades = 0``, first/last trade id -1
and VWAP NaN, when ``emit_empty`` is set; otherwise it is skipped silently.
Before a symbol's first trade no bar exists.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from core.records import BK_BAR, FIXED_SCALE

# bar row columns
B_OPEN_MS = 0  # open time of the current bar, -1 before the first trade
B_O = 1
B_H = 2
B_L = 3
B_C = 4
B_VOL = 5
B_QV = 6  # quote volume, whole 1e-8 units
B_QV_REM = 7  # quote volume remainder, 1e-16 units (< 1e8)
B_TBB = 8
B_TBQ = 9
B_TBQ_REM = 10
B_N = 11  # trade count
B_FIRST = 12
B_LAST = 13
B_PREV_CLOSE = 14  # close of the last non-empty bar (0 before any)
B_LATE = 15  # trades that arrived after their bar closed
B_CLOSED = 16  # bars closed (published or skipped empty ones)
BAR_NCOLS = 17

_S = np.int64(FIXED_SCALE)


def alloc_bars(n_symbols: int, n_intervals: int) -> np.ndarray:
    bars = np.zeros((n_symbols, n_intervals, BAR_NCOLS), dtype=np.int64)
    bars[:, :, B_OPEN_MS] = -1
    bars[:, :, B_FIRST] = -1
    bars[:, :, B_LAST] = -1
    return bars


@nb.njit(cache=True, nogil=True, inline="always")
def mul_fixed(p, q):
    """Exact p*q/1e8 for non-negative 1e8-scaled p, q: (whole 1e-8 units, remainder in 1e-16 units)."""
    ph = p // _S
    pl = p - ph * _S
    qh = q // _S
    ql = q - qh * _S
    low = pl * ql  # < 1e16: fits
    lw = low // _S
    whole = ph * qh * _S + ph * ql + pl * qh + lw
    return whole, low - lw * _S


@nb.njit(cache=True, nogil=True)
def _reset_row(row, open_ms):
    row[B_OPEN_MS] = open_ms
    row[B_O] = 0
    row[B_H] = 0
    row[B_L] = 0
    row[B_C] = 0
    row[B_VOL] = 0
    row[B_QV] = 0
    row[B_QV_REM] = 0
    row[B_TBB] = 0
    row[B_TBQ] = 0
    row[B_TBQ_REM] = 0
    row[B_N] = 0
    row[B_FIRST] = -1
    row[B_LAST] = -1


@nb.njit(cache=True, nogil=True)
def bar_add_trade(row, px, qty, first_id, last_id, buyer_maker):
    """Add one trade (or aggTrade covering trade ids first_id..last_id) to the open bar."""
    if row[B_N] == 0:
        row[B_O] = px
        row[B_H] = px
        row[B_L] = px
        row[B_FIRST] = first_id
    else:
        if px > row[B_H]:
            row[B_H] = px
        if px < row[B_L]:
            row[B_L] = px
    row[B_C] = px
    row[B_LAST] = last_id
    row[B_N] += last_id - first_id + 1
    row[B_VOL] += qty
    w, r = mul_fixed(px, qty)
    row[B_QV] += w
    row[B_QV_REM] += r
    if row[B_QV_REM] >= _S:
        row[B_QV] += 1
        row[B_QV_REM] -= _S
    if not buyer_maker:  # buyer was the taker
        row[B_TBB] += qty
        row[B_TBQ] += w
        row[B_TBQ_REM] += r
        if row[B_TBQ_REM] >= _S:
            row[B_TBQ] += 1
            row[B_TBQ_REM] -= _S


@nb.njit(cache=True, nogil=True)
def bar_write(row, interval_ms, ev):
    """Write the open bar of ``row`` into BOOK_EVENT record ``ev`` (payload and kind only)."""
    ev.kind = BK_BAR
    ev.bar_open_ms = row[B_OPEN_MS]
    ev.bar_close_ms = row[B_OPEN_MS] + interval_ms - 1
    ev.bar_interval_ms = interval_ms
    ev.bar_volume = row[B_VOL]
    ev.bar_quote_volume = row[B_QV]
    ev.bar_taker_buy_base = row[B_TBB]
    ev.bar_taker_buy_quote = row[B_TBQ]
    ev.bar_trades = row[B_N]
    ev.bar_first_trade_id = row[B_FIRST]
    ev.bar_last_trade_id = row[B_LAST]
    if row[B_N] > 0:
        ev.bar_open = row[B_O]
        ev.bar_high = row[B_H]
        ev.bar_low = row[B_L]
        ev.bar_close = row[B_C]
        ev.bar_vwap = (row[B_QV] + row[B_QV_REM] / FIXED_SCALE) / row[B_VOL] if row[B_VOL] > 0 else np.nan
    else:
        pc = row[B_PREV_CLOSE]
        ev.bar_open = pc
        ev.bar_high = pc
        ev.bar_low = pc
        ev.bar_close = pc
        ev.bar_vwap = np.nan


@nb.njit(cache=True, nogil=True)
def bar_close_due(row, interval_ms, t_ms):
    """True when the open bar must close before time ``t_ms`` (exchange ms) is handled."""
    return row[B_OPEN_MS] >= 0 and t_ms >= row[B_OPEN_MS] + interval_ms


@nb.njit(cache=True, nogil=True)
def bar_should_publish(row, emit_empty):
    """Whether the open bar, now closing, is published: it had trades, or it is
    empty, empty bars are wanted and a previous close exists to fill it with."""
    return row[B_N] > 0 or (emit_empty and row[B_PREV_CLOSE] > 0)


@nb.njit(cache=True, nogil=True)
def bar_advance(row, interval_ms, t_ms, emit_empty):
    """Close the open bar and open the next one, towards the bar containing ``t_ms``.

    The caller publishes the closing bar (``bar_write``) BEFORE calling this.
    When empty bars are not published, a run of empty intervals up to the one
    containing ``t_ms`` is skipped in one step.
    """
    if row[B_N] > 0:
        row[B_PREV_CLOSE] = row[B_C]
    nxt = row[B_OPEN_MS] + interval_ms
    if not emit_empty and t_ms >= nxt + interval_ms:
        nxt = t_ms - t_ms % interval_ms
    _reset_row(row, nxt)
    row[B_CLOSED] += 1


@nb.njit(cache=True, nogil=True)
def bar_open_first(row, interval_ms, t_ms):
    """Open the first bar of a symbol at the interval containing ``t_ms``."""
    _reset_row(row, t_ms - t_ms % interval_ms)

"""Time-bar (kline) aggregation kernels over trades.

State: one ``BAR_ROW`` record per (symbol, interval) in ``bars[n_symbols,
n_intervals]`` (named fields: ``row.open_ms``, ``row.high``...); the interval
lengths are ``intervals_ms[n_intervals]``. A bar
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

Time jumps: the work of closing bars is bounded by the bar count, never by how
far time moved. When the time advances past more than ``max_empty`` empty
intervals at once (a trade or timer after a clock jump, a replay that skips a
day, a bad timestamp that got this far), none of those flat bars is emitted:
the bars resynchronise to the interval that contains the new time, and
``bar_advance`` reports the jump so the caller counts it (``bar_gaps_capped``).
A quiet market closed by the timer moves one interval at a time and is never
capped. (Implausible exchange times are dropped before they get here:
``core.decode``'s time gate.)
"""

from __future__ import annotations

import numba as nb
import numpy as np

from core.records import BK_BAR, FIXED_SCALE

# One record per (symbol, interval), declared once here and checked at import.
BAR_ROW = np.dtype([
    ("open_ms", np.int64),  # open time of the current bar, -1 before the first trade
    ("open", np.int64),
    ("high", np.int64),
    ("low", np.int64),
    ("close", np.int64),
    ("volume", np.int64),
    ("quote", np.int64),  # quote volume, whole 1e-8 units
    ("quote_rem", np.int64),  # quote volume remainder, 1e-16 units (< 1e8)
    ("taker_base", np.int64),
    ("taker_quote", np.int64),
    ("taker_quote_rem", np.int64),
    ("trades", np.int64),  # trade count
    ("first_id", np.int64),
    ("last_id", np.int64),
    ("prev_close", np.int64),  # close of the last non-empty bar (0 before any)
    ("closed", np.int64),  # bars closed (published or skipped empty ones)
], align=True)
if BAR_ROW.itemsize != 128:
    raise ImportError(f"BAR_ROW layout drifted: itemsize {BAR_ROW.itemsize}")

_S = np.int64(FIXED_SCALE)


def alloc_bars(n_symbols: int, n_intervals: int) -> np.ndarray:
    bars = np.zeros((n_symbols, n_intervals), dtype=BAR_ROW)
    bars["open_ms"] = -1
    bars["first_id"] = -1
    bars["last_id"] = -1
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
    row.open_ms = open_ms
    row.open = 0
    row.high = 0
    row.low = 0
    row.close = 0
    row.volume = 0
    row.quote = 0
    row.quote_rem = 0
    row.taker_base = 0
    row.taker_quote = 0
    row.taker_quote_rem = 0
    row.trades = 0
    row.first_id = -1
    row.last_id = -1


@nb.njit(cache=True, nogil=True)
def bar_add_trade(row, px, qty, first_id, last_id, buyer_maker):
    """Add one trade (or aggTrade covering trade ids first_id..last_id) to the open bar."""
    if row.trades == 0:
        row.open = px
        row.high = px
        row.low = px
        row.first_id = first_id
    else:
        if px > row.high:
            row.high = px
        if px < row.low:
            row.low = px
    row.close = px
    row.last_id = last_id
    row.trades += last_id - first_id + 1
    row.volume += qty
    w, r = mul_fixed(px, qty)
    row.quote += w
    row.quote_rem += r
    if row.quote_rem >= _S:
        row.quote += 1
        row.quote_rem -= _S
    if not buyer_maker:  # buyer was the taker
        row.taker_base += qty
        row.taker_quote += w
        row.taker_quote_rem += r
        if row.taker_quote_rem >= _S:
            row.taker_quote += 1
            row.taker_quote_rem -= _S


@nb.njit(cache=True, nogil=True)
def bar_write(row, interval_ms, ev):
    """Write the open bar of ``row`` into BOOK_EVENT record ``ev`` (payload and kind only)."""
    ev.kind = BK_BAR
    ev.bar_open_ms = row.open_ms
    ev.bar_close_ms = row.open_ms + interval_ms - 1
    ev.bar_interval_ms = interval_ms
    ev.bar_volume = row.volume
    ev.bar_quote_volume = row.quote
    ev.bar_taker_buy_base = row.taker_base
    ev.bar_taker_buy_quote = row.taker_quote
    ev.bar_trades = row.trades
    ev.bar_first_trade_id = row.first_id
    ev.bar_last_trade_id = row.last_id
    if row.trades > 0:
        ev.bar_open = row.open
        ev.bar_high = row.high
        ev.bar_low = row.low
        ev.bar_close = row.close
        ev.bar_vwap = (row.quote + row.quote_rem / FIXED_SCALE) / row.volume if row.volume > 0 else np.nan
    else:
        pc = row.prev_close
        ev.bar_open = pc
        ev.bar_high = pc
        ev.bar_low = pc
        ev.bar_close = pc
        ev.bar_vwap = np.nan


@nb.njit(cache=True, nogil=True)
def bar_close_due(row, interval_ms, t_ms):
    """True when the open bar must close before time ``t_ms`` (exchange ms) is handled."""
    return row.open_ms >= 0 and t_ms >= row.open_ms + interval_ms


@nb.njit(cache=True, nogil=True)
def bar_should_publish(row, emit_empty):
    """Whether the open bar, now closing, is published: it had trades, or it is
    empty, empty bars are wanted and a previous close exists to fill it with."""
    return row.trades > 0 or (emit_empty and row.prev_close > 0)


@nb.njit(cache=True, nogil=True)
def bar_advance(row, interval_ms, t_ms, emit_empty, max_empty):
    """Close the open bar and open the next one, towards the bar containing ``t_ms``; 1 if a jump was capped.

    The caller publishes the closing bar (``bar_write``) BEFORE calling this.
    When empty bars are not published, a run of empty intervals up to the one
    containing ``t_ms`` is skipped in one step; when they are, a run of more
    than ``max_empty`` of them is skipped in one step too (none emitted) and
    1 is returned (a capped time jump), else 0.
    """
    if row.trades > 0:
        row.prev_close = row.close
    nxt = row.open_ms + interval_ms
    capped = 0
    if t_ms >= nxt + interval_ms:  # at least one empty interval before the one containing t_ms
        target = t_ms - t_ms % interval_ms
        if not emit_empty:
            nxt = target
        elif (target - nxt) // interval_ms > max_empty:
            nxt = target
            capped = 1
    _reset_row(row, nxt)
    row.closed += 1
    return capped


@nb.njit(cache=True, nogil=True)
def bar_open_first(row, interval_ms, t_ms):
    """Open the first bar of a symbol at the interval containing ``t_ms``."""
    _reset_row(row, t_ms - t_ms % interval_ms)

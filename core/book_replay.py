"""Replay a recorded session through the real decoder and book/bar kernels, and check it.

Used by ``scripts/replay_check.py`` and the real-recording tests. Two steps:

1. ``load_session(frames)`` decodes every frame with ``core.decode.Decoder``
   into one MD_EVENT array, exactly what the feed would publish into ``md``
   (a REST snapshot through ``decode_snapshot``; a connection opened after
   the first one becomes an ``MD_STATUS`` ``STATUS_RECONNECTED`` record for
   all symbols). Klines (which the feed does not decode) are parsed with
   orjson on the side.
2. ``check_session(session)`` runs the records through ``BookEngine`` and
   compares, per symbol:

   * the top after every applied diff with the latest recorded bookTicker
     whose ``u <= diff.u`` (``ticker_match`` / ``ticker_mismatch``; a diff
     with no such ticker yet is not compared);
   * every recorded kline whose trade range ``f..L`` the recorded trades
     fully cover with the bar the bar kernels build from exactly those
     trades (a kline with ``x=false`` is a partial bar); a closed kline must
     also equal the bar the live run published (``bars_match`` /
     ``bars_mismatch``). o/h/l/c/v/V/n/f/L must be equal; q/Q within 1e-8.

A recording without a snapshot never yields a valid book: ``valid_tops``
counts BK_TOP events published VALID.

Hostile input in a recording is counted and dropped, and changes no figure
(``tests/core/test_hostile_input.py`` splices every class of
``core.hostile`` between the real frames):

* the symbols are the ones the recording subscribed to: the streams of its
  connect URLs (cryptofeed) when it has any, else the symbols of its REST
  snapshots and those seen in at least ``MIN_SYMBOL_FRAMES`` frames; a frame
  for any other symbol is ``unknown_symbol``. Their order (the symbol ids,
  the rows of the report) is the connect URLs', else the snapshots' then by
  name: never the order frames happen to come in;
* the decoder's receive clock is the recording's (epoch ns), so its
  exchange-time gate also bounds every exchange time against the receive
  time (``RECORDING_SKEW_MS`` either way);
* klines go through ``Decoder.decode_kline`` (the same type, value, symbol
  and time checks as the decoded streams); ``decode_errors`` counts both.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from core.book_worker_kernels import BookConfig, BookEngine
from core.decode import Decoder
from core.records import (
    BOOK_EVENT,
    concat_records,
    BK_BAR,
    BK_TOP,
    BOOK_VALID,
    FLAG_BEGIN,
    FLAG_END,
    MD_AGG_TRADE,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_EVENT,
    MD_STATUS,
    MD_TICKER_ASK,
    MD_TICKER_BID,
    MD_TRADE,
    STATUS_RECONNECTED,
)

ALL_SYMBOLS = 0xFFFF  # MD_STATUS symbol meaning "every symbol"

INTERVAL_MS = {"1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
               "12h": 43_200_000, "1d": 86_400_000}

FIGURES = ("applied", "chain_breaks", "resyncs", "crossed", "ticker_match", "ticker_mismatch",
           "bars_match", "bars_mismatch")

MIN_SYMBOL_FRAMES = 10  # without subscriptions on record, a symbol seen in fewer frames (and no snapshot) was not one
RECORDING_SKEW_MS = 60_000  # exchange time vs the recorder's receive time (the real recordings: -1.3 .. +2.9 s)


@dataclass
class Kline:
    symbol: str
    interval_ms: int
    open_ms: int
    first_id: int
    last_id: int
    closed: bool
    fields: dict  # o h l c v q V Q as fixed point ints, n as int


@dataclass
class Session:
    symbols: list[str]
    md: np.ndarray  # every MD_EVENT record, in receive order
    klines: list[Kline] = field(default_factory=list)
    decode_errors: dict = field(default_factory=dict)


def _kline(f: dict) -> Kline | None:
    """A ``Decoder.decode_kline`` result as a Kline; None for an interval the bar check does not use (3d, 1w)."""
    iv = INTERVAL_MS.get(f["interval"])
    if iv is None:
        return None
    fields = {name: f[name] for name in ("o", "h", "l", "c", "v", "q", "V", "Q")}
    fields["n"] = f["n"]
    return Kline(symbol=f["symbol"], interval_ms=iv, open_ms=f["t"], first_id=f["f"], last_id=f["L"],
                 closed=f["x"], fields=fields)


def _stream_symbols(url: bytes) -> list[str]:
    """Symbols of a combined-stream connect URL (``...?streams=btcusdt@trade/ethusdt@depth``), in its order."""
    _, _, query = url.partition(b"streams=")
    query = query.split(b"&", 1)[0]
    out: dict[str, None] = {}
    for part in query.split(b"/"):
        if b"@" in part:
            out.setdefault(part.split(b"@", 1)[0].decode("ascii", "replace").upper(), None)
    return list(out)


def session_symbols(frames: list) -> list[str]:
    """The symbols a recording subscribed to (see the module docstring), in an order no frame can change:
    the connect URLs' order; else the snapshots' order, then the other symbols by name."""
    subscribed: dict[str, None] = {}
    snapshots: dict[str, None] = {}
    seen: dict[str, int] = {}
    for fr in frames:
        if fr.kind == "connect":
            subscribed.update(dict.fromkeys(_stream_symbols(fr.payload)))
        elif fr.symbol and fr.kind in ("ws", "depth_snapshot"):
            seen[fr.symbol] = seen.get(fr.symbol, 0) + 1
            if fr.kind == "depth_snapshot":
                snapshots.setdefault(fr.symbol, None)
    if subscribed:
        return [s for s in subscribed if s in seen]
    return list(snapshots) + sorted(s for s, n in seen.items() if s not in snapshots and n >= MIN_SYMBOL_FRAMES)


def load_session(frames: Iterable, symbols: list[str] | None = None) -> Session:
    """Decode recorded frames (``core.recordings.Frame``) into one MD_EVENT array."""
    frames = list(frames)
    if symbols is None:
        symbols = session_symbols(frames)
    # receive times are the recorder's epoch ns: the time gate bounds exchange times against them both ways
    dec = Decoder(symbols, recv_wall_offset_ns=0, wall_ahead_ms=RECORDING_SKEW_MS, wall_behind_ms=RECORDING_SKEW_MS)
    ids = dec.symbol_ids
    out = Decoder.new_out()
    parts: list[np.ndarray] = []
    klines: list[Kline] = []
    connects = 0
    status = np.zeros(1, MD_EVENT)
    for fr in frames:
        if fr.kind == "ws":
            ignored = dec.ignored["kline"]
            n = dec.decode(fr.payload, fr.recv_ns, out)
            if n:
                parts.append(out[:n].copy())
            elif dec.ignored["kline"] > ignored:  # a kline: the feed ignores it, the bar check uses it
                f = dec.decode_kline(fr.payload, fr.recv_ns)
                kl = _kline(f) if f is not None else None
                if kl is not None:
                    klines.append(kl)
        elif fr.kind == "depth_snapshot":
            if fr.symbol in ids:
                n = dec.decode_snapshot(fr.payload, ids[fr.symbol], fr.recv_ns, out)
                if n:
                    parts.append(out[:n].copy())
        elif fr.kind == "connect":
            connects += 1
            if connects > 1:  # the feed reconnected: every book must resync
                status[0]["kind"] = MD_STATUS
                status[0]["symbol"] = ALL_SYMBOLS
                status[0]["aux"] = STATUS_RECONNECTED
                status[0]["recv_ns"] = fr.recv_ns
                status[0]["flags"] = FLAG_BEGIN | FLAG_END
                parts.append(status.copy())
    md = np.concatenate(parts) if parts else np.zeros(0, MD_EVENT)
    errors = {k: v for k, v in dec.errors.items() if v}
    return Session(symbols=symbols, md=md, klines=klines, decode_errors=errors)


def raw_chain_breaks(md: np.ndarray, sym: int) -> int:
    """Chain breaks in the recorded diff stream itself (``U != prev u + 1``), for cross-checks."""
    sel = md[(md["symbol"] == sym) & np.isin(md["kind"], (MD_DEPTH_BID, MD_DEPTH_ASK, MD_DEPTH_NONE))
             & ((md["flags"] & FLAG_BEGIN) != 0)]
    if len(sel) < 2:
        return 0
    return int(np.count_nonzero(sel["first_id"][1:] != sel["last_id"][:-1] + 1))


def _tickers(md: np.ndarray, sym: int):
    """(u list, tops) of the recorded bookTicker stream, ordered by u (stable)."""
    bid = md[(md["symbol"] == sym) & (md["kind"] == MD_TICKER_BID)]
    ask = md[(md["symbol"] == sym) & (md["kind"] == MD_TICKER_ASK)]
    if len(bid) != len(ask):
        raise ValueError("bookTicker records are not in bid/ask pairs")
    order = np.argsort(bid["last_id"], kind="stable")
    bid = bid[order]
    ask = ask[order]
    tops = np.stack([bid["price"], bid["qty"], ask["price"], ask["qty"]], axis=1)
    return bid["last_id"].tolist(), tops


def _bar_fields(ev) -> dict:
    return {"o": int(ev["bar_open"]), "h": int(ev["bar_high"]), "l": int(ev["bar_low"]), "c": int(ev["bar_close"]),
            "v": int(ev["bar_volume"]), "q": int(ev["bar_quote_volume"]), "V": int(ev["bar_taker_buy_base"]),
            "Q": int(ev["bar_taker_buy_quote"]), "n": int(ev["bar_trades"])}


def bar_matches_kline(fields: dict, kl: Kline) -> bool:
    """Exact on o/h/l/c/v/V/n; q/Q within 1e-8 (our sum is truncated at 1e-8)."""
    for name in ("o", "h", "l", "c", "v", "V", "n"):
        if fields[name] != kl.fields[name]:
            return False
    return all(abs(fields[name] - kl.fields[name]) <= 1 for name in ("q", "Q"))


def rebuild_bar(trades: np.ndarray, interval_ms: int, open_ms: int) -> dict | None:
    """The bar the bar kernels build from exactly ``trades`` (MD_TRADE / MD_AGG_TRADE records)."""
    eng = BookEngine(BookConfig(n_symbols=1, bar_intervals_ms=(interval_ms,), emit_empty_bars=False,
                                depth_throttle_ms=-1))
    tr = trades.copy()
    tr["symbol"] = 0
    eng.process_all(tr)
    ev = eng.on_timer(open_ms + interval_ms + eng.config.bar_watermark_ms)
    bars = ev[(ev["kind"] == BK_BAR) & (ev["bar_open_ms"] == open_ms)]
    return _bar_fields(bars[0]) if len(bars) else None


def check_session(session: Session, md: np.ndarray | None = None, *, config: BookConfig | None = None) -> dict:
    """Run ``md`` (default: the session's) through the book/bar kernels; figures per symbol."""
    md = session.md if md is None else md
    n_sym = len(session.symbols)
    intervals = tuple(sorted({kl.interval_ms for kl in session.klines} | {1_000, 60_000}))
    eng = BookEngine(config or BookConfig(n_symbols=n_sym, bar_intervals_ms=intervals, depth_throttle_ms=-1))
    diag = np.zeros((max(1, len(md)), 6), np.int64)  # at most one row per md record
    diag_n = np.zeros(1, np.int64)
    ev = eng.process_all(md, diag=diag, diag_n=diag_n)
    last_ms = int(md["exch_ms"].max()) if len(md) else 0
    ev = concat_records([ev, eng.on_timer(last_ms)], BOOK_EVENT)  # bars whose minute the recording saw end
    diag = diag[:diag_n[0]]

    result = {}
    for sym, name in enumerate(session.symbols):
        c = eng.counters(sym)
        fig = {"applied": c["applied"], "chain_breaks": c["chain_breaks"], "resyncs": c["resyncs"],
               "crossed": c["crossed"]}
        # tops vs bookTicker
        tick_u, tick_tops = _tickers(md, sym)
        match = 0
        mismatches = []
        for row in diag[diag[:, 0] == sym]:
            j = bisect.bisect_right(tick_u, int(row[1])) - 1
            if j < 0:
                continue
            if np.array_equal(row[2:6], tick_tops[j]):
                match += 1
            else:
                mismatches.append({"u": int(row[1]), "ticker_u": int(tick_u[j]),
                                   "book": [int(v) for v in row[2:6]], "ticker": [int(v) for v in tick_tops[j]]})
        fig["ticker_match"] = match
        fig["ticker_mismatch"] = len(mismatches)
        # bars vs klines
        trades = md[(md["symbol"] == sym) & np.isin(md["kind"], (MD_TRADE, MD_AGG_TRADE))]
        t_first = trades["first_id"]
        t_last = np.where(trades["kind"] == MD_TRADE, trades["first_id"], trades["last_id"])
        live = ev[(ev["symbol"] == sym) & (ev["kind"] == BK_BAR)]
        bm = bmis = 0
        for kl in session.klines:
            if kl.symbol != name or kl.first_id < 0:
                continue
            sel = (t_first >= kl.first_id) & (t_last <= kl.last_id)
            if int((t_last[sel] - t_first[sel] + 1).sum()) != kl.last_id - kl.first_id + 1:
                continue  # not fully covered by the recording
            fields = rebuild_bar(trades[sel], kl.interval_ms, kl.open_ms)
            ok = fields is not None and bar_matches_kline(fields, kl)
            if ok and kl.closed:
                lb = live[(live["bar_open_ms"] == kl.open_ms) & (live["bar_interval_ms"] == kl.interval_ms)]
                ok = len(lb) == 1 and bar_matches_kline(_bar_fields(lb[0]), kl)
            bm += ok
            bmis += not ok
        fig["bars_match"] = bm
        fig["bars_mismatch"] = bmis
        tops = ev[(ev["symbol"] == sym) & (ev["kind"] == BK_TOP)]
        fig["valid_tops"] = int((tops["state"] == BOOK_VALID).sum())
        fig["valid_at_end"] = eng.is_valid(sym)
        fig["raw_chain_breaks"] = raw_chain_breaks(md, sym)
        fig["trades"] = c["trades"]
        fig["stale"] = c["stale"]
        fig["snapshots_applied"] = c["snapshots_applied"]
        fig["mismatch_detail"] = mismatches
        result[name] = fig
    return result


__all__ = ["Session", "Kline", "load_session", "check_session", "rebuild_bar", "bar_matches_kline",
           "raw_chain_breaks", "session_symbols", "FIGURES", "ALL_SYMBOLS", "MIN_SYMBOL_FRAMES", "RECORDING_SKEW_MS"]

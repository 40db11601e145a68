"""Numba fast path of the Binance frame decoder (see ``core.decode``).

The kernels scan the frame bytes of the message shapes Binance actually sends
(no whitespace, keys in Binance's order for the envelope, one-character keys
inside an event) and write ``MD_EVENT`` records. They never guess: anything
outside those shapes -- an escape, whitespace, a float where an int belongs,
an unknown event, an unknown symbol, a number that does not parse, too little
room in ``out`` -- makes them return ``DECLINE`` and ``core.decode.Decoder``
decodes the frame again with orjson (the reference path), which also counts
and classifies bad input. So correctness never depends on this module: it
either produces exactly the records the reference path produces, or declines.
``tests/core/test_decode.py`` checks that on every recorded frame.

Output layout
-------------
``out`` is an ``MD_EVENT`` array viewed as ``int64[n, 8]`` (numba's dispatch
of a structured array argument costs a Python ``typeof`` per call, ~0.3 us;
an int64 view does not). Word 7 packs the small fields in their little-endian
byte order: ``symbol | kind << 16 | flags << 24 | aux << 32``.

State array
-----------
``st`` (int64, built by ``make_state``) holds the exchange-time gate
(``nb_time_gate``), the per-key scratch the scanner fills (tagged with a
generation number, so nothing is cleared per frame) and the symbol table
(length + 32 bytes packed in 4 words per symbol), in one argument to keep
dispatch cheap.

Absurd values
-------------
A price of 0 or above ``MAX_PRICE``, and a trade quantity of 0, make the
kernels decline; the reference path counts them as ``absurd_value``. (A depth
or snapshot quantity of 0 removes a level; a bookTicker side of 0/0 is empty.)
"""

from __future__ import annotations

import numba as nb
import numpy as np

from core.fixedpoint import PARSE_ERROR, parse_fixed_bytes
from core.records import (
    FLAG_BEGIN,
    FLAG_BUYER_MAKER,
    FLAG_END,
    MD_AGG_TRADE,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_EVENT,
    MD_SNAP_ASK,
    MD_SNAP_BEGIN,
    MD_SNAP_BID,
    MD_SNAP_END,
    MD_TICKER_ASK,
    MD_TICKER_BID,
    MD_TRADE,
)
from ringbuffers.clock import nb_monotonic_ns
from ringbuffers.ring import FULL, nb_publish_begin, nb_publish_end

DECLINE = -1  # the fast path does not handle this frame: use the reference path
PENDING = -2  # nb_decode_publish: decoded, but the ring was full; records wait in ``out``
TIME_AHEAD = -3  # decoded, but its exchange time is implausibly far ahead (nb_time_gate): drop and count
TIME_BEHIND = -4  # decoded, but its exchange time is implausibly far behind (nb_time_gate): drop and count

# Prices above this (whole units) are absurd: the dearest Binance Spot book (BTC in IDR) is ~2e9.
MAX_PRICE = 10_000_000_000
MAX_PRICE_FIXED = MAX_PRICE * 100_000_000
MIN_EXCH_MS = 1_483_228_800_000  # 2017-01-01 UTC: Binance opened in July 2017; an earlier exchange time is absurd
MAX_EXCH_MS = 4_102_444_800_000  # 2100-01-01 UTC: so is a later one, whatever the clocks say

# int64 words of one MD_EVENT record (checked against records.py below)
W_RECV_NS = 0
W_PUB_NS = 1
W_EXCH_MS = 2
W_FIRST_ID = 3
W_LAST_ID = 4
W_PRICE = 5
W_QTY = 6
W_PACKED = 7  # symbol u16 | kind u8 << 16 | flags u8 << 24 | aux u32 << 32
RECORD_WORDS = 8
KIND_SHIFT = 16
FLAGS_SHIFT = 24
AUX_SHIFT = 32
KIND_BITS = 0xFF << KIND_SHIFT


def _check_layout() -> None:
    expect = {"recv_ns": 0, "pub_ns": 8, "exch_ms": 16, "first_id": 24, "last_id": 32, "price": 40,
              "qty": 48, "symbol": 56, "kind": 58, "flags": 59, "aux": 60}
    for name, off in expect.items():
        if MD_EVENT.fields[name][1] != off:
            got = MD_EVENT.fields[name][1]
            raise ImportError(f"decode_kernels: MD_EVENT.{name} moved to offset {got}, expected {off}")
    if MD_EVENT.itemsize != RECORD_WORDS * 8:
        raise ImportError(f"decode_kernels: MD_EVENT itemsize {MD_EVENT.itemsize}, expected {RECORD_WORDS * 8}")


_check_layout()

# --- state array layout -----------------------------------------------------
ST_GEN = 0  # generation of the current scan (key slots tagged with it are "seen")
ST_NSYM = 1  # symbols in the table
ST_PENDING = 2  # nb_decode_publish: records left in ``out`` by a full ring
# the exchange-time gate (nb_time_gate); times are ms, the receive clock is the caller's recv_ns / 1e6
ST_T_AHEAD = 3  # a time more than this ahead of the expected exchange time is rejected
ST_T_BEHIND = 4  # ...more than this behind it
ST_T_WALL = 5  # 1: recv_ns + ST_T_WALL_OFF ms is the wall clock (absolute checks on)
ST_T_WALL_OFF = 6  # ms to add to recv_ns // 1e6 to get epoch ms
ST_T_WALL_AHEAD = 7  # absolute: a time more than this ahead of the wall clock is rejected (never re-anchors)
ST_T_WALL_BEHIND = 8  # absolute: ...more than this behind it; < 0: no such check (replays of old recordings)
ST_T_REANCHOR_N = 9  # consecutive rejected frames that agree with each other and move the reference
ST_T_ANCHOR = 10  # exchange time of the last accepted frame (0: none yet)
ST_T_ANCHOR_RECV = 11  # its receive time
ST_T_CAND = 12  # exchange time of the last rejected frame (a candidate reference)
ST_T_CAND_RECV = 13
ST_T_CAND_N = 14  # consecutive rejected frames that agree with the candidate
ST_T_REANCHORS = 15  # times the reference moved to a candidate (a real jump: replayed sessions, a clock step)
ST_KEYS = 24
KEY_WORDS = 5  # per key byte: gen, type, int value, span start, span end
K_GEN = 0
K_TYPE = 1
K_INT = 2
K_START = 3  # string: first byte; array: first record row
K_END = 4  # string: closing quote; array: one past the last record row
ST_SYM = ST_KEYS + 128 * KEY_WORDS
SYM_MAX_LEN = 32
SYM_WORDS = 1 + SYM_MAX_LEN // 8  # length, then the bytes packed little-endian

T_STR = 1
T_INT = 2
T_TRUE = 3
T_FALSE = 4
T_ARR = 5

MAX_INT_DIGITS = 18  # always below INT64_MAX, so no overflow check in the loop


def make_state(symbols: list[str], *, ahead_ms: int = 60_000, behind_ms: int = 60_000,
               wall_offset_ms: int | None = None, wall_ahead_ms: int = 300_000, wall_behind_ms: int | None = None,
               reanchor_frames: int = 8) -> np.ndarray:
    """The ``st`` array for ``symbols`` (upper-case ASCII, <= 32 bytes each) and the time gate's bounds."""
    st = np.zeros(ST_SYM + SYM_WORDS * len(symbols), np.int64)
    st[ST_NSYM] = len(symbols)
    st[ST_T_AHEAD] = ahead_ms
    st[ST_T_BEHIND] = behind_ms
    st[ST_T_WALL] = 0 if wall_offset_ms is None else 1
    st[ST_T_WALL_OFF] = wall_offset_ms or 0
    st[ST_T_WALL_AHEAD] = wall_ahead_ms
    st[ST_T_WALL_BEHIND] = -1 if wall_behind_ms is None else wall_behind_ms
    st[ST_T_REANCHOR_N] = reanchor_frames
    for k, sym in enumerate(symbols):
        raw = sym.encode("ascii")
        base = ST_SYM + k * SYM_WORDS
        st[base] = len(raw)
        padded = raw.ljust(SYM_MAX_LEN, b"\0")
        st[base + 1: base + SYM_WORDS] = np.frombuffer(padded, "<i8")
    return st


def _lit(text: bytes) -> np.ndarray:
    # global arrays are frozen into the compiled kernels as constants
    return np.frombuffer(text, np.uint8).copy()


LIT_ENVELOPE = _lit(b'{"stream":"')
LIT_DATA = _lit(b',"data":')
LIT_DEPTH = _lit(b"depthUpdate")
LIT_TRADE = _lit(b"trade")
LIT_AGG = _lit(b"aggTrade")
LIT_SNAP_ID = _lit(b'{"lastUpdateId":')
LIT_SNAP_BIDS = _lit(b',"bids":')
LIT_SNAP_ASKS = _lit(b',"asks":')

# ASCII
C_QUOTE = 34
C_COMMA = 44
C_COLON = 58
C_LBRACK = 91
C_BSLASH = 92
C_RBRACK = 93
C_LBRACE = 123
C_RBRACE = 125
C_0 = 48
C_9 = 57


@nb.njit(cache=True, nogil=True)
def _match(buf, n, i, lit):
    """Index after ``lit`` if ``buf[i:]`` starts with it, else -1."""
    m = lit.shape[0]
    if i + m > n:
        return -1
    for k in range(m):
        if buf[i + k] != lit[k]:
            return -1
    return i + m


@nb.njit(cache=True, nogil=True)
def _span_eq(buf, s, e, lit):
    if e - s != lit.shape[0]:
        return False
    for k in range(e - s):
        if buf[s + k] != lit[k]:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _scan_string(buf, n, i):
    """Closing-quote index of a JSON string whose body starts at ``i``, or -1.

    Plain printable ASCII only: an escape, a control byte or UTF-8 declines,
    so the fast path never has to agree with orjson on their rules.
    """
    while i < n:
        c = buf[i]
        if c == C_QUOTE:
            return i
        if c == C_BSLASH or c < 32 or c >= 127:
            return -1
        i += 1
    return -1


@nb.njit(cache=True, nogil=True)
def _scan_uint(buf, n, i):
    """(index after, value) of a JSON non-negative integer of <= 18 digits, or (-1, 0)."""
    start = i
    v = np.int64(0)
    while i < n:
        c = buf[i]
        if c < C_0 or c > C_9:
            break
        v = v * 10 + np.int64(c - C_0)
        i += 1
    nd = i - start
    if nd == 0 or nd > MAX_INT_DIGITS:
        return -1, np.int64(0)
    if nd > 1 and buf[start] == C_0:  # JSON forbids leading zeros
        return -1, np.int64(0)
    return i, v


# Largest whole part the fused parser takes without an overflow check:
# 92233720367.99999999 * 1e8 < INT64_MAX. Larger values (only Binance's
# capped 92233720368.54775807) decline to the reference path.
MAX_FAST_WHOLE = 92233720367
POW10 = np.array([10**k for k in range(9)], np.int64)


@nb.njit(cache=True, nogil=True)
def _parse_dec(buf, n, i):
    """Parse the decimal string body at ``buf[i]`` up to its closing quote.

    One pass, no float. Takes only ``digits[.digits]`` with at most 8
    significant fraction digits (the forms ``core.fixedpoint.to_fixed``
    accepts, minus ``"5."``/``".5"`` and huge values, which decline).
    Returns (closing quote index, fixed-point value) or (-1, 0).
    """
    whole = np.int64(0)
    start = i
    while i < n:
        c = buf[i]
        if c < C_0 or c > C_9:
            break
        whole = whole * 10 + np.int64(c - C_0)
        if whole > MAX_FAST_WHOLE:
            return -1, np.int64(0)
        i += 1
    if i == start or i >= n:
        return -1, np.int64(0)
    if buf[i] == C_QUOTE:
        return i, whole * 100000000
    if buf[i] != 46:  # '.'
        return -1, np.int64(0)
    i += 1
    fstart = i
    frac = np.int64(0)
    nfrac = 0
    while i < n:
        c = buf[i]
        if c < C_0 or c > C_9:
            break
        if nfrac < 8:
            frac = frac * 10 + np.int64(c - C_0)
            nfrac += 1
        elif c != C_0:
            return -1, np.int64(0)
        i += 1
    if i == fstart or i >= n or buf[i] != C_QUOTE:
        return -1, np.int64(0)
    return i, whole * 100000000 + frac * POW10[8 - nfrac]


@nb.njit(cache=True, nogil=True)
def _scan_levels(buf, n, i, out, r, kind):
    """Parse ``[["p","q"],...]`` at ``buf[i] == '['`` into rows ``r..``.

    Writes price, qty and the kind bits; the caller fills the other words.
    Returns (index after ``]``, next row) or (-1, r).
    """
    cap = out.shape[0]
    kind_bits = np.int64(kind) << KIND_SHIFT
    i += 1
    if i < n and buf[i] == C_RBRACK:
        return i + 1, r
    while True:
        if i + 2 > n or buf[i] != C_LBRACK or buf[i + 1] != C_QUOTE or r >= cap:
            return -1, r
        pe, px = _parse_dec(buf, n, i + 2)
        if pe < 0 or pe + 3 > n or buf[pe + 1] != C_COMMA or buf[pe + 2] != C_QUOTE:
            return -1, r
        if px == 0 or px > MAX_PRICE_FIXED:  # absurd: the reference path counts it
            return -1, r
        qe, qty = _parse_dec(buf, n, pe + 3)
        if qe < 0 or qe + 2 > n or buf[qe + 1] != C_RBRACK:
            return -1, r
        out[r, W_PRICE] = px
        out[r, W_QTY] = qty
        out[r, W_PACKED] = kind_bits
        r += 1
        i = qe + 2
        if i >= n:
            return -1, r
        c = buf[i]
        if c == C_COMMA:
            i += 1
        elif c == C_RBRACK:
            return i + 1, r
        else:
            return -1, r


@nb.njit(cache=True, nogil=True)
def _key_is(st, gen, k, t):
    base = ST_KEYS + k * KEY_WORDS
    return st[base + K_GEN] == gen and st[base + K_TYPE] == t


@nb.njit(cache=True, nogil=True)
def _key_seen(st, gen, k):
    return st[ST_KEYS + k * KEY_WORDS + K_GEN] == gen


@nb.njit(cache=True, nogil=True)
def _key_int(st, k):
    return st[ST_KEYS + k * KEY_WORDS + K_INT]


@nb.njit(cache=True, nogil=True)
def _key_start(st, k):
    return st[ST_KEYS + k * KEY_WORDS + K_START]


@nb.njit(cache=True, nogil=True)
def _key_end(st, k):
    return st[ST_KEYS + k * KEY_WORDS + K_END]


@nb.njit(cache=True, nogil=True)
def _scan_object(buf, n, i, st, out):
    """Scan a flat event object at ``buf[i] == '{'`` with one-byte keys.

    Values: plain strings, integers, true/false, and level arrays under
    ``b`` (first) and ``a``. Each key's type and value go to its slot in
    ``st``, tagged with a fresh generation; a repeated key declines (orjson
    would keep the last one). Returns (index after ``}``, level rows written)
    or (-1, 0).
    """
    gen = st[ST_GEN] + 1
    st[ST_GEN] = gen
    r = 0
    i += 1
    if i < n and buf[i] == C_RBRACE:
        return i + 1, 0
    while True:
        if i + 4 > n or buf[i] != C_QUOTE or buf[i + 2] != C_QUOTE or buf[i + 3] != C_COLON:
            return -1, 0
        k = np.int64(buf[i + 1])
        if k == C_QUOTE or k == C_BSLASH or k < 32 or k >= 127:
            return -1, 0
        base = ST_KEYS + k * KEY_WORDS
        if st[base + K_GEN] == gen:
            return -1, 0
        st[base + K_GEN] = gen
        i += 4
        if i >= n:
            return -1, 0
        c = buf[i]
        if c == C_QUOTE:
            e = _scan_string(buf, n, i + 1)
            if e < 0:
                return -1, 0
            st[base + K_TYPE] = T_STR
            st[base + K_START] = i + 1
            st[base + K_END] = e
            i = e + 1
        elif c >= C_0 and c <= C_9:
            j, v = _scan_uint(buf, n, i)
            if j < 0:
                return -1, 0
            st[base + K_TYPE] = T_INT
            st[base + K_INT] = v
            i = j
        elif c == 116:  # t
            if i + 4 > n or buf[i + 1] != 114 or buf[i + 2] != 117 or buf[i + 3] != 101:
                return -1, 0
            st[base + K_TYPE] = T_TRUE
            i += 4
        elif c == 102:  # f
            if i + 5 > n or buf[i + 1] != 97 or buf[i + 2] != 108 or buf[i + 3] != 115 or buf[i + 4] != 101:
                return -1, 0
            st[base + K_TYPE] = T_FALSE
            i += 5
        elif c == C_LBRACK:
            # bids must precede asks so that records come out bids first
            if k == 98:  # b
                kind = MD_DEPTH_BID
            elif k == 97 and _key_is(st, gen, 98, T_ARR):  # a
                kind = MD_DEPTH_ASK
            else:
                return -1, 0
            start = r
            j, r = _scan_levels(buf, n, i, out, r, kind)
            if j < 0:
                return -1, 0
            st[base + K_TYPE] = T_ARR
            st[base + K_START] = start
            st[base + K_END] = r
            i = j
        else:
            return -1, 0
        if i >= n:
            return -1, 0
        c = buf[i]
        if c == C_COMMA:
            i += 1
        elif c == C_RBRACE:
            return i + 1, r
        else:
            return -1, 0


@nb.njit(cache=True, nogil=True)
def _lookup_symbol(buf, s, e, st):
    """Symbol id of ``buf[s:e]`` in the table, or -1."""
    length = e - s
    if length <= 0 or length > SYM_MAX_LEN:
        return -1
    for sid in range(st[ST_NSYM]):
        base = ST_SYM + sid * SYM_WORDS
        if st[base] != length:
            continue
        same = True
        for j in range(length):
            b = (st[base + 1 + (j >> 3)] >> ((j & 7) * 8)) & 0xFF
            if b != buf[s + j]:
                same = False
                break
        if same:
            return sid
    return -1


@nb.njit(cache=True, nogil=True)
def _put(out, r, recv_ns, exch_ms, first_id, last_id, price, qty, sid, kind, flags, aux):
    out[r, W_RECV_NS] = recv_ns
    out[r, W_PUB_NS] = 0
    out[r, W_EXCH_MS] = exch_ms
    out[r, W_FIRST_ID] = first_id
    out[r, W_LAST_ID] = last_id
    out[r, W_PRICE] = price
    out[r, W_QTY] = qty
    out[r, W_PACKED] = (np.int64(sid) | (np.int64(kind) << KIND_SHIFT) | (np.int64(flags) << FLAGS_SHIFT)
                        | (np.int64(aux) << AUX_SHIFT))


@nb.njit(cache=True, nogil=True)
def _symbol_of(buf, st, gen):
    if not _key_is(st, gen, 115, T_STR):  # s
        return -1
    return _lookup_symbol(buf, _key_start(st, 115), _key_end(st, 115), st)


@nb.njit(cache=True, nogil=True)
def _str_fixed(buf, st, k):
    return parse_fixed_bytes(buf, _key_start(st, k), _key_end(st, k))


@nb.njit(cache=True, nogil=True)
def _emit_depth(buf, st, gen, out, r, recv_ns):
    # E, U, u ints; b then a level arrays (already written as rows 0..r-1)
    if not (_key_is(st, gen, 69, T_INT) and _key_is(st, gen, 85, T_INT) and _key_is(st, gen, 117, T_INT)
            and _key_is(st, gen, 98, T_ARR) and _key_is(st, gen, 97, T_ARR)):
        return DECLINE
    sid = _symbol_of(buf, st, gen)
    if sid < 0:
        return DECLINE
    exch_ms = _key_int(st, 69)
    first_id = _key_int(st, 85)
    last_id = _key_int(st, 117)
    if r == 0:
        if out.shape[0] < 1:
            return DECLINE
        _put(out, 0, recv_ns, exch_ms, first_id, last_id, 0, 0, sid, MD_DEPTH_NONE, FLAG_BEGIN | FLAG_END, 0)
        return 1
    for k in range(r):
        out[k, W_RECV_NS] = recv_ns
        out[k, W_PUB_NS] = 0
        out[k, W_EXCH_MS] = exch_ms
        out[k, W_FIRST_ID] = first_id
        out[k, W_LAST_ID] = last_id
        out[k, W_PACKED] = (out[k, W_PACKED] & KIND_BITS) | sid
    out[0, W_PACKED] |= np.int64(FLAG_BEGIN) << FLAGS_SHIFT
    out[r - 1, W_PACKED] |= np.int64(FLAG_END) << FLAGS_SHIFT
    return r


@nb.njit(cache=True, nogil=True)
def _buyer_maker(st, gen):
    """FLAG_BUYER_MAKER, 0, or -1 if ``m`` is not a boolean."""
    if _key_is(st, gen, 109, T_TRUE):
        return FLAG_BUYER_MAKER
    if _key_is(st, gen, 109, T_FALSE):
        return 0
    return -1


@nb.njit(cache=True, nogil=True)
def _emit_trade(buf, st, gen, out, recv_ns, agg):
    if out.shape[0] < 1:
        return DECLINE
    # t (trade) or a/f/l (aggTrade), p, q, T, m
    if not (_key_is(st, gen, 112, T_STR) and _key_is(st, gen, 113, T_STR) and _key_is(st, gen, 84, T_INT)):
        return DECLINE
    if agg:
        if not (_key_is(st, gen, 97, T_INT) and _key_is(st, gen, 102, T_INT) and _key_is(st, gen, 108, T_INT)):
            return DECLINE
    elif not _key_is(st, gen, 116, T_INT):
        return DECLINE
    bm = _buyer_maker(st, gen)
    if bm < 0:
        return DECLINE
    sid = _symbol_of(buf, st, gen)
    if sid < 0:
        return DECLINE
    px = _str_fixed(buf, st, 112)
    qty = _str_fixed(buf, st, 113)
    if px == PARSE_ERROR or qty == PARSE_ERROR:
        return DECLINE
    if px == 0 or px > MAX_PRICE_FIXED or qty == 0:  # absurd: the reference path counts it
        return DECLINE
    flags = FLAG_BEGIN | FLAG_END | bm
    if agg:
        _put(out, 0, recv_ns, _key_int(st, 84), _key_int(st, 102), _key_int(st, 108), px, qty, sid,
             MD_AGG_TRADE, flags, _key_int(st, 97) & 0xFFFFFFFF)
    else:
        tid = _key_int(st, 116)
        _put(out, 0, recv_ns, _key_int(st, 84), tid, tid, px, qty, sid, MD_TRADE, flags, 0)
    return 1


@nb.njit(cache=True, nogil=True)
def _emit_ticker(buf, st, gen, out, recv_ns):
    if out.shape[0] < 2:
        return DECLINE
    # u, b, B, a, A
    if not (_key_is(st, gen, 117, T_INT) and _key_is(st, gen, 98, T_STR) and _key_is(st, gen, 66, T_STR)
            and _key_is(st, gen, 97, T_STR) and _key_is(st, gen, 65, T_STR)):
        return DECLINE
    exch_ms = 0
    if _key_seen(st, gen, 69):  # optional E
        if not _key_is(st, gen, 69, T_INT):
            return DECLINE
        exch_ms = _key_int(st, 69)
    sid = _symbol_of(buf, st, gen)
    if sid < 0:
        return DECLINE
    bp = _str_fixed(buf, st, 98)
    bq = _str_fixed(buf, st, 66)
    ap = _str_fixed(buf, st, 97)
    aq = _str_fixed(buf, st, 65)
    if bp == PARSE_ERROR or bq == PARSE_ERROR or ap == PARSE_ERROR or aq == PARSE_ERROR:
        return DECLINE
    if bp > MAX_PRICE_FIXED or ap > MAX_PRICE_FIXED or (bp == 0 and bq != 0) or (ap == 0 and aq != 0):
        return DECLINE  # absurd: the reference path counts it
    u = _key_int(st, 117)
    _put(out, 0, recv_ns, exch_ms, u, u, bp, bq, sid, MD_TICKER_BID, FLAG_BEGIN, 0)
    _put(out, 1, recv_ns, exch_ms, u, u, ap, aq, sid, MD_TICKER_ASK, FLAG_END, 0)
    return 2


@nb.njit(cache=True, nogil=True)
def _time_verdict(exch_ms, recv_ms, ref_ms, ref_recv_ms, ahead, behind):
    """0, TIME_AHEAD or TIME_BEHIND for ``exch_ms`` against a reference frame (``ref_ms`` seen at ``ref_recv_ms``)."""
    elapsed = recv_ms - ref_recv_ms
    if elapsed < 0:
        elapsed = 0
    expected = ref_ms + elapsed  # the exchange clock ran on by the receive time elapsed
    if exch_ms > expected + ahead:
        return TIME_AHEAD
    if exch_ms < ref_ms - behind:
        return TIME_BEHIND
    return 0


@nb.njit(cache=True, nogil=True)
def nb_time_gate(st, exch_ms, recv_ns):
    """Accept (0) or reject (TIME_AHEAD / TIME_BEHIND) a frame's exchange time ``exch_ms``; updates the gate.

    A frame without an exchange time (0: a bookTicker without E) passes; one
    before ``MIN_EXCH_MS`` or after ``MAX_EXCH_MS`` never does. Absolute
    checks, only when the receive clock is known as a wall clock
    (``ST_T_WALL``): more than ``ST_T_WALL_AHEAD`` ms ahead of it (no event
    comes from the future), or, when set, more than ``ST_T_WALL_BEHIND``
    behind it. They never move the reference. Relative check: against the
    last accepted frame, the exchange clock may have run on by the receive
    time elapsed since, plus ``ST_T_AHEAD``; it may be at most ``ST_T_BEHIND``
    behind that frame's time (streams interleave a little out of order).
    The first timed frame is the first reference. A rejected frame becomes a
    candidate reference: ``ST_T_REANCHOR_N`` consecutive rejected frames that
    agree with each other are the stream's real clock (replayed sessions one
    after another, a bad first frame), and the reference moves to them
    (``ST_T_REANCHORS``). An accepted frame clears the candidate, so isolated
    hostile frames between good ones never move the reference.
    """
    if exch_ms <= 0:
        return 0
    if exch_ms > MAX_EXCH_MS:  # (and so no sum below can overflow)
        return TIME_AHEAD
    if exch_ms < MIN_EXCH_MS:
        return TIME_BEHIND
    recv_ms = recv_ns // 1_000_000
    if st[ST_T_WALL] != 0:
        wall = recv_ms + st[ST_T_WALL_OFF]
        if exch_ms > wall + st[ST_T_WALL_AHEAD]:
            return TIME_AHEAD
        if st[ST_T_WALL_BEHIND] >= 0 and exch_ms < wall - st[ST_T_WALL_BEHIND]:
            return TIME_BEHIND
    if st[ST_T_ANCHOR] == 0:
        st[ST_T_ANCHOR] = exch_ms
        st[ST_T_ANCHOR_RECV] = recv_ms
        return 0
    ahead = st[ST_T_AHEAD]
    behind = st[ST_T_BEHIND]
    v = _time_verdict(exch_ms, recv_ms, st[ST_T_ANCHOR], st[ST_T_ANCHOR_RECV], ahead, behind)
    if v == 0:
        st[ST_T_ANCHOR] = exch_ms
        st[ST_T_ANCHOR_RECV] = recv_ms
        st[ST_T_CAND_N] = 0
        return 0
    if st[ST_T_CAND_N] > 0 and _time_verdict(exch_ms, recv_ms, st[ST_T_CAND], st[ST_T_CAND_RECV], ahead,
                                             behind) == 0:
        st[ST_T_CAND_N] += 1
    else:
        st[ST_T_CAND_N] = 1
    st[ST_T_CAND] = exch_ms
    st[ST_T_CAND_RECV] = recv_ms
    if st[ST_T_CAND_N] >= st[ST_T_REANCHOR_N]:
        st[ST_T_ANCHOR] = exch_ms
        st[ST_T_ANCHOR_RECV] = recv_ms
        st[ST_T_CAND_N] = 0
        st[ST_T_REANCHORS] += 1
        return 0
    return v


@nb.njit(cache=True, nogil=True)
def nb_decode_frame(buf, out, recv_ns, st):
    """Decode one WebSocket text frame into ``out`` (int64[n, 8] view of MD_EVENT), through the time gate.

    Returns the record count, ``DECLINE`` for anything this scanner does not
    take (the caller then uses the reference path), or ``TIME_AHEAD`` /
    ``TIME_BEHIND`` for a frame it decoded whose exchange time the gate
    rejects (``nb_time_gate``: drop it and count).
    """
    n = _decode_frame(buf, out, recv_ns, st)
    if n > 0:
        g = nb_time_gate(st, out[0, W_EXCH_MS], recv_ns)
        if g != 0:
            return g
    return n


@nb.njit(cache=True, nogil=True)
def _decode_frame(buf, out, recv_ns, st):
    """Decode one WebSocket text frame into ``out`` (int64[n, 8] view of MD_EVENT).

    Handles depthUpdate, trade, aggTrade and bookTicker, raw or in the
    combined ``{"stream":..,"data":..}`` envelope. Returns the record count,
    or ``DECLINE`` for anything else (the caller then uses the reference path).
    """
    n = len(buf)
    if n < 2 or buf[0] != C_LBRACE:
        return DECLINE
    j = _match(buf, n, 0, LIT_ENVELOPE)
    if j >= 0:
        e = _scan_string(buf, n, j)
        if e < 0:
            return DECLINE
        i = _match(buf, n, e + 1, LIT_DATA)
        if i < 0 or i >= n or buf[i] != C_LBRACE:
            return DECLINE
        end, r = _scan_object(buf, n, i, st, out)
        if end < 0 or end + 1 != n or buf[end] != C_RBRACE:
            return DECLINE
    else:
        end, r = _scan_object(buf, n, 0, st, out)
        if end != n:
            return DECLINE
    gen = st[ST_GEN]
    if _key_is(st, gen, 101, T_STR):  # e
        es = _key_start(st, 101)
        ee = _key_end(st, 101)
        if _span_eq(buf, es, ee, LIT_DEPTH):
            return _emit_depth(buf, st, gen, out, r, recv_ns)
        if r != 0:
            return DECLINE
        if _span_eq(buf, es, ee, LIT_TRADE):
            return _emit_trade(buf, st, gen, out, recv_ns, False)
        if _span_eq(buf, es, ee, LIT_AGG):
            return _emit_trade(buf, st, gen, out, recv_ns, True)
        return DECLINE
    if _key_seen(st, gen, 101) or r != 0:
        return DECLINE
    return _emit_ticker(buf, st, gen, out, recv_ns)


@nb.njit(cache=True, nogil=True)
def nb_decode_snapshot(buf, out, recv_ns, sid):
    """Decode a REST ``/api/v3/depth`` body into SNAP_BEGIN, levels, SNAP_END.

    Expects Binance's exact shape ``{"lastUpdateId":N,"bids":[..],"asks":[..]}``;
    returns the record count or ``DECLINE``.
    """
    n = len(buf)
    i = _match(buf, n, 0, LIT_SNAP_ID)
    if i < 0:
        return DECLINE
    i, last_id = _scan_uint(buf, n, i)
    if i < 0:
        return DECLINE
    i = _match(buf, n, i, LIT_SNAP_BIDS)
    if i < 0 or i >= n or buf[i] != C_LBRACK:
        return DECLINE
    i, r = _scan_levels(buf, n, i, out, 1, MD_SNAP_BID)
    if i < 0:
        return DECLINE
    i = _match(buf, n, i, LIT_SNAP_ASKS)
    if i < 0 or i >= n or buf[i] != C_LBRACK:
        return DECLINE
    i, r = _scan_levels(buf, n, i, out, r, MD_SNAP_ASK)
    if i < 0 or i + 1 != n or buf[i] != C_RBRACE:
        return DECLINE
    if r >= out.shape[0]:
        return DECLINE
    levels = r - 1
    _put(out, 0, recv_ns, 0, last_id, last_id, 0, 0, sid, MD_SNAP_BEGIN, FLAG_BEGIN, levels)
    for k in range(1, r):
        out[k, W_RECV_NS] = recv_ns
        out[k, W_PUB_NS] = 0
        out[k, W_EXCH_MS] = 0
        out[k, W_FIRST_ID] = last_id
        out[k, W_LAST_ID] = last_id
        out[k, W_PACKED] = (out[k, W_PACKED] & KIND_BITS) | sid
    _put(out, r, recv_ns, 0, last_id, last_id, 0, 0, sid, MD_SNAP_END, FLAG_END, levels)
    return r + 1


@nb.njit(cache=True, nogil=True)
def nb_publish_records(ctrl, slots, out, n, pub_ns):
    """Copy ``out[:n]`` (int64[n, 8] MD_EVENT view) into an md ring, stamping ``pub_ns``.

    ``slots`` is the ring's slot array viewed as int64[capacity, 8]. Uses the
    ring's publish protocol (``nb_publish_begin``/``nb_publish_end``). Returns
    ``n`` or ``ringbuffers.ring.FULL``.
    """
    seq = nb_publish_begin(ctrl, n)
    if seq < 0:
        return seq
    mask = slots.shape[0] - 1
    for k in range(n):
        s = (seq + k) & mask
        for w in range(RECORD_WORDS):
            slots[s, w] = out[k, w]
        slots[s, W_PUB_NS] = pub_ns
    nb_publish_end(ctrl, seq + n)
    return n


@nb.njit(cache=True, nogil=True)
def nb_decode_publish(buf, out, recv_ns, st, ctrl, slots):
    """``nb_decode_frame`` then ``nb_publish_records`` in one call (one dispatch).

    ``pub_ns`` is CLOCK_MONOTONIC taken in the kernel after decoding. Returns
    the records published (0 for a frame without market events), ``DECLINE``
    (nothing decoded: use the reference path), ``TIME_AHEAD`` / ``TIME_BEHIND``
    (decoded, rejected by the time gate, nothing published), or ``PENDING`` when the ring
    was full: the records stay in ``out[:st[ST_PENDING]]`` to be published later.
    """
    n = nb_decode_frame(buf, out, recv_ns, st)
    if n <= 0:
        return n
    if nb_publish_records(ctrl, slots, out, n, nb_monotonic_ns()) == FULL:
        st[ST_PENDING] = n
        return PENDING
    return n

"""Binance diff-depth sync state machine, per symbol (numba kernels).

The documented procedure (binance-spot-api.md section 3, with the 2025-11 gap
rule), in the states this module keeps::

      ST_NO_SNAPSHOT ──snapshot applied──► ST_AWAIT_BRIDGE ──bridging diff──► ST_SYNCED
        ▲   (diffs are buffered)              (diffs with u <= L dropped)       (VALID)
        │                                         │ first diff with u > L        │
        │                                         │ has U > L+1: snapshot        │ gap (U != id+1
        └──────────── resync requested ◄──────────┴─ too old ◄───────────────────┘  with u > id),
                                                                                   crossed book,
                                                                                   lapped ring,
                                                                                   reconnect

* While no snapshot is applied, diffs are buffered (complete diffs only).
* A snapshot with ``lastUpdateId = L`` replaces the book; buffered diffs with
  ``u <= L`` are dropped; the first remaining one must bridge
  (``U <= L+1 <= u``), otherwise the snapshot is older than the buffered
  diffs and a fresh one is requested while the buffer is kept.
* Once synced, every diff must chain: ``U == id + 1``. A diff with
  ``u <= id`` is stale (a duplicate or a replay) and dropped. Anything else is
  a chain break: the book becomes INVALID, the breaking diff becomes the first
  buffered diff, and a resync is requested.
* Only ``ST_SYNCED`` is VALID. A crossed book after a whole diff is applied,
  a lapped ``md`` ring and a feed reconnect also invalidate.

State: one ``SYNC_ROW`` record per symbol in ``sync[n_symbols]`` (named
fields: ``sync[sym].state``, ``sync[sym].book_id``, the counters...), a
per-symbol diff buffer ``buf[n_symbols, buffer_capacity]`` of MD_EVENT records
and ``resync[n_symbols]`` (uint8) flags. The kernels here take the book
worker's whole state bundle ``st`` (``core.book_worker_kernels.BookState``)
and a symbol id, or one ``SYNC_ROW`` record ``s``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from core.book import SET_OVERFLOW, book_is_crossed, book_set_level, book_top
from core.records import FLAG_END, MD_DEPTH_ASK, MD_DEPTH_BID, MD_EVENT

# states
ST_NO_SNAPSHOT = 0
ST_AWAIT_BRIDGE = 1
ST_SYNCED = 2

# diff actions (decided at the diff's FLAG_BEGIN record)
ACT_NONE = 0  # not inside a diff
ACT_APPLY = 1
ACT_DROP = 2  # stale (u <= id), or the rest of a diff that overflowed the buffer
ACT_BUFFER = 3
ACT_BREAK = 4  # decision only: chain break / snapshot too old

# snapshot actions (decided at MD_SNAP_BEGIN)
SNAP_NONE = 0
SNAP_STAGE = 1
SNAP_IGNORE = 2  # book already synced (or the snapshot is not newer): nothing to gain

# invalidation reasons (published in BK_TOP flags bits 8..15)
REASON_NONE = 0
REASON_START = 1  # never synced yet
REASON_GAP = 2  # chain break
REASON_CROSSED = 3
REASON_LAPPED = 4  # md ring consumer was lapped
REASON_RECONNECT = 5  # feed reconnected
REASON_SNAPSHOT_TOO_OLD = 6
REASON_MALFORMED = 7  # a diff without its FLAG_BEGIN/END framing
REASON_BUFFER_OVERFLOW = 8
REASON_NAMES = {
    REASON_NONE: "none", REASON_START: "start", REASON_GAP: "gap", REASON_CROSSED: "crossed",
    REASON_LAPPED: "lapped", REASON_RECONNECT: "reconnect", REASON_SNAPSHOT_TOO_OLD: "snapshot_too_old",
    REASON_MALFORMED: "malformed", REASON_BUFFER_OVERFLOW: "buffer_overflow",
}

# One row per symbol: ``sync[sym].state``, ``sync[sym].book_id``, ... Declared
# once here with align=True and checked at import. The fields the per-record
# path reads (state, diff in progress, buffer cursor) share the first cache line;
# the last published top and the rare snapshot fields the second; the counters
# (summed by ``BookEngine.totals``, named as reported) follow.
SYNC_HOT_FIELDS = (
    ("state", "ST_* state"),
    ("book_id", "last applied update id (snapshot L, then each diff's u)"),
    ("cur_act", "ACT_* of the diff being read (ACT_NONE between diffs)"),
    ("cur_u", "first update id U of the diff being read"),
    ("cur_uu", "last update id u of the diff being read"),
    ("buf_n", "records in the diff buffer"),
    ("cur_start", "buffer index where the diff being buffered starts"),
    ("seq", "next BOOK_EVENT seq"),
    ("top_bp", "last published top (BK_TOP is only published on a change)"),
    ("top_bq", ""),
    ("top_ap", ""),
    ("top_aq", ""),
    ("top_state", "BOOK_VALID/BOOK_INVALID of the last BK_TOP, -1 before the first"),
    ("last_depth_ns", "recv_ns of the last BK_DEPTH (throttle)"),
    ("reason", "REASON_* of the last invalidation"),
    ("snap_act", "SNAP_* of the snapshot being read"),
    ("snap_id", "lastUpdateId of the snapshot being staged"),
)
COUNTER_NAMES = (
    "applied",  # diffs applied to the book
    "chain_breaks",
    "resyncs",  # resyncs requested after an invalidation (the initial snapshot is not counted)
    "crossed",
    "stale",  # diffs dropped because u <= book id
    "buffered",  # diffs buffered while waiting for a snapshot
    "buffer_overflows",
    "snapshots_too_old",
    "snapshots_applied",
    "snapshots_ignored",
    "level_overflows",
    "malformed",
    "tickers",
    "trades",
    "reconnects",
    "lapped",
    "late_trades",
    "snapshot_failures",
    "bar_gaps_capped",  # time jumps over more than bar_max_empty_run empty intervals (no flat bars emitted)
)
_SYNC_PAD = 4  # to a whole number of cache lines
SYNC_ROW = np.dtype([(name, np.int64) for name, _doc in SYNC_HOT_FIELDS]
                    + [(name, np.int64) for name in COUNTER_NAMES]
                    + [("_pad", np.int64, (_SYNC_PAD,))], align=True)
if SYNC_ROW.itemsize != 320 or SYNC_ROW.fields["seq"][1] != 56 or SYNC_ROW.fields["applied"][1] != 136:
    raise ImportError(f"SYNC_ROW layout drifted: itemsize {SYNC_ROW.itemsize}")


def alloc_sync(n_symbols: int, buffer_capacity: int):
    """(sync, buf, resync): SYNC_ROW per symbol, diff buffers, and the resync-request flags."""
    sync = np.zeros(n_symbols, dtype=SYNC_ROW)
    sync["state"] = ST_NO_SNAPSHOT
    sync["top_state"] = -1  # nothing published yet
    sync["last_depth_ns"] = np.iinfo(np.int64).min // 2
    sync["reason"] = REASON_START
    buf = np.zeros((n_symbols, buffer_capacity), dtype=MD_EVENT)
    resync = np.ones(n_symbols, dtype=np.uint8)  # every book starts by asking for a snapshot
    return sync, buf, resync


@nb.njit(cache=True, nogil=True)
def sync_decide(s, first_id, last_id):
    """Action for a diff U=first_id, u=last_id given the state of row ``s`` (not ST_NO_SNAPSHOT)."""
    book_id = s.book_id
    if last_id <= book_id:
        return ACT_DROP
    if s.state == ST_AWAIT_BRIDGE:
        return ACT_APPLY if first_id <= book_id + 1 else ACT_BREAK
    return ACT_APPLY if first_id == book_id + 1 else ACT_BREAK


@nb.njit(cache=True, nogil=True)
def sync_on_break(st, sym):
    """A diff that neither bridges nor chains (``sync_decide`` said ACT_BREAK).

    Waiting for the bridge, it means the snapshot is older than the diffs
    (fetch again, as the procedure says); on a synced book it is a gap. Either
    way it is counted and the symbol goes INVALID with a resync requested.
    """
    s = st.sync[sym]
    if s.state == ST_AWAIT_BRIDGE:
        s.snapshots_too_old += 1
        sync_set_invalid(st, sym, REASON_SNAPSHOT_TOO_OLD)
    else:
        s.chain_breaks += 1
        sync_set_invalid(st, sym, REASON_GAP)


@nb.njit(cache=True, nogil=True)
def sync_set_invalid(st, sym, reason):
    """Leave the synced path: wait for a new snapshot and ask the feed for one.

    The diff buffer and any diff in progress are the caller's business.
    """
    s = st.sync[sym]
    s.state = ST_NO_SNAPSHOT
    s.reason = reason
    s.snap_act = SNAP_NONE
    st.resync[sym] = 1
    s.resyncs += 1


@nb.njit(cache=True, nogil=True)
def _log_applied(st, sym, u):
    """Record (symbol, u, top) after an applied diff, for replay checks (``st.diag`` may have 0 rows)."""
    diag = st.diag
    d = st.diag_n[0]
    if d >= diag.shape[0]:
        return
    bp, bq, ap, aq = book_top(st.keys, st.qtys, st.count, sym)
    diag[d, 0] = sym
    diag[d, 1] = u
    diag[d, 2] = bp
    diag[d, 3] = bq
    diag[d, 4] = ap
    diag[d, 5] = aq
    st.diag_n[0] = d + 1


@nb.njit(cache=True, nogil=True)
def sync_diff_applied(st, sym, last_id):
    """Bookkeeping after the last level of an applied diff. Returns False if the book crossed."""
    s = st.sync[sym]
    s.book_id = last_id
    s.applied += 1
    if s.state == ST_AWAIT_BRIDGE:
        s.state = ST_SYNCED
    if st.diag.shape[0]:
        _log_applied(st, sym, last_id)
    if book_is_crossed(st.keys, st.qtys, st.count, sym):
        s.crossed += 1
        sync_set_invalid(st, sym, REASON_CROSSED)
        return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def apply_level(st, sym, kind, px, qty):
    """Apply one diff level record (MD_DEPTH_NONE carries none)."""
    if kind == MD_DEPTH_BID:
        r = book_set_level(st.keys, st.qtys, st.count, sym, 0, px, qty)
    elif kind == MD_DEPTH_ASK:
        r = book_set_level(st.keys, st.qtys, st.count, sym, 1, px, qty)
    else:
        return
    if r == SET_OVERFLOW:
        st.sync[sym].level_overflows += 1


@nb.njit(cache=True, nogil=True)
def sync_replay_buffer(st, sym):
    """Apply the buffered diffs after a snapshot (state ST_AWAIT_BRIDGE, book = snapshot).

    Drops diffs with u <= L, checks the bridge, applies and chains the rest.
    If the first remaining diff does not bridge (snapshot too old) or a later
    one does not chain, the buffer is kept from that diff on, the state goes
    back to ST_NO_SNAPSHOT and a resync is requested.
    """
    s = st.sync[sym]
    n = s.buf_n
    b = st.buf[sym]
    i = 0
    while i < n:
        j = i
        while j < n - 1 and (b[j].flags & FLAG_END) == 0:
            j += 1
        first_id = b[i].first_id
        last_id = b[i].last_id
        act = sync_decide(s, first_id, last_id)
        if act == ACT_BREAK:
            sync_on_break(st, sym)
            m = n - i
            for t in range(m):
                b[t] = b[i + t]
            s.buf_n = m
            return
        if act == ACT_DROP:
            s.stale += 1
        else:
            for t in range(i, j + 1):
                apply_level(st, sym, b[t].kind, b[t].price, b[t].qty)
            if not sync_diff_applied(st, sym, last_id):
                s.buf_n = 0
                return
        i = j + 1
    s.buf_n = 0

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

State lives in ``sync[n_symbols, SYNC_NCOLS]`` (int64) and a per-symbol diff
buffer ``buf[n_symbols, buffer_capacity]`` of MD_EVENT records.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from core.book import SET_OVERFLOW, book_is_crossed, book_set_level
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

# sync row columns: state
S_STATE = 0
S_BOOK_ID = 1  # last applied update id (snapshot L, then each diff's u)
S_SNAP_ID = 2  # lastUpdateId of the snapshot being staged
S_SNAP_ACT = 3
S_CUR_U = 4  # U, u and action of the diff being read
S_CUR_UU = 5
S_CUR_ACT = 6
S_CUR_START = 7  # buffer index where the diff being buffered starts
S_BUF_N = 8
S_SEQ = 9  # next BOOK_EVENT seq
S_TOP_BP = 10  # last published top and state (to publish only changes)
S_TOP_BQ = 11
S_TOP_AP = 12
S_TOP_AQ = 13
S_TOP_STATE = 14
S_LAST_DEPTH_NS = 15
S_REASON = 16  # reason of the last invalidation
# sync row columns: counters
C_APPLIED = 17  # diffs applied to the book
C_CHAIN_BREAKS = 18
C_RESYNCS = 19  # resyncs requested after an invalidation (the initial snapshot is not counted)
C_CROSSED = 20
C_STALE = 21  # diffs dropped because u <= book id
C_BUFFERED = 22  # diffs buffered while waiting for a snapshot
C_BUF_OVERFLOW = 23
C_SNAP_TOO_OLD = 24
C_SNAP_APPLIED = 25
C_SNAP_IGNORED = 26
C_LEVEL_OVERFLOW = 27
C_MALFORMED = 28
C_TICKERS = 29
C_TRADES = 30
C_RECONNECTS = 31
C_LAPPED = 32
C_LATE_TRADES = 33
C_SNAP_FAILED = 34
SYNC_NCOLS = 40

COUNTER_NAMES = {
    "applied": C_APPLIED, "chain_breaks": C_CHAIN_BREAKS, "resyncs": C_RESYNCS, "crossed": C_CROSSED,
    "stale": C_STALE, "buffered": C_BUFFERED, "buffer_overflows": C_BUF_OVERFLOW,
    "snapshots_too_old": C_SNAP_TOO_OLD, "snapshots_applied": C_SNAP_APPLIED,
    "snapshots_ignored": C_SNAP_IGNORED, "level_overflows": C_LEVEL_OVERFLOW, "malformed": C_MALFORMED,
    "tickers": C_TICKERS, "trades": C_TRADES, "reconnects": C_RECONNECTS, "lapped": C_LAPPED,
    "late_trades": C_LATE_TRADES, "snapshot_failures": C_SNAP_FAILED,
}


def alloc_sync(n_symbols: int, buffer_capacity: int):
    """(sync, buf, resync): sync rows, diff buffers, and the resync-request flags."""
    sync = np.zeros((n_symbols, SYNC_NCOLS), dtype=np.int64)
    sync[:, S_STATE] = ST_NO_SNAPSHOT
    sync[:, S_TOP_STATE] = -1  # nothing published yet
    sync[:, S_LAST_DEPTH_NS] = np.iinfo(np.int64).min // 2
    sync[:, S_REASON] = REASON_START
    buf = np.zeros((n_symbols, buffer_capacity), dtype=MD_EVENT)
    resync = np.ones(n_symbols, dtype=np.uint8)  # every book starts by asking for a snapshot
    return sync, buf, resync


@nb.njit(cache=True, nogil=True)
def sync_decide(sync, sym, first_id, last_id):
    """Action for a diff U=first_id, u=last_id given the current state (not ST_NO_SNAPSHOT)."""
    book_id = sync[sym, S_BOOK_ID]
    if last_id <= book_id:
        return ACT_DROP
    if sync[sym, S_STATE] == ST_AWAIT_BRIDGE:
        return ACT_APPLY if first_id <= book_id + 1 else ACT_BREAK
    return ACT_APPLY if first_id == book_id + 1 else ACT_BREAK


@nb.njit(cache=True, nogil=True)
def sync_on_break(sync, resync, sym):
    """A diff that neither bridges nor chains (``sync_decide`` said ACT_BREAK).

    Waiting for the bridge, it means the snapshot is older than the diffs
    (fetch again, as the procedure says); on a synced book it is a gap. Either
    way it is counted and the symbol goes INVALID with a resync requested.
    """
    if sync[sym, S_STATE] == ST_AWAIT_BRIDGE:
        sync[sym, C_SNAP_TOO_OLD] += 1
        sync_set_invalid(sync, resync, sym, REASON_SNAPSHOT_TOO_OLD)
    else:
        sync[sym, C_CHAIN_BREAKS] += 1
        sync_set_invalid(sync, resync, sym, REASON_GAP)


@nb.njit(cache=True, nogil=True)
def sync_set_invalid(sync, resync, sym, reason):
    """Leave the synced path: wait for a new snapshot and ask the feed for one.

    The diff buffer and any diff in progress are the caller's business.
    """
    sync[sym, S_STATE] = ST_NO_SNAPSHOT
    sync[sym, S_REASON] = reason
    sync[sym, S_SNAP_ACT] = SNAP_NONE
    resync[sym] = 1
    sync[sym, C_RESYNCS] += 1


@nb.njit(cache=True, nogil=True)
def _log_applied(diag, diag_n, sym, u, keys, qtys, count):
    """Record (symbol, u, top) after an applied diff, for replay checks (optional)."""
    d = diag_n[0]
    if d >= diag.shape[0]:
        return
    diag[d, 0] = sym
    diag[d, 1] = u
    n = count[sym, 0]
    diag[d, 2] = keys[sym, 0, n - 1] if n > 0 else 0
    diag[d, 3] = qtys[sym, 0, n - 1] if n > 0 else 0
    n = count[sym, 1]
    diag[d, 4] = -keys[sym, 1, n - 1] if n > 0 else 0
    diag[d, 5] = qtys[sym, 1, n - 1] if n > 0 else 0
    diag_n[0] = d + 1


@nb.njit(cache=True, nogil=True)
def sync_diff_applied(sync, resync, keys, qtys, count, sym, last_id, diag, diag_n):
    """Bookkeeping after the last level of an applied diff. Returns False if the book crossed."""
    sync[sym, S_BOOK_ID] = last_id
    sync[sym, C_APPLIED] += 1
    if sync[sym, S_STATE] == ST_AWAIT_BRIDGE:
        sync[sym, S_STATE] = ST_SYNCED
    _log_applied(diag, diag_n, sym, last_id, keys, qtys, count)
    if book_is_crossed(keys, qtys, count, sym):
        sync[sym, C_CROSSED] += 1
        sync_set_invalid(sync, resync, sym, REASON_CROSSED)
        return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def apply_level(keys, qtys, count, sync, sym, kind, px, qty):
    """Apply one diff level record (MD_DEPTH_NONE carries none)."""
    if kind == MD_DEPTH_BID:
        r = book_set_level(keys, qtys, count, sym, 0, px, qty)
    elif kind == MD_DEPTH_ASK:
        r = book_set_level(keys, qtys, count, sym, 1, px, qty)
    else:
        return
    if r == SET_OVERFLOW:
        sync[sym, C_LEVEL_OVERFLOW] += 1


@nb.njit(cache=True, nogil=True)
def sync_replay_buffer(sync, resync, buf, keys, qtys, count, sym, diag, diag_n):
    """Apply the buffered diffs after a snapshot (state ST_AWAIT_BRIDGE, book = snapshot).

    Drops diffs with u <= L, checks the bridge, applies and chains the rest.
    If the first remaining diff does not bridge (snapshot too old) or a later
    one does not chain, the buffer is kept from that diff on, the state goes
    back to ST_NO_SNAPSHOT and a resync is requested.
    """
    n = sync[sym, S_BUF_N]
    b = buf[sym]
    i = 0
    while i < n:
        j = i
        while j < n - 1 and (b[j].flags & FLAG_END) == 0:
            j += 1
        first_id = b[i].first_id
        last_id = b[i].last_id
        act = sync_decide(sync, sym, first_id, last_id)
        if act == ACT_BREAK:
            sync_on_break(sync, resync, sym)
            m = n - i
            for t in range(m):
                b[t] = b[i + t]
            sync[sym, S_BUF_N] = m
            return
        if act == ACT_DROP:
            sync[sym, C_STALE] += 1
        else:
            for t in range(i, j + 1):
                apply_level(keys, qtys, count, sync, sym, b[t].kind, b[t].price, b[t].qty)
            if not sync_diff_applied(sync, resync, keys, qtys, count, sym, last_id, diag, diag_n):
                sync[sym, S_BUF_N] = 0
                return
        i = j + 1
    sync[sym, S_BUF_N] = 0

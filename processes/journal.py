"""The execution journal: every order intent, send, ack, fill, cancel and reject, in SQLite.

Off the hot path
----------------
``JournalWriter`` is an ordinary consumer of the ``orders`` ring (risk ->
execution) and the ``reports`` ring (execution -> risk). It copies a batch
out of each ring, writes it to SQLite in one transaction, on its own thread
(or process), and only then releases the slots; the transaction also
records up to which ring seq it got (``meta`` ``ring/<name>``), so the
journal is always an exact prefix of what the stages published. The execution loop never
touches SQLite: the one thing it hands over that no ring carries, the send
time, goes through ``JournalWriter.note_sent`` (a ``deque.append``, atomic in
CPython, no lock, no syscall).

Files and durability policy
---------------------------
One SQLite database (standard library ``sqlite3``) in WAL mode.

* Journal writes (``Journal``: orders, reports, sends): ``synchronous=NORMAL``.
  A commit is an append to the WAL, not fsynced. A ``kill -9`` of the writer
  (or of the whole process) loses at most the batch it had not committed
  yet; committed batches are in the OS page cache and survive; the file is
  never corrupted (WAL frames past the last commit record are ignored on
  recovery). A power loss or kernel crash may additionally lose the last
  transactions committed since the last checkpoint's fsync, never corrupts.
  Anything lost is recovered by reconciliation against the venue
  (``open_orders``, ``last_trade_id``), which the journal is designed for.
* A ``kill -9`` of the writer loses nothing that a stage published: records
  are released from the rings only after their commit, so the next writer
  reads the uncommitted batch again (writes are idempotent).
* Client order id reservations (``IdReserver``): their own connection with
  ``synchronous=FULL``: the WAL is fsynced at the commit of every
  reservation, so a reserved block survives a power loss too, and with it
  everything committed before it.
* Batches are atomic: a batch is all there or not at all.

Client order ids
----------------
``newClientOrderId`` is ``"<instance>-<cid>"`` (``client_order_id_str``):
the instance prefix and a monotonically increasing counter, never reused,
even across restarts and spare takeovers. ``IdReserver`` hands ids out of
blocks; before the first id of a block is used it durably commits the new
high-water mark (``meta`` key ``cid_hwm/<instance>``) in a
``BEGIN IMMEDIATE`` transaction, so the next process (a restart, or the spare
taking over on the same journal) starts at the next block, and two processes
reserving at once get disjoint blocks. This is what "persisted in the journal
before the order is sent" means here: the id is durably reserved before it
can be used; the order's own row arrives through the ring consumer a few
milliseconds later (ids between the highest journaled one and the
high-water mark are the ones reconciliation asks the venue about:
``unjournaled_ids``).

Schema (version ``SCHEMA_VERSION`` in ``PRAGMA user_version``)
------------------------------------------------------------
Prices, quantities, commissions and quote amounts are ``INTEGER`` fixed point
at 1e-8 (``core.records.FIXED_SCALE``); the views ``v_orders`` and
``v_fills`` show them as decimal text. ``*_ns`` columns are CLOCK_MONOTONIC
ns of this host (comparable between processes, not across reboots);
``*_ms`` are exchange ms since the epoch. Enumerations are stored as their
names (``'BUY'``, ``'LIMIT'``, ``'FILLED'``).

``orders``: one row per client order id (an ``ORD_NEW``, ``ORD_CANCEL`` or
``ORD_CANCEL_ALL`` request), or per denial (``action = 'DENIED'``: risk said
no, nothing was sent, no client id). Keyed by a rowid because a denial has
no client id; ``client_order_id`` (the wire string) is ``UNIQUE`` and
``(instance, cid)`` with it. Intent columns come from the ORDER_REQUEST;
``state`` / ``state_rank`` (INTENT 0, SENT 1, NEW 2, PARTIALLY_FILLED 3,
final 4: FILLED / CANCELED / REJECTED / EXPIRED / DENIED) only move forward,
so a report that arrives late or twice never moves an order back.
``cum_qty`` / ``cum_quote`` are the venue's, the largest seen. A report for
an order whose intent has not been journaled yet (the two rings are read
one after the other) creates the row; the intent fills it in when it comes.

``fills``: one row per venue trade, ``UNIQUE (symbol, trade_id)``: a
duplicate or re-ordered trade report is logged as an event and counted once.
``slip_bps`` is the realized slippage against the order's ``ref_px``
(positive = worse than the reference: paid more buying, got less selling).

``events``: append-only log of every intent, denial, send, ack, fill,
cancel, reject and expiry, with its times, a ``note`` (``duplicate``:
a trade already journaled; ``stale``: a late or repeated report that changed
nothing; ``duplicate_cid``: a second, different order under an
id already used) and the raw ring record (``raw``: the record's bytes,
``record``: its ``core.records`` dtype name; ``decode_raw`` reads it back).

``meta``: ``instance``, ``symbols`` (JSON: instrument id -> name of the last
writer), ``cid_hwm/<instance>`` (id reservation high-water mark: ids below it
are taken), ``last_trade_id/<symbol>``, ``duplicate_cids``, ``created_ms``,
``ring/<orders|reports>`` (JSON: the ring segment's token and the seq just
past the last record committed), ``epoch`` (JSON: the rows of the venue
account trading now, and its balances when trading began: ``Journal.epoch``).

Epochs and restarts
-------------------
The local simulator and paper trading give every run a fresh account, so
the supervisor starts a new epoch for them (``new_epoch``); against Binance
the account, and the epoch, persist. Positions, open orders and
reconciliation look at the current epoch. A restarting risk stage rebuilds
its positions and open orders from one snapshot (``recovery``: the epoch's
fills, its open orders, the ring marks) and reads the rings from the marks
on; execution loads the open orders and settles them against the venue.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.errors import RingtraderError
from core.records import (
    EX_CANCELED,
    EX_EXPIRED,
    EX_NEW,
    EX_REJECTED,
    EX_TRADE,
    EXEC_REPORT,
    FIXED_SCALE,
    ORD_CANCEL,
    ORD_CANCEL_ALL,
    ORD_DENIED,
    ORD_NEW,
    ORDER_REQUEST,
    ORIGIN_KILL,
    ORIGIN_OPERATOR,
    ORIGIN_STOP,
    ORIGIN_STRATEGY,
    OS_CANCELED,
    OS_EXPIRED,
    OS_FILLED,
    OS_NEW,
    OS_PARTIALLY_FILLED,
    OS_REJECTED,
    OT_LIMIT,
    OT_LIMIT_MAKER,
    OT_MARKET,
    SIDE_BUY,
    SIDE_CLOSE,
    SIDE_SELL,
    TIF_FOK,
    TIF_GTC,
    TIF_IOC,
    dtype_name,
)

log = logging.getLogger("ringtrader.journal")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000  # a writer waits this long for another connection's write lock
#: SQLite's page cache per connection (its default is 2000 KiB). The journal appends and looks up recent orders:
#: its working set is the right-hand path of a few b-trees, a few dozen pages. Left at the default, the cache
#: filled with every order for the first hours of a run, and the process's memory with it (scripts/soak.py).
CACHE_KIB = 256
CLIENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")  # Binance's newClientOrderId format
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_-]{1,34}$")  # leaves room for "-" and one digit within 36
ALL_SYMBOLS = 0xFFFF  # ORDER_REQUEST.symbol of an ORD_CANCEL_ALL over every symbol

# names stored for the records' integer codes
ACTION_NAMES = {ORD_NEW: "NEW", ORD_CANCEL: "CANCEL", ORD_CANCEL_ALL: "CANCEL_ALL", ORD_DENIED: "DENIED"}
ORIGIN_NAMES = {ORIGIN_STRATEGY: "STRATEGY", ORIGIN_STOP: "STOP", ORIGIN_KILL: "KILL", ORIGIN_OPERATOR: "OPERATOR"}
TYPE_NAMES = {OT_LIMIT: "LIMIT", OT_MARKET: "MARKET", OT_LIMIT_MAKER: "LIMIT_MAKER"}
TIF_NAMES = {TIF_GTC: "GTC", TIF_IOC: "IOC", TIF_FOK: "FOK"}
SIDE_NAMES = {SIDE_BUY: "BUY", SIDE_SELL: "SELL", SIDE_CLOSE: "CLOSE"}
STATUS_NAMES = {OS_NEW: "NEW", OS_PARTIALLY_FILLED: "PARTIALLY_FILLED", OS_FILLED: "FILLED",
                OS_CANCELED: "CANCELED", OS_REJECTED: "REJECTED", OS_EXPIRED: "EXPIRED"}
EXEC_STATE = {EX_NEW: "NEW", EX_TRADE: "PARTIALLY_FILLED", EX_CANCELED: "CANCELED", EX_REJECTED: "REJECTED",
              EX_EXPIRED: "EXPIRED"}  # the state a report implies when its status is 0
EXEC_KIND = {EX_NEW: "ack", EX_TRADE: "fill", EX_CANCELED: "canceled", EX_REJECTED: "rejected",
             EX_EXPIRED: "expired"}  # events.kind of a report
ORDER_KIND = {ORD_NEW: "intent", ORD_CANCEL: "cancel", ORD_CANCEL_ALL: "cancel_all", ORD_DENIED: "denied"}
COMMISSION_ASSET_NAMES = {0: "QUOTE", 1: "BASE", 2: "OTHER"}  # EXEC_REPORT.commission_asset

RANK_INTENT, RANK_SENT, RANK_NEW, RANK_PARTIAL, RANK_FINAL = 0, 1, 2, 3, 4
STATE_RANK = {"INTENT": RANK_INTENT, "SENT": RANK_SENT, "NEW": RANK_NEW, "PARTIALLY_FILLED": RANK_PARTIAL,
              "FILLED": RANK_FINAL, "CANCELED": RANK_FINAL, "REJECTED": RANK_FINAL, "EXPIRED": RANK_FINAL,
              "DENIED": RANK_FINAL}


class JournalError(RingtraderError):
    """A journal that cannot be opened or used: missing, not a journal, corrupt, newer schema, disk error.

    (Belongs in ``core.errors``' tree; defined here until that module lists it.)
    """


# ---------------------------------------------------------------------------
# Client order ids on the wire
# ---------------------------------------------------------------------------
def client_order_id_str(instance: str, cid: int) -> str:
    """``"<instance>-<cid>"``: the ``newClientOrderId`` sent to Binance (``^[a-zA-Z0-9-_]{1,36}$``)."""
    if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)) or cid < 0:
        raise ValueError(f"client order id counter must be an int >= 0, got {cid!r}")
    s = f"{instance}-{int(cid)}"
    if not CLIENT_ID_RE.match(s):
        raise ValueError(f"client order id {s!r} ({len(s)} chars) does not match Binance's "
                         f"^[a-zA-Z0-9-_]{{1,36}}$: shorten the instance prefix {instance!r}")
    return s


def parse_client_order_id(s: str) -> tuple[str, int]:
    """``"<instance>-<cid>"`` -> ``(instance, cid)``; ``ValueError`` naming the text if it is not ours."""
    if not isinstance(s, str) or not CLIENT_ID_RE.match(s):
        raise ValueError(f"not a Binance client order id: {s!r}")
    instance, dash, digits = s.rpartition("-")
    if not dash or not instance or not digits.isdigit():
        raise ValueError(f"not one of our client order ids (<instance>-<counter>): {s!r}")
    return instance, int(digits)


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------
_SCHEMA_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value                                   -- int or text
) WITHOUT ROWID;

CREATE TABLE orders (
    id                   INTEGER PRIMARY KEY,
    client_order_id      TEXT UNIQUE,       -- "<instance>-<cid>" as sent (NULL: a denial)
    instance             TEXT NOT NULL,
    cid                  INTEGER,           -- the counter part of client_order_id
    action               TEXT,              -- NEW / CANCEL / CANCEL_ALL / DENIED (NULL: only reports seen yet)
    orig_client_order_id TEXT,              -- CANCEL: the order to cancel
    symbol               TEXT,              -- name ('*': every symbol)
    symbol_id            INTEGER,           -- instrument id in the records
    side                 TEXT,              -- BUY / SELL
    type                 TEXT,              -- LIMIT / MARKET / LIMIT_MAKER
    tif                  TEXT,              -- GTC / IOC / FOK
    price                INTEGER,           -- fixed point 1e-8 (0: market)
    qty                  INTEGER,           -- fixed point
    stop_px              INTEGER,           -- fixed point (0: none)
    origin               TEXT,              -- STRATEGY / STOP / KILL / OPERATOR
    strategy             INTEGER,
    signal_id            INTEGER,
    reduce_only          INTEGER,
    ref_px               INTEGER,           -- arrival mid when risk decided, fixed point
    est_slip_bps         REAL,              -- risk's pre-trade estimate (NULL: none)
    reason               INTEGER,           -- DENIED: core.risk_kernels.D_* code
    reason_name          TEXT,              -- DENIED: its name (DENY_NAMES)
    recv_ns              INTEGER,           -- feed received the frame that caused it
    signal_pub_ns        INTEGER,           -- the signal's pub_ns (ORDER_REQUEST.in_pub_ns)
    decided_ns           INTEGER,           -- risk published the request (ORDER_REQUEST.pub_ns)
    cause_exch_ms        INTEGER,           -- exchange time of the cause
    sent_ns              INTEGER,           -- execution handed it to the venue
    ack_ns               INTEGER,           -- first venue answer published (EXEC_REPORT.pub_ns, earliest)
    ack_exch_ms          INTEGER,           -- venue transaction time of the first answer
    last_exch_ms         INTEGER,           -- venue transaction time of the latest report
    final_ns             INTEGER,           -- the final report's pub_ns
    state                TEXT NOT NULL,     -- INTENT SENT NEW PARTIALLY_FILLED FILLED CANCELED REJECTED EXPIRED DENIED
    state_rank           INTEGER NOT NULL,  -- 0..4, only ever increases
    order_id             INTEGER,           -- venue order id
    cum_qty              INTEGER NOT NULL DEFAULT 0,
    cum_quote            INTEGER NOT NULL DEFAULT 0,
    reject_code          INTEGER,           -- venue error code (e.g. -2010)
    reports              INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance, cid)
);
CREATE UNIQUE INDEX orders_denial_key ON orders (instance, decided_ns, recv_ns, signal_id, symbol_id, reason)
    WHERE client_order_id IS NULL;
CREATE INDEX orders_rank ON orders (state_rank);

CREATE TABLE fills (
    id               INTEGER PRIMARY KEY,
    symbol           TEXT NOT NULL,
    trade_id         INTEGER NOT NULL,      -- venue trade id (per symbol)
    client_order_id  TEXT,
    order_id         INTEGER,
    symbol_id        INTEGER,
    side             TEXT,                  -- BUY / SELL
    px               INTEGER NOT NULL,      -- fixed point
    qty              INTEGER NOT NULL,      -- fixed point
    quote            INTEGER NOT NULL,      -- px * qty, fixed point, truncated at 1e-8
    commission       INTEGER NOT NULL,      -- fixed point, in commission_asset
    commission_asset TEXT NOT NULL,         -- QUOTE / BASE / OTHER
    is_maker         INTEGER NOT NULL,
    exch_ms          INTEGER,               -- venue transaction time
    report_ns        INTEGER,               -- execution published the report (EXEC_REPORT.pub_ns)
    ref_px           INTEGER,               -- the order's ref_px (NULL: intent not journaled yet)
    slip_bps         REAL,                  -- realized slippage vs ref_px, bps, positive = cost
    UNIQUE (symbol, trade_id)
);
CREATE INDEX fills_cid ON fills (client_order_id);

CREATE TABLE events (
    seq              INTEGER PRIMARY KEY,   -- append order
    kind             TEXT NOT NULL,         -- intent cancel cancel_all denied send ack fill canceled rejected
                                            -- expired lost
    client_order_id  TEXT,
    symbol           TEXT,
    mono_ns          INTEGER,               -- the record's pub_ns (send: sent_ns)
    exch_ms          INTEGER,
    note             TEXT,                  -- duplicate / stale / duplicate_cid / NULL
    record           TEXT,                  -- core.records dtype name of raw
    raw              BLOB,                  -- the ring record's bytes
    journal_ns       INTEGER,               -- CLOCK_MONOTONIC ns the batch was written
    written_ms       INTEGER                -- wall clock ms epoch the batch was written
);
CREATE INDEX events_cid ON events (client_order_id);

CREATE VIEW v_orders AS SELECT
    id, client_order_id, action, state, symbol, side, type, tif,
    printf('%d.%08d', price / 100000000, price % 100000000) AS price,
    printf('%d.%08d', qty / 100000000, qty % 100000000) AS qty,
    printf('%d.%08d', cum_qty / 100000000, cum_qty % 100000000) AS cum_qty,
    printf('%d.%08d', cum_quote / 100000000, cum_quote % 100000000) AS cum_quote,
    printf('%d.%08d', ref_px / 100000000, ref_px % 100000000) AS ref_px,
    est_slip_bps, origin, reason_name, order_id, reject_code,
    (ack_ns - decided_ns) / 1e6 AS order_to_ack_ms, (ack_ns - sent_ns) / 1e6 AS send_to_ack_ms
FROM orders;

CREATE VIEW v_fills AS SELECT
    id, symbol, trade_id, client_order_id, side,
    printf('%d.%08d', px / 100000000, px % 100000000) AS px,
    printf('%d.%08d', qty / 100000000, qty % 100000000) AS qty,
    printf('%d.%08d', quote / 100000000, quote % 100000000) AS quote,
    printf('%d.%08d', commission / 100000000, commission % 100000000) AS commission,
    commission_asset, is_maker, exch_ms, slip_bps
FROM fills;
"""

_TABLES = ("meta", "orders", "fills", "events")


def _fsync_dir(path: Path) -> None:
    """fsync the directory entry of a new file (its name survives a power loss)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we BEGIN ourselves), WAL, the given synchronous level."""
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot switch to WAL mode (got {mode!r}; a network filesystem?)")
        con.execute(f"PRAGMA synchronous = {synchronous}")
        con.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    except BaseException:
        con.close()
        raise
    return con


def _open_db(path: Path, *, create: bool, synchronous: str) -> sqlite3.Connection:
    """Open (and with ``create``, initialise or migrate) a journal database. Raises ``JournalError``."""
    path = Path(path)
    existed = path.exists()
    if not existed and not create:
        raise JournalError(f"journal {path}: no such file")
    if not existed:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = _connect(path, synchronous)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(f"journal {path}: schema version {version} is newer than this code's "
                                   f"{SCHEMA_VERSION}")
            if version == 0:
                tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables:
                    raise JournalError(f"journal {path}: an SQLite database that is not a ringtrader journal "
                                       f"({tables} objects, user_version 0)")
                if not create:
                    raise JournalError(f"journal {path}: empty database, not a journal")
                con.execute("BEGIN IMMEDIATE")
                try:
                    if con.execute("PRAGMA user_version").fetchone()[0] == 0:  # nobody initialised it meanwhile
                        for stmt in _SCHEMA_V1.split(";\n"):  # not executescript: it would COMMIT our BEGIN
                            if stmt.strip():
                                con.execute(stmt)
                        con.execute("INSERT INTO meta VALUES ('created_ms', ?)", (time.time_ns() // 1_000_000,))
                        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                if not existed:
                    _fsync_dir(path.resolve().parent)
            else:
                have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                missing = [t for t in _TABLES if t not in have]
                if missing:
                    raise JournalError(f"journal {path}: schema v{version} without table(s) {', '.join(missing)}")
        except BaseException:
            con.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"journal {path}: {exc} (not a journal, or corrupt)") from exc
    return con


_OPEN_KEYS = ("client_order_id", "instance", "cid", "action", "symbol", "symbol_id", "side", "type", "tif", "price", "qty",
              "cum_qty", "state", "order_id", "origin", "reduce_only", "decided_ns", "sent_ns", "ref_px", "recv_ns")
_OPEN_SQL = (f"SELECT {', '.join(_OPEN_KEYS)} FROM orders WHERE state_rank < ? AND (action = 'NEW' OR action IS NULL) "
             "AND id > ? ORDER BY id")


# ---------------------------------------------------------------------------
# Journal
# ---------------------------------------------------------------------------
def _name(table: dict, code: int) -> str | None:
    return table.get(int(code))


def _state_of_report(status: int, exec_type: int) -> str | None:
    return STATUS_NAMES.get(int(status)) or EXEC_STATE.get(int(exec_type))


def slippage_bps(side: str | None, px: int, ref_px: int | None) -> float | None:
    """Realized slippage of a fill at ``px`` against ``ref_px``, bps; positive = worse than the reference."""
    if not ref_px or ref_px <= 0 or side not in ("BUY", "SELL"):
        return None
    d = (px - ref_px) if side == "BUY" else (ref_px - px)
    return d / ref_px * 1e4


class Journal:
    """One journal database. Writes are batched, one transaction per call, and idempotent.

    ``instance``: the client-id prefix of the orders this journal writes
    (ids are stored as ``"<instance>-<cid>"``); required to write, not to
    read. ``symbols``: instrument names by id (``config.instruments``), for
    the names stored with each row; without it ``meta.symbols`` of the last
    writer is used, else ``"#<id>"``.

    Thread-safe (one lock around each transaction), but meant for one writer
    thread. ``create=False`` opens an existing journal only (reports,
    reconciliation): a missing, non-journal or corrupt file raises
    ``JournalError``.
    """

    def __init__(self, path, *, instance: str | None = None, symbols=None, create: bool = True):
        self.path = Path(path)
        if instance is not None and not _INSTANCE_RE.match(instance):
            raise ValueError(f"journal instance prefix must match {_INSTANCE_RE.pattern} (it leads every client "
                             f"order id), got {instance!r}")
        self.instance = instance
        self._lock = threading.Lock()
        self._con = _open_db(self.path, create=create, synchronous="NORMAL")
        self.counters = collections.Counter()  # orders, denials, reports, fills, duplicate_fills, stale, ...
        try:
            if symbols is not None:
                self.symbols = {i: str(s) for i, s in enumerate(symbols)}
            else:
                row = self.query("SELECT value FROM meta WHERE key = 'symbols'")
                self.symbols = {int(k): v for k, v in json.loads(row[0][0]).items()} if row else {}
            if symbols is not None or instance is not None:  # a writer: say who writes (a reader takes no lock)
                with self._tx() as cur:
                    if symbols is not None:
                        cur.execute("INSERT INTO meta VALUES ('symbols', ?) ON CONFLICT(key) DO UPDATE SET "
                                    "value = excluded.value", (json.dumps(self.symbols),))
                    if instance is not None:
                        cur.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (instance,))
        except BaseException:
            self._con.close()
            raise

    # -- plumbing -----------------------------------------------------------

    @contextmanager
    def _tx(self):
        """One write transaction (``BEGIN IMMEDIATE``: takes the write lock up front, no upgrade deadlock)."""
        with self._lock:
            cur = self._con.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: cannot begin a write: {exc}") from exc
            try:
                yield cur
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            try:
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._con.execute("ROLLBACK")
                raise JournalError(f"journal {self.path}: commit failed: {exc}") from exc

    def query(self, sql: str, args=()) -> list:
        """Rows of one SQL statement (for reads: reports, reconciliation). ``JournalError`` on a database error."""
        with self._lock:
            try:
                return self._con.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    def _need_instance(self) -> str:
        if self.instance is None:
            raise JournalError(f"journal {self.path}: opened without an instance prefix: read-only use only")
        return self.instance

    def _sym(self, sid: int) -> str:
        if sid == ALL_SYMBOLS:
            return "*"
        return self.symbols.get(int(sid), f"#{int(sid)}")

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writes -------------------------------------------------------------

    def record_orders(self, recs: np.ndarray) -> int:
        """Journal ORDER_REQUEST records (intents, cancels, cancel-alls, denials) in one transaction.

        Idempotent: a record already journaled (same client id and
        ``pub_ns``; a denial: same decision key) changes nothing. A second,
        different request under a used client id is a duplicate id: logged
        (note ``duplicate_cid``), counted in ``meta.duplicate_cids``, the
        first row kept. Trace probes (action 0) are skipped. Returns rows written.
        """
        with self._tx() as cur:
            return self._write_orders(cur, recs, *self._stamp())

    def record_sent(self, cid: int, sent_ns: int) -> None:
        """The order ``cid`` was handed to the venue at ``sent_ns`` (CLOCK_MONOTONIC ns)."""
        self.record_sent_many([(cid, sent_ns)])

    def record_sent_many(self, pairs) -> int:
        """``(cid, sent_ns)`` pairs in one transaction; the earliest send time of an order is kept."""
        with self._tx() as cur:
            return self._write_sent(cur, pairs, *self._stamp())

    def record_reports(self, recs: np.ndarray) -> int:
        """Journal EXEC_REPORT records in one transaction. Idempotent and order-insensitive: fills are
        unique by (symbol, trade_id), states only move forward, cum_qty is the largest seen. Trace probes
        (exec_type 0) are skipped. Returns the records journaled."""
        with self._tx() as cur:
            return self._write_reports(cur, recs, *self._stamp())

    def record_batch(self, orders=None, sent=(), reports=None, lost: dict | None = None,
                     marks: dict | None = None) -> int:
        """Orders, then sends, then reports, in ONE transaction (the writer's batch). ``lost``: ring name ->
        records a lapped consumer lost (logged as a ``lost`` event). ``marks``: ring name -> (segment token,
        seq just past the batch's last record of that ring), committed with the batch (``ring_mark``)."""
        with self._tx() as cur:
            for ring, (token, seq) in (marks or {}).items():
                cur.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (f"ring/{ring}", json.dumps({"token": token, "seq": int(seq)})))
            stamp = self._stamp()
            n = 0
            if orders is not None and len(orders):
                n += self._write_orders(cur, orders, *stamp)
            if sent:
                n += self._write_sent(cur, sent, *stamp)
            if reports is not None and len(reports):
                n += self._write_reports(cur, reports, *stamp)
            for ring, k in (lost or {}).items():
                if k:
                    cur.execute("INSERT INTO events (kind, note, journal_ns, written_ms) VALUES ('lost', ?, ?, ?)",
                                (f"{ring}: {int(k)} records lost", *stamp))
            return n

    @staticmethod
    def _stamp() -> tuple[int, int]:
        return time.monotonic_ns(), time.time_ns() // 1_000_000

    def _cid_str(self, cid: int) -> str:
        """The row key of counter ``cid``: the wire format, not validated (a record's content never makes a
        write fail; the execution stage formats and checks what it sends with ``client_order_id_str``)."""
        return f"{self._need_instance()}-{int(cid)}"

    def _write_orders(self, cur, recs, journal_ns, written_ms) -> int:
        if recs.dtype != ORDER_REQUEST:
            raise ValueError(f"record_orders takes ORDER_REQUEST records, got {dtype_name(recs.dtype)}")
        instance = self._need_instance()
        raw = recs.tobytes()
        size = ORDER_REQUEST.itemsize
        cols = {k: recs[k].tolist() for k in ORDER_REQUEST.names}
        from core.risk_kernels import DENY_NAMES  # numba kernels compile lazily: the import itself is cheap

        written = 0
        events = []
        backfill = []
        for i in range(len(recs)):
            action = cols["action"][i]
            if action not in ACTION_NAMES:
                self.counters["probes"] += 1
                continue
            cid = cols["client_order_id"][i]
            sym = self._sym(cols["symbol"][i])
            reason = cols["reason"][i]
            slip = cols["est_slip_bps"][i]
            intent = {
                "action": ACTION_NAMES[action],
                "orig_client_order_id": self._cid_str(cols["orig_client_order_id"][i])
                if action == ORD_CANCEL and cols["orig_client_order_id"][i] > 0 else None,
                "symbol": sym, "symbol_id": cols["symbol"][i], "side": _name(SIDE_NAMES, cols["side"][i]),
                "type": _name(TYPE_NAMES, cols["order_type"][i]), "tif": _name(TIF_NAMES, cols["tif"][i]),
                "price": cols["price"][i], "qty": cols["qty"][i], "stop_px": cols["stop_px"][i],
                "origin": _name(ORIGIN_NAMES, cols["origin"][i]), "strategy": cols["strategy"][i],
                "signal_id": cols["signal_id"][i], "reduce_only": cols["reduce_only"][i],
                "ref_px": cols["ref_px"][i], "est_slip_bps": None if math.isnan(slip) else slip,
                "reason": reason,
                "reason_name": (DENY_NAMES[reason] if reason < len(DENY_NAMES) else f"#{reason}")
                if action == ORD_DENIED else None,
                "recv_ns": cols["recv_ns"][i], "signal_pub_ns": cols["in_pub_ns"][i],
                "decided_ns": cols["pub_ns"][i], "cause_exch_ms": cols["exch_ms"][i],
            }
            note = None
            cid_s = None
            if action == ORD_DENIED or cid <= 0:
                intent.update(instance=instance, cid=None, client_order_id=None, state="DENIED"
                              if action == ORD_DENIED else "INTENT")
                intent["state_rank"] = STATE_RANK[intent["state"]]
                keys = list(intent)
                cur.execute(f"INSERT OR IGNORE INTO orders ({', '.join(keys)}) VALUES "
                            f"({', '.join('?' * len(keys))})", [intent[k] for k in keys])
                if cur.rowcount == 0:
                    continue  # the same decision, journaled before
                self.counters["denials" if action == ORD_DENIED else "orders"] += 1
            else:
                cid_s = self._cid_str(cid)
                row = cur.execute("SELECT decided_ns FROM orders WHERE client_order_id = ?", (cid_s,)).fetchone()
                if row is None:
                    intent.update(client_order_id=cid_s, instance=instance, cid=cid, state="INTENT",
                                  state_rank=RANK_INTENT)
                    keys = list(intent)
                    cur.execute(f"INSERT INTO orders ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                                [intent[k] for k in keys])
                elif row[0] is None:  # reports (or the send) came first: fill in the intent
                    keys = list(intent)
                    cur.execute(f"UPDATE orders SET {', '.join(k + ' = ?' for k in keys)} WHERE client_order_id = ?",
                                [intent[k] for k in keys] + [cid_s])
                    backfill.append(cid_s)
                elif row[0] == intent["decided_ns"]:
                    continue  # journaled before
                else:
                    note = "duplicate_cid"
                    self.counters["duplicate_cids"] += 1
                    cur.execute("INSERT INTO meta VALUES ('duplicate_cids', 1) ON CONFLICT(key) DO UPDATE SET "
                                "value = value + 1")
                    log.error("journal: client order id %s used twice (decided at %d and %d ns)", cid_s, row[0],
                              intent["decided_ns"])
                if note is None:
                    self.counters["orders"] += 1
            written += 1
            events.append((ORDER_KIND[action], cid_s, sym, cols["pub_ns"][i], cols["exch_ms"][i], note,
                           "ORDER_REQUEST", raw[i * size:(i + 1) * size], journal_ns, written_ms))
        cur.executemany("INSERT INTO events (kind, client_order_id, symbol, mono_ns, exch_ms, note, record, raw, "
                        "journal_ns, written_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        for cid_s in backfill:
            self._backfill_slippage(cur, cid_s)
        return written

    @staticmethod
    def _backfill_slippage(cur, cid_s: str) -> None:
        row = cur.execute("SELECT ref_px FROM orders WHERE client_order_id = ?", (cid_s,)).fetchone()
        ref = row[0] if row else None
        if not ref:
            return
        fills = cur.execute("SELECT id, side, px FROM fills WHERE client_order_id = ? AND ref_px IS NULL",
                            (cid_s,)).fetchall()
        cur.executemany("UPDATE fills SET ref_px = ?, slip_bps = ? WHERE id = ?",
                        [(ref, slippage_bps(side, px, ref), fid) for fid, side, px in fills])

    def _write_sent(self, cur, pairs, journal_ns, written_ms) -> int:
        instance = self._need_instance()
        n = 0
        for cid, sent_ns in pairs:
            if cid <= 0:
                continue
            cid_s = self._cid_str(cid)
            cur.execute("INSERT INTO orders (client_order_id, instance, cid, state, state_rank, sent_ns) "
                        "VALUES (?, ?, ?, 'SENT', ?, ?) ON CONFLICT(client_order_id) DO UPDATE SET "
                        "sent_ns = min(coalesce(sent_ns, excluded.sent_ns), excluded.sent_ns), "
                        "state = CASE WHEN state_rank < excluded.state_rank THEN 'SENT' ELSE state END, "
                        "state_rank = max(state_rank, excluded.state_rank)",
                        (cid_s, instance, int(cid), RANK_SENT, int(sent_ns)))
            cur.execute("INSERT INTO events (kind, client_order_id, mono_ns, journal_ns, written_ms) "
                        "VALUES ('send', ?, ?, ?, ?)", (cid_s, int(sent_ns), journal_ns, written_ms))
            n += 1
        self.counters["sent"] += n
        return n

    def _write_reports(self, cur, recs, journal_ns, written_ms) -> int:
        if recs.dtype != EXEC_REPORT:
            raise ValueError(f"record_reports takes EXEC_REPORT records, got {dtype_name(recs.dtype)}")
        instance = self._need_instance()
        raw = recs.tobytes()
        size = EXEC_REPORT.itemsize
        cols = {k: recs[k].tolist() for k in EXEC_REPORT.names}
        events = []
        last_trade: dict[str, int] = {}
        n = 0
        for i in range(len(recs)):
            et = cols["exec_type"][i]
            if et not in EXEC_KIND:
                self.counters["probes"] += 1
                continue
            n += 1
            self.counters["reports"] += 1
            cid = cols["client_order_id"][i]
            sym = self._sym(cols["symbol"][i])
            side = _name(SIDE_NAMES, cols["side"][i])
            pub = cols["pub_ns"][i]
            exch = cols["exch_ms"][i]
            cid_s = self._cid_str(cid) if cid > 0 else None
            note = None
            ref = None
            changed = False
            if cid_s is not None:
                row = cur.execute("SELECT action, orig_client_order_id, ref_px FROM orders WHERE client_order_id = ?",
                                  (cid_s,)).fetchone()
                if row is None:
                    cur.execute("INSERT INTO orders (client_order_id, instance, cid, symbol, symbol_id, side, state, "
                                "state_rank) VALUES (?, ?, ?, ?, ?, ?, 'INTENT', 0)",
                                (cid_s, instance, cid, sym, cols["symbol"][i], side))
                    row = (None, None, None)
                action, orig, ref = row
                if action == "CANCEL":
                    ref = None  # a cancel request has no fills of its own
                changed = self._advance(cur, cid_s, cols, i, pub, exch)
                if action == "CANCEL" and orig and et == EX_CANCELED:
                    self._advance(cur, orig, cols, i, pub, exch)  # the cancel succeeded: so is the order canceled
            if et == EX_TRADE:
                px, qty, tid = cols["last_px"][i], cols["last_qty"][i], cols["trade_id"][i]
                cur.execute("INSERT OR IGNORE INTO fills (symbol, trade_id, client_order_id, order_id, symbol_id, "
                            "side, px, qty, quote, commission, commission_asset, is_maker, exch_ms, report_ns, "
                            "ref_px, slip_bps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (sym, tid, cid_s, cols["order_id"][i], cols["symbol"][i], side, px, qty,
                             px * qty // FIXED_SCALE, cols["commission"][i],
                             COMMISSION_ASSET_NAMES.get(cols["commission_asset"][i], "OTHER"), cols["is_maker"][i],
                             exch, pub, ref or None, slippage_bps(side, px, ref)))
                if cur.rowcount == 0:
                    note = "duplicate"
                    self.counters["duplicate_fills"] += 1
                else:
                    changed = True
                    self.counters["fills"] += 1
                    if tid > last_trade.get(sym, -1):
                        last_trade[sym] = tid
            if note is None and not changed:
                note = "stale"
                self.counters["stale_reports"] += 1
            events.append((EXEC_KIND[et], cid_s, sym, pub, exch, note, "EXEC_REPORT", raw[i * size:(i + 1) * size],
                           journal_ns, written_ms))
        cur.executemany("INSERT INTO events (kind, client_order_id, symbol, mono_ns, exch_ms, note, record, raw, "
                        "journal_ns, written_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        cur.executemany("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                        "value = max(value, excluded.value)",
                        [(f"last_trade_id/{s}", t) for s, t in last_trade.items()])
        return n

    @staticmethod
    def _advance(cur, cid_s: str, cols: dict, i: int, pub: int, exch: int) -> bool:
        """Apply one report to an order row; False when it was stale (did not move the state forward or
        grow cum_qty, and was no better first answer)."""
        row = cur.execute("SELECT state, state_rank, cum_qty, ack_ns, order_id FROM orders WHERE client_order_id = ?",
                          (cid_s,)).fetchone()
        if row is None:
            return False
        state, rank, cum_qty, ack_ns, order_id = row
        et = cols["exec_type"][i]
        new_state = _state_of_report(cols["status"][i], et)
        new_rank = STATE_RANK.get(new_state, -1)
        moved = new_rank > rank
        grew = cols["cum_qty"][i] > cum_qty
        first = ack_ns is None or pub < ack_ns
        sets = ["reports = reports + 1", "last_exch_ms = max(coalesce(last_exch_ms, ?), ?)"]
        args: list = [exch, exch]
        if moved:
            sets += ["state = ?", "state_rank = ?"]
            args += [new_state, new_rank]
            if new_rank == RANK_FINAL:
                sets.append("final_ns = ?")
                args.append(pub)
        if grew:
            sets += ["cum_qty = ?", "cum_quote = ?"]
            args += [cols["cum_qty"][i], cols["cum_quote"][i]]
        if first:
            sets += ["ack_ns = ?", "ack_exch_ms = ?"]
            args += [pub, exch]
        if order_id is None and cols["order_id"][i] >= 0:
            sets.append("order_id = ?")
            args.append(cols["order_id"][i])
        if et == EX_REJECTED:
            sets.append("reject_code = ?")
            args.append(cols["reject_code"][i])
        cur.execute(f"UPDATE orders SET {', '.join(sets)} WHERE client_order_id = ?", args + [cid_s])
        return moved or grew or (first and ack_ns is None)

    # -- epochs: which rows belong to the venue account trading now ------------

    def epoch(self) -> dict:
        """The current epoch: ``{"n", "fill_id", "order_id", "started_ms", "reason", "baseline"}``. Rows with
        ``id`` above ``fill_id`` / ``order_id`` belong to it. The journal of one instance outlives the venue
        account it traded against when that account is not persistent (the local simulator and paper
        trading start from fresh balances every run): the supervisor starts a new epoch then
        (``new_epoch``), and positions, open orders and reconciliation look at this epoch only. Against
        Binance the account persists, so does the epoch (n 0: the whole journal)."""
        row = self.query("SELECT value FROM meta WHERE key = 'epoch'")
        base = {"n": 0, "fill_id": 0, "order_id": 0, "started_ms": None, "reason": None, "baseline": None}
        if row:
            base.update(json.loads(row[0][0]))
        return base

    def new_epoch(self, reason: str) -> dict:
        """Start a new epoch after every row journaled so far (a fresh venue account). Returns it."""
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            n = json.loads(row[0])["n"] + 1 if row else 1
            ep = {"n": n, "fill_id": cur.execute("SELECT coalesce(max(id), 0) FROM fills").fetchone()[0],
                  "order_id": cur.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0],
                  "started_ms": time.time_ns() // 1_000_000, "reason": str(reason), "baseline": None}
            cur.execute("INSERT INTO meta VALUES ('epoch', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (json.dumps(ep),))
            cur.execute("INSERT INTO events (kind, note, journal_ns, written_ms) VALUES ('epoch', ?, ?, ?)",
                        (f"epoch {n}: {reason}", *self._stamp()))
        return ep

    def set_baseline(self, balances: dict) -> bool:
        """The venue's balances (asset -> total, fixed point) when the epoch's trading began; set once per
        epoch (False: it was set already). Positions since then must equal the balances' change."""
        with self._tx() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            ep = json.loads(row[0]) if row else {"n": 0, "fill_id": 0, "order_id": 0, "started_ms": None,
                                                  "reason": "journal start", "baseline": None}
            if ep.get("baseline") is not None:
                return False
            ep["baseline"] = {str(k): int(v) for k, v in balances.items()}
            cur.execute("INSERT INTO meta VALUES ('epoch', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (json.dumps(ep),))
        return True

    def ring_mark(self, ring: str, token: str) -> int | None:
        """The seq just past the last record of ring ``ring`` (segment ``token``) this journal committed, or
        None when it committed nothing from that segment."""
        row = self.query("SELECT value FROM meta WHERE key = ?", (f"ring/{ring}",))
        if not row:
            return None
        mark = json.loads(row[0][0])
        return int(mark["seq"]) if mark.get("token") == token else None

    def recovery(self, marks: dict, cids=()) -> dict:
        """What a restarting risk stage rebuilds from, read in ONE snapshot (a read transaction): this
        epoch's fills (journal order), the orders it believes open, for each ring in ``marks`` (name ->
        segment token) the seq just past the last record committed (None: nothing from it), and
        ``states``: cid -> (state_rank, cum_qty) of this instance's orders among ``cids``."""
        with self._lock:
            con = self._con
            try:
                con.execute("BEGIN")
                ep = con.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
                ep = json.loads(ep[0]) if ep else {"fill_id": 0, "order_id": 0}
                keys = ("symbol", "trade_id", "client_order_id", "side", "px", "qty", "commission",
                        "commission_asset", "exch_ms")
                fills = [dict(zip(keys, r)) for r in con.execute(
                    f"SELECT {', '.join(keys)} FROM fills WHERE id > ? ORDER BY id", (ep["fill_id"],))]
                opened = [dict(zip(_OPEN_KEYS, r)) for r in con.execute(_OPEN_SQL, (RANK_FINAL, ep["order_id"]))]
                seqs = {}
                for ring, token in marks.items():
                    row = con.execute("SELECT value FROM meta WHERE key = ?", (f"ring/{ring}",)).fetchone()
                    mark = json.loads(row[0]) if row else {}
                    seqs[ring] = int(mark["seq"]) if mark.get("token") == token else None
                states = {}
                if cids:
                    inst = self._need_instance()
                    for cid in cids:
                        row = con.execute("SELECT state_rank, cum_qty FROM orders WHERE instance = ? AND cid = ?",
                                          (inst, int(cid))).fetchone()
                        if row is not None:
                            states[int(cid)] = (int(row[0]), int(row[1] or 0))
                con.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise JournalError(f"journal {self.path}: {exc}") from exc
        return {"fills": fills, "open_orders": opened, "marks": seqs, "epoch": ep, "states": states}

    # -- recovery queries ---------------------------------------------------

    def open_orders(self, *, epoch: bool = True) -> list[dict]:
        """Orders (action NEW) the journal believes open: not final (of the current epoch unless ``epoch``
        is False). ``INTENT`` / ``SENT`` rows may or may not be at the venue (query them by client id);
        ``NEW`` / ``PARTIALLY_FILLED`` were acknowledged."""
        start = self.epoch()["order_id"] if epoch else 0
        return [dict(zip(_OPEN_KEYS, r)) for r in self.query(_OPEN_SQL, (RANK_FINAL, start))]

    def last_trade_id(self, symbol: str, *, epoch: bool = True) -> int | None:
        """The highest venue trade id journaled for ``symbol`` (fetch myTrades from the next one), or None."""
        start = self.epoch()["fill_id"] if epoch else 0
        row = self.query("SELECT max(trade_id) FROM fills WHERE symbol = ? AND id > ?", (symbol, start))
        return None if row[0][0] is None else int(row[0][0])

    def order_ids(self, *, epoch: bool = True) -> dict[tuple[str, int], dict]:
        """(symbol, venue order id) -> ``{"cid", "symbol", "side", "qty"}`` of this instance's orders (of the
        current epoch): whose a venue trade is (myTrades carries no client id). Venue order ids are per
        symbol: the same id on two symbols is two orders."""
        start = self.epoch()["order_id"] if epoch else 0
        rows = self.query("SELECT order_id, cid, symbol, side, qty FROM orders WHERE order_id IS NOT NULL "
                          "AND order_id >= 0 AND instance = ? AND id > ?", (self._need_instance(), start))
        return {(s, int(o)): {"cid": int(c), "symbol": s, "side": side, "qty": q} for o, c, s, side, q in rows}

    def fills(self, *, epoch: bool = False) -> list[dict]:
        """Every fill (of the current epoch with ``epoch``), in (symbol, exch_ms, trade_id) order."""
        start = self.epoch()["fill_id"] if epoch else 0
        keys = ("symbol", "trade_id", "client_order_id", "side", "px", "qty", "commission", "commission_asset",
                "is_maker", "exch_ms", "ref_px", "slip_bps")
        rows = self.query(f"SELECT {', '.join(keys)} FROM fills WHERE id > ? ORDER BY symbol, exch_ms, trade_id",
                          (start,))
        return [dict(zip(keys, r)) for r in rows]

    def positions(self, method: str = "fifo", *, epoch: bool = False) -> dict[str, dict]:
        """symbol -> ``core.pnl.PnlBook.snapshot`` of the journaled fills under ``method`` (fifo/lifo/average)
        (of the current epoch with ``epoch``: what the venue account of this run holds).

        Commissions: ``QUOTE`` a fee, ``BASE`` moves the position, ``OTHER``
        (e.g. BNB) per asset id 0, unpriced (core/pnl.py's rules). A fill core.pnl
        refuses raises ``JournalError`` naming it.
        """
        from core.pnl import COMM_BASE, COMM_OTHER, COMM_QUOTE, METHOD_IDS, PNL_OK, STATUS_NAMES, PnlBook

        if method not in METHOD_IDS:
            raise ValueError(f"method must be one of {sorted(METHOD_IDS)}, got {method!r}")
        by_symbol: dict[str, list[dict]] = {}
        for f in self.fills(epoch=epoch):
            by_symbol.setdefault(f["symbol"], []).append(f)
        if not by_symbol:
            return {}
        symbols = sorted(by_symbol)
        cap = max(len(v) for v in by_symbol.values()) + 1  # each fill opens at most one lot: never refused
        book = PnlBook(len(symbols), lot_capacity=cap, n_fee_assets=1)
        codes = {"QUOTE": COMM_QUOTE, "BASE": COMM_BASE, "OTHER": COMM_OTHER}
        for i, s in enumerate(symbols):
            for f in by_symbol[s]:
                side = SIDE_BUY if f["side"] == "BUY" else SIDE_SELL if f["side"] == "SELL" else 0
                try:
                    status = book.apply_fill(i, side, f["px"], f["qty"], f["commission"],
                                             codes.get(f["commission_asset"], COMM_OTHER))
                except ValueError as exc:
                    raise JournalError(f"journal {self.path}: fill {s} trade {f['trade_id']}: {exc}") from exc
                if status != PNL_OK:
                    raise JournalError(f"journal {self.path}: fill {s} trade {f['trade_id']}: core.pnl refused "
                                       f"it ({STATUS_NAMES[status]})")
        return {s: book.snapshot(i, method) for i, s in enumerate(symbols)}

    def orders_sent_count(self) -> int:
        """Venue requests (new, cancel, cancel-all) known to have been sent or answered."""
        return self.query("SELECT count(*) FROM orders WHERE action IS NOT 'DENIED' AND "
                           "(sent_ns IS NOT NULL OR ack_ns IS NOT NULL)")[0][0]

    def duplicate_client_ids(self) -> int:
        """Second, different requests journaled under an id already used. Must be 0."""
        row = self.query("SELECT value FROM meta WHERE key = 'duplicate_cids'")
        return int(row[0][0]) if row else 0

    def id_high_water(self, instance: str | None = None) -> int | None:
        """Ids below this are reserved (or used) for ``instance``; None when none was ever reserved."""
        row = self.query("SELECT value FROM meta WHERE key = ?", (f"cid_hwm/{instance or self._need_instance()}",))
        return int(row[0][0]) if row else None

    def max_cid(self, instance: str | None = None) -> int | None:
        """The highest counter journaled for ``instance`` (None: no order)."""
        row = self.query("SELECT max(cid) FROM orders WHERE instance = ?", (instance or self._need_instance(),))
        return row[0][0]

    def unjournaled_ids(self, instance: str | None = None) -> range:
        """Ids reserved but not (yet) journaled above the highest journaled one: after a crash, the ones that
        may have reached the venue without a row here (query the venue for them)."""
        hwm = self.id_high_water(instance)
        top = self.max_cid(instance)
        if hwm is None:
            return range(0)
        return range((top or 0) + 1, hwm)

    def unreserved_ids(self, instance: str | None = None) -> int:
        """Orders whose counter was never reserved (at or above the high-water mark). Must be 0 when every
        id comes from ``IdReserver``."""
        inst = instance or self._need_instance()
        hwm = self.id_high_water(inst)
        if hwm is None:
            return 0
        return self.query("SELECT count(*) FROM orders WHERE instance = ? AND cid >= ?", (inst, hwm))[0][0]

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` or SQLite's first complaint."""
        return str(self.query("PRAGMA integrity_check")[0][0])

    def events(self, client_order_id: str | None = None) -> list[dict]:
        """The event log (of one order), oldest first, with ``raw`` decoded into a dict of record fields."""
        keys = ("seq", "kind", "client_order_id", "symbol", "mono_ns", "exch_ms", "note", "record", "raw")
        sql = f"SELECT {', '.join(keys)} FROM events"
        args: tuple = ()
        if client_order_id is not None:
            sql += " WHERE client_order_id = ?"
            args = (client_order_id,)
        out = []
        for r in self.query(sql + " ORDER BY seq", args):
            e = dict(zip(keys, r))
            e["raw"] = decode_raw(e["record"], e["raw"])
            out.append(e)
        return out


def decode_raw(record: str | None, raw: bytes | None) -> dict | None:
    """An ``events.raw`` blob back to ``{field: value}`` (``record``: the dtype name stored beside it)."""
    dt = {"ORDER_REQUEST": ORDER_REQUEST, "EXEC_REPORT": EXEC_REPORT}.get(record or "")
    if dt is None or raw is None:
        return None
    r = np.frombuffer(raw, dt, count=1)[0]
    return {k: r[k].item() for k in dt.names}


# ---------------------------------------------------------------------------
# Client order id reservation
# ---------------------------------------------------------------------------
class IdReserver:
    """Monotonically increasing client order ids for one instance, never reused across processes.

    Ids are handed out of blocks of ``block``. Before the first id of a
    block is used, the block is reserved in one ``BEGIN IMMEDIATE``
    transaction on this object's own connection with ``synchronous=FULL``
    (the WAL is fsynced at commit): ``meta['cid_hwm/<instance>']`` moves from
    ``h`` to ``h + block`` and the block is ``[h, h + block)``. A process
    that dies (kill -9, power loss) wastes the rest of its block; the next
    one, or the spare taking over on the same journal, starts at the new
    high-water mark. Two processes reserving at once are serialised by
    SQLite's write lock, so their blocks are disjoint. ``floor``: the
    lowest id ever handed out (a new journal starts there).

    ``next_id()`` for Python callers; ``reserve_block()`` for a kernel that
    counts ids itself (risk's ``H_NEXT_CID``): use ``[first, end)`` and call
    it again before reaching ``end``. One thread per object.
    """

    def __init__(self, journal, instance: str, block: int = 1000, *, floor: int = 1):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"id block must be an int >= 1, got {block!r}")
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ValueError(f"id floor must be an int >= 0, got {floor!r}")
        if not _INSTANCE_RE.match(instance):
            raise ValueError(f"instance prefix must match {_INSTANCE_RE.pattern}, got {instance!r}")
        path = journal.path if isinstance(journal, Journal) else Path(journal)
        self.path = path
        self.instance = instance
        self.block = block
        self.floor = floor
        self._key = f"cid_hwm/{instance}"
        self._con = _open_db(path, create=True, synchronous="FULL")
        self._next = 0
        self._end = 0  # next == end: no block
        self.blocks = 0  # blocks this object reserved

    def reserve_block(self, n: int | None = None) -> tuple[int, int]:
        """Durably reserve ``n`` (default ``block``) ids; returns ``(first, end)``, end exclusive."""
        n = self.block if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"block size must be an int >= 1, got {n!r}")
        con = self._con
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT value FROM meta WHERE key = ?", (self._key,)).fetchone()
                first = max(int(row[0]) if row else 0, self.floor)
                end = first + n
                if end > np.iinfo(np.int64).max:
                    raise JournalError(f"journal {self.path}: client order ids of {self.instance} exhausted")
                con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (self._key, end))
                con.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced before this returns
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: id reservation failed: {exc}") from exc
        self.blocks += 1
        return first, end

    def next_id(self) -> int:
        """The next id: above every id handed out before, by any process on this journal."""
        if self._next >= self._end:
            self._next, self._end = self.reserve_block()
        cid = self._next
        self._next += 1
        return cid

    def next_client_order_id(self) -> str:
        """``next_id()`` in the wire format."""
        return client_order_id_str(self.instance, self.next_id())

    @property
    def remaining(self) -> int:
        """Ids left in the current block."""
        return self._end - self._next

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# The ring consumer
# ---------------------------------------------------------------------------
ERROR_LOG_EVERY_S = 5.0  # a failing journal disk is logged at most this often (each step retries the write)
_clock = time.monotonic  # of that period (tests replace it)


class JournalWriter:
    """An ordinary consumer of the ``orders`` and ``reports`` rings that journals what passes.

    Concurrency: it holds its own consumer index on each ring (the topology
    must give it one) and is the only user of those cursors. Each ``step()``
    polls ``orders`` first, then ``reports`` (so a request is usually
    journaled before its reports; the journal copes when it is not), COPIES
    the records out and releases the slots at once, then writes everything
    in one transaction. So the producers wait on the journal no longer than
    on any consumer that copies a batch: SQLite time is spent after the
    release. If a write fails (disk full, I/O error, locked: ``JournalError``
    or ``sqlite3.OperationalError``) the batch is kept and retried on the
    next step, up to ``backlog_max`` records, then the oldest are dropped and
    counted (``dropped``): a broken disk never stalls trading; it is an alert
    (``write_errors``; logged once per ``ERROR_LOG_EVERY_S`` while it lasts,
    not per attempt, and once when writes succeed again), and reconciliation
    against the venue fills the hole.
    Any other failure cannot succeed on a retry (a bug): that batch is
    dropped, counted and logged with its traceback, and journaling goes on.

    ``note_sent(cid, sent_ns)``: the execution loop's send time (no ring
    carries it); a lock-free ``deque.append``.

    Host it with ``run(stop_event)`` on a thread (``threading.Thread``) or in
    a process of its own; it sleeps ``idle_s`` (waking early on stop) when
    both rings are empty. On stop it drains both rings before returning.
    Where: about 12 us of CPU per record, most of it Python holding the GIL
    (sqlite3 releases it only inside SQLite calls), so a thread inside the
    execution process takes GIL time from the execution loop whenever orders
    flow; a process of its own (or the supervisor's) keeps it off that core.
    """

    def __init__(self, journal: Journal, orders, reports, *, batch: int = 1024, idle_s: float = 0.002,
                 backlog_max: int = 100_000):
        if batch < 1:
            raise ValueError(f"journal writer batch must be >= 1, got {batch!r}")
        self.journal = journal
        self.orders = orders
        self.reports = reports
        self.batch = batch
        self.idle_s = idle_s
        self.backlog_max = backlog_max
        self._sent: collections.deque = collections.deque()
        self._pending: list[tuple] = []  # batches whose write failed: (orders, sent, reports, lost, marks)
        self._pending_n = 0
        self._tokens = (getattr(orders, "token", ""), getattr(reports, "token", ""))
        self.stats = collections.Counter()  # batches, orders, reports, sent, lost, write_errors, dropped
        self._failing_since = 0  # write_errors when the current run of failures began (0: writes succeed)
        self._next_error_log = 0.0  # CLOCK_MONOTONIC s: a failing disk is logged once per ERROR_LOG_EVERY_S

    @classmethod
    def attach(cls, journal: Journal, ring_instance: str, *, orders_consumer: int, reports_consumer: int,
               **kw) -> "JournalWriter":
        """Attach to the ``orders`` and ``reports`` rings of ``ring_instance`` as the given consumers."""
        from ringbuffers.ring import Ring, segment_name

        orders = Ring.attach(segment_name(ring_instance, "orders"), ORDER_REQUEST, orders_consumer)
        try:
            reports = Ring.attach(segment_name(ring_instance, "reports"), EXEC_REPORT, reports_consumer)
        except BaseException:
            orders.close()
            raise
        return cls(journal, orders, reports, **kw)

    def note_sent(self, cid: int, sent_ns: int) -> None:
        """Execution handed order ``cid`` to the venue at ``sent_ns`` (CLOCK_MONOTONIC ns). Any thread."""
        self._sent.append((cid, sent_ns))

    def _peek(self, ring) -> tuple[np.ndarray, int]:
        """Copy up to ``batch`` unread records out of ``ring`` without releasing them: ``(records, end seq)``."""
        return ring.peek(self.batch)

    def step(self) -> int:
        """Copy what the rings hold (and the sends noted), journal it in one transaction, then release the
        slots. Returns records taken.

        Released only once committed: a writer killed before its commit leaves the records in the rings
        for the next one (the rings are ``block``, nothing is overwritten), so the journal holds every
        order and report that was published, in ring order, and its ``ring/<name>`` marks say up to where
        (a restarting risk stage rebuilds from exactly that: processes/risk.py). When writes fail (a full
        disk), batches are released into an in-memory backlog instead so trading is never blocked by the
        journal; reconciliation against the venue covers what a crash then loses."""
        orders, end_o = self._peek(self.orders)
        reports, end_r = self._peek(self.reports)
        sent = []
        while self._sent and len(sent) < self.batch:
            sent.append(self._sent.popleft())
        n = len(orders) + len(reports) + len(sent)
        if not n:
            if self._pending:
                self._flush()
            return 0
        marks = {}
        if len(orders):
            marks["orders"] = (self._tokens[0], end_o)
        if len(reports):
            marks["reports"] = (self._tokens[1], end_r)
        self.stats["orders"] += len(orders)
        self.stats["reports"] += len(reports)
        self.stats["sent"] += len(sent)
        batch = (orders, sent, reports, {}, marks)
        if self._pending:  # a backlog of failed writes goes first, in order
            self._pending.append(batch)
            self._pending_n += n
            self._flush()
        elif self._write(batch, n) is False:  # kept for a retry at the next step
            self._pending.append(batch)
            self._pending_n += n
        self.orders.release_to(end_o)
        self.reports.release_to(end_r)
        return n

    def _write(self, batch, new: int = 0) -> bool | None:
        orders, sent, reports, lost, marks = batch
        k = len(orders) + len(sent) + len(reports)
        try:
            self.journal.record_batch(orders, sent, reports, lost, marks)
        except (JournalError, sqlite3.OperationalError) as exc:  # disk full, I/O error, locked: retry later
            self.stats["write_errors"] += 1
            if not self._failing_since:
                self._failing_since = self.stats["write_errors"]
            now = _clock()
            if now >= self._next_error_log:  # retried every step: logged once per period, not per attempt
                self._next_error_log = now + ERROR_LOG_EVERY_S
                log.error("journal write failed (%d records kept for a retry; %d failed attempts so far): %s",
                          self._pending_n + new, self.stats["write_errors"] - self._failing_since + 1, exc)
            return False
        except Exception:  # a batch that can never be written (a bug): drop it, never stop journaling
            self.stats["write_errors"] += 1
            self.stats["dropped"] += k
            log.exception("journal write failed for good: %d records dropped", k)
            return None
        self.stats["batches"] += 1
        if self._failing_since:
            log.warning("journal writes again after %d failed attempts", self.stats["write_errors"]
                        - self._failing_since + 1)
            self._failing_since = 0
            self._next_error_log = 0.0
        return True

    def _flush(self) -> None:
        while self._pending:
            batch = self._pending[0]
            k = len(batch[0]) + len(batch[1]) + len(batch[2])
            if self._write(batch) is False:
                while self._pending_n > self.backlog_max and len(self._pending) > 1:
                    o, s, r, _, _ = self._pending.pop(0)
                    n = len(o) + len(s) + len(r)
                    self._pending_n -= n
                    self.stats["dropped"] += n
                return
            self._pending.pop(0)
            self._pending_n -= k

    def run(self, stop_event: threading.Event) -> None:
        """Journal until ``stop_event`` is set, then drain both rings (and the sends noted) and return."""
        while not stop_event.is_set():
            if self.step() == 0:
                stop_event.wait(self.idle_s)
        for _ in range(1_000_000):  # drain: the producers have stopped (or are stopping)
            if self.step() == 0 and not self._sent:
                break
        if self._pending:
            self._flush()

    def counters(self) -> dict:
        """What a heartbeat reports: records taken per ring, sends, batches, lost, write errors, dropped."""
        out = {k: int(self.stats.get(k, 0)) for k in ("orders", "reports", "sent", "batches", "lost",
                                                       "write_errors", "dropped")}
        out["backlog"] = self._pending_n
        for k in ("duplicate_fills", "stale_reports", "duplicate_cids"):
            out[k] = int(self.journal.counters.get(k, 0))
        return out

    def close(self) -> None:
        """Close the ring handles (not the journal: the host owns it)."""
        self.orders.close()
        self.reports.close()


__all__ = [
    "ACTION_NAMES", "SCHEMA_VERSION", "IdReserver", "Journal", "JournalError", "JournalWriter",
    "client_order_id_str", "decode_raw", "journal_path", "parse_client_order_id", "slippage_bps", "warm_positions",
]


def warm_positions() -> None:
    """``core.pnl.pnl_apply`` as Python calls it with journaled fills (plain ints): ``Journal.positions`` (the
    execution stage's position check at shutdown) and a restarted risk stage's rebuild. Called by those
    stages' ``warm``: unwarmed, the first such call after an install compiled it inside the worker (~4 s of a
    shutdown, or of a restart's recovery, and a compile outside the one process meant to compile:
    core.numba_cache)."""
    from core.pnl import COMM_QUOTE, PnlBook

    PnlBook(1, lot_capacity=2, n_fee_assets=1).apply_fill(0, SIDE_BUY, FIXED_SCALE, 1, 0, COMM_QUOTE)


def journal_path(config) -> Path:
    """``<execution.journal_dir>/<instance>.sqlite``; a relative journal_dir is taken from the project root.

    One file per instance, on a local disk (SQLite's WAL does not work over network filesystems): the
    execution stage writes it, the risk stage reserves client order ids from it, a spare on the same host
    opens the same file.
    """
    d = Path(config.execution.journal_dir)
    if not d.is_absolute():
        d = Path(__file__).resolve().parents[1] / d
    return d / f"{config.instance}.sqlite"

#!/usr/bin/env python
"""The fault campaign: the whole system, trading, against one injected fault at a time; then an audit.

    .venv/bin/python scripts/chaos.py [--quick] [--scenario NAME[,NAME]] [--json [PATH]] [--seed N]
                                      [--param SCENARIO.KEY=JSON] [--keep] [-v] [--list]

Each scenario is one (or a few) fresh runs of ``python -m processes.supervisor``
with the ``every_n`` strategy (a BUY, then a CLOSE, on every few top-of-book
changes of BTCUSDT and ETHUSDT: a strategy that trades all the time), its own
instance name, ports, journal and control socket in a temporary directory
(removed afterwards unless ``--keep``), against the local exchange simulator,
while the scenario injects its fault; then a clean stop and the audit.

The venue
---------
The simulator runs as a process of this script (``python -m
processes.simulator``), not as a child of the supervisor: the system trades
against it in mode ``live`` with its URLs and a key pair made for the
campaign (``RINGTRADER_CHAOS_API_KEY`` / ``_SECRET``). The order, feed and
execution code is the one sim mode runs; what changes is who owns the
exchange. The venue outlives every run, as Binance does: its ``allOrders``,
``myTrades`` and balances are read after the system has stopped (after its
shutdown cancels), and a killed supervisor's restart finds the same account,
its open orders and its fills (sim mode would start a fresh simulator, and a
fresh account, with the new supervisor).

Scenarios (``--quick`` shortens each; the table in README.md "Fault campaign")
-----------------------------------------------------------------------------
``feed_disconnect``    every market-stream connection dropped (the simulator's ``disconnect_probability``
                       at 1 until one is aborted: the TCP connection cut, the WS API session untouched) every
                       10 s for 10 min;
``hostile_frames``     1 % hostile market frames of every class (``hostile_probability``; a simulator
                       without it: ``malformed_probability``, truncated JSON only; said in the notes);
``sequence_gaps``      depth diffs dropped (``gap_probability``): the book must see the gap and resync;
``md_ring_lapped``     the md ring made ``overwrite`` and small; the engine process (the md ring's
                       consumer) stopped (SIGSTOP) for 1.5 s and continued: the producer laps it, the book
                       must see the lap, invalidate every book and resync;
``rate_limit_sweeps``  order entry answered 429, 500, 502, 503, 504 in turn, then one 418 (the venue
                       ban: execution halts; the script resumes it as an operator would after the
                       Retry-After), and the feed's REST snapshots answered 429/418/5xx: one run over the WS API
                       (the default order transport), one over REST;
``order_timeouts``     order entry that hangs past the client's time-out, and dropped connections after
                       the order was executed: unknown outcomes, settled by querying the client id;
``user_data_faults``   user-data events duplicated and re-ordered (20 % each);
``kill_processes``     kill -9 of each process the supervisor manages (feed, engine, the warm spare)
                       20 times under load; full mode also one process per stage (book, signal, risk
                       and execution killed alone);
``kill_supervisor``    kill -9 of the supervisor under load (its workers follow it), then a restart on
                       the same journal and venue account: stale segments cleaned, open orders and
                       fills reconciled, trading again;
``disk_full``          the journal and the raw-frame recording on a small tmpfs, filled to the last
                       byte for a while, then freed;
``clock_step``         the venue's clock stepped +10 s (orders refused -1021 until the client resyncs;
                       risk then refuses to trade at a 10 s offset), then back: trading must resume.

A step of the host's own wall clock (against CLOCK_MONOTONIC) is not done: it
needs CAP_SYS_TIME and would step the clock of every process on a shared host.
The venue's clock moving is what a client sees of either.

The audit (the system's own counters are reported beside, not trusted)
-----------------------------------------------------------------------
``duplicates``              from the venue: client order ids in ``allOrders`` more than once, orders
                            filled beyond their quantity (``myTrades``), client ids filled beyond the
                            quantity the system intended (the ``orders`` ring and the journal), venue
                            orders under our prefix that no intent explains; plus the journal's
                            ``duplicate_client_ids`` (summary).
``orders_on_invalid_book``  every order the venue received (or the journal says was sent) is traced
                            to the book it was decided on: its signal (``signal_id``) names the book
                            record that caused it (``book_seq``); this script reads the ``book``,
                            ``signals``, ``orders`` and ``md`` rings as a monitor (no cursor: it holds
                            nothing back) and counts the order when (a) the book stage's own last
                            top of that symbol at ``book_seq`` said INVALID, or (b) an independent
                            reference (``SyncReference``: Binance's diff-depth procedure on the update
                            ids of the md records, nothing else) says the symbol's book could not be
                            valid after the md message that caused that top (a gap, a reconnect, no
                            snapshot yet). (b) checks the book's validity itself, not just the gate
                            that reads it. Orders the monitor could not trace (it was lapped, a
                            record it never saw) are reported as ``unverified``, never as clean.
``position_mismatches``     the summary's ``position_mismatches`` (execution: the journal's positions
                            against the change of the venue's balances), plus this script's own:
                            every fill in the journal against every trade in ``myTrades`` (missing,
                            extra or different), and the net position per symbol from each.
``segments_left``           ``/dev/shm/ringtrader.<instance>.*`` after the run, plus every process the
                            run logged (or that was a child of its supervisor) still alive.
``supervisor_crashes``      a supervisor exit code other than the scenario expects, a run that had to be
                            killed to stop, a traceback from the supervisor itself; in
                            ``kill_supervisor`` the kill is intended: the restarted supervisor counts.
``recovery_ms``             from the fault to flowing again: books valid again (disconnects, gaps,
                            laps: from the ``book`` ring), crash -> ready (the summary's
                            ``recovery_ms``), restart -> first order, disk freed -> journal writing,
                            clock back -> first order.

Exit 1 when any scenario has a duplicate, an order on an invalid book, a
mismatch, a segment or process left, a supervisor crash, an unexpected worker
restart, or a run that never traded (a run with no order proves nothing).
``--json`` prints (or writes to PATH) one dict per scenario with at least the
keys ``duplicates``, ``orders_on_invalid_book``, ``position_mismatches``,
``segments_left``, ``supervisor_crashes`` and ``recovery_ms``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure, ensure_compiled  # noqa: E402

configure()  # before numba is imported (the ring module imports it); the runs inherit the keyed cache dir

import numpy as np  # noqa: E402

from core import records as R  # noqa: E402

KEY_ENV = "RINGTRADER_CHAOS_API_KEY"
SECRET_ENV = "RINGTRADER_CHAOS_API_SECRET"
BASE_CONFIG = ROOT / "config" / "system.json"
PY = sys.executable

VALID, INVALID, UNKNOWN = 1, 0, -1  # book / reference states (UNKNOWN: the monitor lost records)
STATE_NAMES = {VALID: "VALID", INVALID: "INVALID", UNKNOWN: "UNKNOWN"}
REQUIRED_KEYS = ("duplicates", "orders_on_invalid_book", "position_mismatches", "segments_left",
                 "supervisor_crashes", "recovery_ms")


# ===========================================================================
# The audit: pure functions over what the venue, the journal and the rings said
# ===========================================================================
def venue_duplicates(orders: list[dict], trades: list[dict], intents: dict[str, Decimal], prefix: str) -> dict:
    """Orders placed twice and fills beyond intent, judged from the venue's own records.

    ``orders``: ``allOrders`` rows (``clientOrderId``, ``orderId``, ``origQty``, ``executedQty``, ``symbol``);
    ``trades``: ``myTrades`` rows (``orderId``, ``id``, ``qty``, ``symbol``; order and trade ids are per
    symbol); ``intents``: wire client id -> the quantity the system meant to trade (its ``orders`` ring and
    journal); ``prefix``: ``"<instance>-"``
    (ids of other instances are not ours). Returns counts: ``client_ids_twice`` (venue orders beyond the
    first per client id), ``overfilled`` (orders whose trades exceed their quantity), ``beyond_intent``
    (client ids whose executed quantity exceeds the intent), ``unknown_ids`` (venue orders under our prefix
    that no intent explains), ``trades_twice`` (a trade id listed twice) and ``total``.
    """
    ours = [o for o in orders if str(o.get("clientOrderId", "")).startswith(prefix)]
    seen: dict[str, int] = {}
    for o in ours:
        seen[o["clientOrderId"]] = seen.get(o["clientOrderId"], 0) + 1
    twice = sum(n - 1 for n in seen.values() if n > 1)
    by_order: dict[tuple, Decimal] = {}
    trade_keys: dict[tuple, int] = {}
    for t in trades:
        ko = (t.get("symbol"), t["orderId"])  # venue order ids are per symbol
        by_order[ko] = by_order.get(ko, Decimal(0)) + Decimal(str(t["qty"]))
        k = (t.get("symbol"), t["id"])
        trade_keys[k] = trade_keys.get(k, 0) + 1
    trades_twice = sum(n - 1 for n in trade_keys.values() if n > 1)
    overfilled = 0
    executed: dict[str, Decimal] = {}
    for o in ours:
        q = Decimal(str(o["origQty"]))
        ex = max(Decimal(str(o.get("executedQty", "0"))), by_order.get((o.get("symbol"), o["orderId"]), Decimal(0)))
        if ex > q:
            overfilled += 1
        executed[o["clientOrderId"]] = executed.get(o["clientOrderId"], Decimal(0)) + ex
    beyond = sum(1 for cid, ex in executed.items() if cid in intents and ex > intents[cid])
    unknown = sum(1 for cid in seen if cid not in intents)
    return {"client_ids_twice": twice, "overfilled": overfilled, "beyond_intent": beyond, "unknown_ids": unknown,
            "trades_twice": trades_twice, "total": twice + overfilled + beyond + unknown + trades_twice}


class SyncReference:
    """Could a symbol's L2 book be valid after a given md message? Binance's procedure on update ids only.

    Fed the ``md`` ring's records in ring order (``feed``), it keeps per symbol a state that is
    deliberately lenient, so that INVALID means "no correct book could be valid here":

    * INVALID at the start, after a reconnect status (``STATUS_RECONNECTED``) and after a gap: a diff,
      while valid, with ``U > last_u + 1``;
    * diffs seen while invalid are buffered (ids only); a snapshot (``MD_SNAP_END``, ``lastUpdateId`` L)
      drops the buffered diffs with ``u <= L``; if the first one left bridges (``U <= L + 1``) the chain is
      walked (a diff is accepted when ``U <= last + 1 <= u``, skipped when ``u <= last``) and the state is
      VALID with ``last`` = the last accepted ``u`` (or L); a gap inside the buffer leaves it invalid
      with the rest buffered; an unbridged buffer waits for the next snapshot;
    * while valid, a snapshot never invalidates (``last = max(last, L)``), stale diffs are skipped;
    * ``lost(pub_ns)``: the monitor missed records: every symbol UNKNOWN (treated as INVALID by the
      machine, reported apart) until a snapshot bridges again.

    What it cannot see: a crossed book, a price or quantity the book applied wrongly, a restarted book
    process that lost its levels (the book's own state, the other check, covers those).
    ``state_at(symbol, pub_ns)``: the state after every md record with ``pub_ns`` <= the given one.
    """

    MAX_BUFFER = 100_000

    def __init__(self, n_symbols: int):
        self.state = [INVALID] * n_symbols
        self.last = [0] * n_symbols
        self.buffer: list[list[tuple[int, int]]] = [[] for _ in range(n_symbols)]
        self.times: list[list[int]] = [[0] for _ in range(n_symbols)]  # transition pub_ns, ascending
        self.states: list[list[int]] = [[INVALID] for _ in range(n_symbols)]
        self.gaps = 0
        self.reconnects = 0

    def _set(self, s: int, state: int, pub_ns: int) -> None:
        if self.states[s][-1] != state:
            self.times[s].append(int(pub_ns))
            self.states[s].append(state)
        self.state[s] = state

    def lost(self, pub_ns: int) -> None:
        for s in range(len(self.state)):
            self.buffer[s].clear()
            self._set(s, UNKNOWN, pub_ns)

    def _invalidate(self, s: int, pub_ns: int) -> None:
        self._set(s, UNKNOWN if self.state[s] == UNKNOWN else INVALID, pub_ns)

    def _walk(self, s: int, last: int, pub_ns: int) -> None:
        buf = self.buffer[s]
        i = 0
        while i < len(buf):
            first, lst = buf[i]
            if lst <= last:
                i += 1
                continue
            if first > last + 1:  # a gap: still invalid, the rest waits for another snapshot
                del buf[:i]
                self._invalidate(s, pub_ns)
                return
            last = lst
            i += 1
        buf.clear()
        self.last[s] = last
        self._set(s, VALID, pub_ns)

    def feed(self, recs: np.ndarray) -> None:
        kinds = recs["kind"]
        keep = ((kinds >= R.MD_DEPTH_BID) & (kinds <= R.MD_DEPTH_NONE) & ((recs["flags"] & R.FLAG_BEGIN) != 0)) \
            | (kinds == R.MD_SNAP_END) | (kinds == R.MD_STATUS)
        for r in recs[keep]:
            s = int(r["symbol"])
            if s >= len(self.state):
                continue
            k = int(r["kind"])
            pub = int(r["pub_ns"])
            if k == R.MD_STATUS:
                if int(r["aux"]) == R.STATUS_RECONNECTED:
                    self.reconnects += 1
                    self._invalidate(s, pub)
                continue
            if k == R.MD_SNAP_END:
                L = int(r["last_id"])
                if self.state[s] == VALID:
                    self.last[s] = max(self.last[s], L)
                else:
                    buf = self.buffer[s]
                    while buf and buf[0][1] <= L:
                        buf.pop(0)
                    if not buf or buf[0][0] <= L + 1:
                        self._walk(s, L, pub)
                continue
            first, lst = int(r["first_id"]), int(r["last_id"])
            if self.state[s] == VALID:
                if lst <= self.last[s]:
                    continue
                if first <= self.last[s] + 1:
                    self.last[s] = lst
                    continue
                self.gaps += 1
                self._set(s, INVALID, pub)
                self.buffer[s] = [(first, lst)]
            else:
                buf = self.buffer[s]
                if len(buf) < self.MAX_BUFFER:
                    buf.append((first, lst))

    def state_at(self, s: int, pub_ns: int) -> int:
        if s >= len(self.times):
            return UNKNOWN
        i = bisect.bisect_right(self.times[s], int(pub_ns)) - 1
        return self.states[s][i] if i >= 0 else INVALID


class BookTimeline:
    """The book stage's own word: per symbol, the state of each ``BK_TOP`` it published, by ring seq.

    ``lost_ranges``: seqs this monitor never saw (lapped); a lookup whose answer could hide in one is
    UNKNOWN. ``tops``: seq -> (symbol, state, pub_ns, in_pub_ns) of every top seen.
    """

    def __init__(self, n_symbols: int):
        self.seqs: list[list[int]] = [[] for _ in range(n_symbols)]
        self.states: list[list[int]] = [[] for _ in range(n_symbols)]
        self.pubs: list[list[int]] = [[] for _ in range(n_symbols)]
        self.tops: dict[int, tuple[int, int, int, int]] = {}
        self.lost_ranges: list[tuple[int, int]] = []

    def add(self, seq0: int, recs: np.ndarray) -> None:
        idx = np.nonzero(recs["kind"] == R.BK_TOP)[0]
        for i in idx:
            r = recs[i]
            s = int(r["symbol"])
            if s >= len(self.seqs):
                continue
            seq = seq0 + int(i)
            st = VALID if int(r["state"]) == R.BOOK_VALID else INVALID
            self.seqs[s].append(seq)
            self.states[s].append(st)
            self.pubs[s].append(int(r["pub_ns"]))
            self.tops[seq] = (s, st, int(r["pub_ns"]), int(r["in_pub_ns"]))

    def lost(self, start: int, end: int) -> None:
        if end > start:
            self.lost_ranges.append((start, end))

    def state_at_seq(self, s: int, seq: int) -> int:
        """The state of symbol ``s``'s last top at or before book ring seq ``seq``."""
        i = bisect.bisect_right(self.seqs[s], seq) - 1
        prev = self.seqs[s][i] if i >= 0 else -1
        if any(a <= seq and b > prev + 1 for a, b in self.lost_ranges):
            return UNKNOWN
        return self.states[s][i] if i >= 0 else INVALID

    def state_at_time(self, s: int, pub_ns: int) -> int:
        i = bisect.bisect_right(self.pubs[s], pub_ns) - 1
        return self.states[s][i] if i >= 0 else INVALID

    def invalid_spans(self, s: int) -> list[tuple[int, int | None]]:
        """(INVALID top's pub_ns, the next VALID top's pub_ns or None) per stretch of invalidity."""
        out, start = [], None
        for st, pub in zip(self.states[s], self.pubs[s]):
            if st == INVALID and start is None:
                start = pub
            elif st == VALID and start is not None:
                out.append((start, pub))
                start = None
        if start is not None:
            out.append((start, None))
        return out


def orders_on_invalid_book(sent: set[int], orders: dict[int, dict], signals: dict[int, dict],
                           book: BookTimeline, ref: SyncReference | None) -> dict:
    """Trace every sent order (client id counter in ``sent``) to the book it was decided on.

    ``orders``: cid -> the ``orders`` ring's ORD_NEW (``signal_id``, ``symbol``, ``pub_ns``, ``origin``);
    ``signals``: signal_id -> the ``signals`` ring's record (``book_seq``, ``symbol``). An order with no signal
    (a stop, the kill switch, an operator's flatten) is judged by the book's state at its decision time.
    Returns ``invalid`` (the count: the book stage said INVALID, or the reference did), ``by_book``,
    ``by_reference``, ``unverified`` (no ring record or lapped monitor), ``checked`` and the first ``examples``.
    """
    out = {"invalid": 0, "by_book": 0, "by_reference": 0, "unverified": 0, "checked": 0, "examples": []}
    for cid in sorted(sent):
        o = orders.get(cid)
        if o is None:
            out["unverified"] += 1
            continue
        sym = int(o["symbol"])
        if not o.get("signal_id"):
            st = book.state_at_time(sym, int(o["pub_ns"]))
            ref_st = VALID
        else:
            sg = signals.get(int(o["signal_id"]))
            if sg is None:
                out["unverified"] += 1
                continue
            st = book.state_at_seq(sym, int(sg["book_seq"]))
            top = book.tops.get(int(sg["book_seq"]))
            if ref is None or top is None or top[3] <= 0:
                ref_st = UNKNOWN if ref is not None else VALID
            else:
                ref_st = ref.state_at(sym, top[3])
        if st == UNKNOWN or (ref_st == UNKNOWN and st != INVALID):
            out["unverified"] += 1
            continue
        out["checked"] += 1
        bad_book, bad_ref = st == INVALID, ref_st == INVALID
        if bad_book or bad_ref:
            out["invalid"] += 1
            out["by_book"] += int(bad_book)
            out["by_reference"] += int(bad_ref)
            if len(out["examples"]) < 5:
                out["examples"].append({"cid": cid, "symbol": sym, "book": STATE_NAMES[st],
                                        "reference": STATE_NAMES[ref_st], "signal_id": o.get("signal_id")})
    return out


def base_position(rows: list[dict]) -> Decimal:
    """Net base quantity of trades ``{"buy": bool, "qty": Decimal, "commission": Decimal, "fee_in_base": bool}``:
    a buy adds its quantity less a commission charged in the base asset; a sell removes its quantity."""
    pos = Decimal(0)
    for t in rows:
        if t["buy"]:
            pos += t["qty"] - (t["commission"] if t["fee_in_base"] else Decimal(0))
        else:
            pos -= t["qty"]
    return pos


def fill_mismatches(journal: list[dict], venue: list[dict]) -> dict:
    """The journal's fills against the venue's trades, both as ``{"symbol", "trade_id", "buy", "qty", "px",
    "commission", "fee_in_base"}`` (Decimals). Counts trades ``missing`` from the journal, ``extra`` in it
    (the venue never made them), ``different`` (same trade, other fields) and the symbols whose net
    position differs (``positions``), with the first examples."""
    j = {(t["symbol"], int(t["trade_id"])): t for t in journal}
    v = {(t["symbol"], int(t["trade_id"])): t for t in venue}
    fields = ("buy", "qty", "px", "commission", "fee_in_base")
    missing = sorted(set(v) - set(j))
    extra = sorted(set(j) - set(v))
    different = sorted(k for k in set(j) & set(v) if any(j[k][f] != v[k][f] for f in fields))
    positions = {}
    for sym in sorted({k[0] for k in j} | {k[0] for k in v}):
        pj = base_position([t for k, t in j.items() if k[0] == sym])
        pv = base_position([t for k, t in v.items() if k[0] == sym])
        if pj != pv:
            positions[sym] = {"journal": str(pj), "venue": str(pv)}
    return {"missing": len(missing), "extra": len(extra), "different": len(different), "positions": positions,
            "examples": [str(k) for k in (missing + extra + different)[:5]],
            "total": len(missing) + len(extra) + len(different) + len(positions)}


def segments_left(instance: str, shm_dir: str = "/dev/shm") -> list[str]:
    """``ringtrader.<instance>.*`` entries still in ``shm_dir``."""
    prefix = f"ringtrader.{instance}."
    try:
        return sorted(n for n in os.listdir(shm_dir) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children_of(root: int) -> set[int]:
    """Every live descendant of ``root`` (one /proc scan)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path(f"/proc/{d}/stat").read_text()
            ppid = int(data[data.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "p50": None, "max": None}
    return {"n": len(xs), "p50": round(statistics.median(xs), 1), "max": round(max(xs), 1)}


def book_recovery_ms(book: BookTimeline, fault_ns: list[int], window_ns: int = 5_000_000_000) -> list[float]:
    """For each fault time: ms until every symbol that went INVALID after it (within ``window_ns``) is VALID
    again; a fault after which no book went invalid gives nothing (it did not reach the book)."""
    out = []
    for t in fault_ns:
        worst = None
        for s in range(len(book.seqs)):
            for a, b in book.invalid_spans(s):
                if t <= a <= t + window_ns or (a < t and (b is None or b > t)):
                    if b is None:
                        worst = float("inf")
                    else:
                        worst = max(worst or 0.0, (b - t) / 1e6)
                    break
        if worst is not None:
            out.append(worst)
    return out


# ===========================================================================
# The harness: the venue, a supervisor run, the ring monitor
# ===========================================================================
def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when this script dies (PR_SET_PDEATHSIG), so a killed campaign leaves
    no simulator or supervisor running (a supervisor stops in order on SIGTERM)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Venue:
    """The simulator in a process of this script, with the campaign's account; signed queries of its records."""

    def __init__(self, workdir: Path, base: dict, env: dict, *, seed: int, rate: float = 2000.0,
                 faults: dict | None = None, log: Callable[[str], None] = print):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        sim = copy.deepcopy(base["simulator"])
        sim.pop("_comment", None)
        for acc in sim.get("accounts", []):
            acc["api_key_env"], acc["api_secret_env"] = KEY_ENV, SECRET_ENV
        sim.update({"port": self.port, "seed": seed, "rate": rate, "faults": faults or {}})
        self.cfg_path = workdir / f"venue-{self.port}.json"
        self.cfg_path.write_text(json.dumps({"instruments": base["instruments"], "simulator": sim}))
        self.balances = {a["name"]: a.get("balances", {}) for a in sim.get("accounts", [])}
        self.env = env
        self.log_path = workdir / f"venue-{self.port}.log"
        self._logf = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen([PY, "-m", "processes.simulator", "--config", str(self.cfg_path)], cwd=ROOT,
                                  env=env, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_die_with_parent)
        import httpx

        self.http = httpx.Client(base_url=self.base_url, timeout=15)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.http.get("/api/v3/ping").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start (exit {self.p.poll()}): "
                                   + self.log_path.read_text()[-2000:])
            time.sleep(0.1)
        from core.signing import load_credentials

        self.cred = load_credentials(KEY_ENV, SECRET_ENV, environ=env)

    def fault(self, **changes) -> tuple[bool, str]:
        r = self.http.post("/sim/fault", content=json.dumps(changes))
        return r.status_code == 200, r.text

    def drop_streams(self) -> int:
        """Drop every market-stream connection (not the WS API session): ``disconnect_probability`` 1 aborts
        each stream connection before its next data frame; it is set back to 0 once one was aborted.
        Returns the stream connections aborted (the simulator's ``aborts`` count)."""
        before = self.stats().get("faults", {}).get("aborts", 0)
        self.fault(disconnect_probability=1.0)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # until a connection was aborted (a loaded host may take a while)
            time.sleep(0.02)
            if self.stats().get("faults", {}).get("aborts", 0) > before:
                break
        self.fault(disconnect_probability=0.0)
        return self.stats().get("faults", {}).get("aborts", 0) - before

    def stats(self) -> dict:
        return self.http.get("/sim/stats").json()

    def count(self, *path: str) -> int:
        """A counter of ``/sim/stats`` by its path (``"faults", "gaps"``); 0 when absent."""
        d = self.stats()
        for k in path:
            d = d.get(k, {}) if isinstance(d, dict) else {}
        return int(d) if isinstance(d, (int, float)) else 0

    def hold_fault(self, on: dict, off: dict, counter: tuple, at_least: int, min_s: float, max_s: float) -> int:
        """Apply fault ``on`` for at least ``min_s`` and until ``counter`` grew by ``at_least`` (at most
        ``max_s``), then ``off``; returns how much it grew. Random faults are drawn from a seeded stream: a
        fixed time could see none (a run that proves nothing)."""
        before = self.count(*counter)
        self.fault(**on)
        t0 = time.monotonic()
        n = 0
        while True:
            time.sleep(0.25)
            n = self.count(*counter) - before
            waited = time.monotonic() - t0
            if (waited >= min_s and n >= at_least) or waited >= max_s:
                break
        self.fault(**off)
        return n

    def signed_get(self, path: str, params: dict):
        from core.signing import rest_query

        server_ms = self.http.get("/api/v3/time").json()["serverTime"]
        q = rest_query(list(params.items()) + [("recvWindow", "60000"), ("timestamp", str(server_ms))],
                       self.cred.signer)
        r = self.http.get(f"{path}?{q}", headers={"X-MBX-APIKEY": self.cred.api_key})
        if r.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()

    def _every_page(self, path: str, symbol: str, from_param: str, id_key: str) -> list[dict]:
        """Every row of a paged history query (1000 a page, the next page from the last id + 1)."""
        out, start = [], 0
        while True:
            page = self.signed_get(path, {"symbol": symbol, from_param: str(start), "limit": "1000"})
            out += page
            if len(page) < 1000:
                return out
            start = max(row[id_key] for row in page) + 1

    def all_orders(self, symbol: str) -> list[dict]:
        return self._every_page("/api/v3/allOrders", symbol, "orderId", "orderId")

    def my_trades(self, symbol: str) -> list[dict]:
        return self._every_page("/api/v3/myTrades", symbol, "fromId", "id")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.http.close()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._logf.close()


class System:
    """One ``python -m processes.supervisor`` run: its JSON log lines collected as they come, its pids."""

    def __init__(self, workdir: Path, cfg: dict, env: dict, tag: str, duration: float | None = None):
        self.cfg = cfg
        self.instance = cfg["instance"]
        self.cfg_path = workdir / f"cfg-{tag}.json"
        self.cfg_path.write_text(json.dumps(cfg, indent=1))
        self.summary_path = workdir / f"summary-{tag}.json"
        self.log_path = workdir / f"log-{tag}.jsonl"
        self.socket = cfg["supervisor"]["control_socket"]
        args = [PY, "-m", "processes.supervisor", "--config", str(self.cfg_path), "--summary-json",
                str(self.summary_path), "--quiet-summary"]
        if duration is not None:
            args += ["--duration", str(duration)]
        self.t_launch_ns = time.monotonic_ns()
        self.p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True, preexec_fn=_die_with_parent)
        self.lines: list[str] = []
        self.events: list[dict] = []
        self.pids: set[int] = set()
        self._logf = open(self.log_path, "w", buffering=1)  # noqa: SIM115 - closed when the reader ends
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stop_scan = threading.Event()
        self._scanner = threading.Thread(target=self._scan, daemon=True)
        self._scanner.start()
        self.exit_code: int | None = None
        self.forced = False  # had to be killed to stop

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.append(line)
            self._logf.write(line)
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                self.events.append(ev)
                pid = ev.get("pid")
                if isinstance(pid, int) and pid != self.p.pid:
                    self.pids.add(pid)
        self._logf.close()

    def _scan(self) -> None:
        while not self._stop_scan.wait(0.5):
            if self.p.poll() is not None:
                return
            self.pids |= children_of(self.p.pid)

    def wait_event(self, pred, timeout: float, since: int = 0) -> dict | None:
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            evs = self.events[seen:]
            for ev in evs:
                if pred(ev):
                    return ev
            seen += len(evs)
            if time.monotonic() > deadline:
                return None
            if self.p.poll() is not None:
                self._reader.join(2)
                if seen == len(self.events):
                    return None
            time.sleep(0.05)

    def ready_pid(self, name: str) -> int | None:
        """The pid of the latest incarnation of process ``name`` that said ready."""
        for ev in reversed(self.events):
            if ev.get("proc") == "supervisor" and ev.get("msg") == f"{name} ready":
                return ev.get("pid")
        return None

    def spare_pid(self) -> int | None:
        """The ready spare that has not been used yet, if any."""
        used = {ev.get("pid") for ev in self.events if ev.get("via") == "spare"}
        for ev in reversed(self.events):
            msg = str(ev.get("msg", ""))
            if msg.startswith("spare ") and msg.endswith(" ready") and ev.get("pid") not in used:
                return ev.get("pid") if alive(ev.get("pid") or -1) else None
        return None

    def control(self, cmd: str) -> dict:
        from processes.supervisor.control import request

        try:
            return request(self.socket, cmd, timeout=10)
        except Exception as exc:  # noqa: BLE001 - reported as the reply
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def stop(self, timeout: float = 90.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.forced = True
            self.kill_group()
            self.exit_code = self.p.wait(10)
        self._finish()
        return self.exit_code

    def kill9(self) -> None:
        os.kill(self.p.pid, signal.SIGKILL)
        self.exit_code = self.p.wait(10)
        self._finish()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)

    def _finish(self) -> None:
        self._stop_scan.set()
        self._reader.join(10)
        self.summary()  # read now: the run's directory is removed after the audit

    _summary: dict | None = None

    def summary(self) -> dict | None:
        """The summary JSON of a run that ended (None while it runs, or when it wrote none: killed)."""
        if self._summary is None and self.exit_code is not None:
            try:
                self._summary = json.loads(self.summary_path.read_text())
            except (OSError, ValueError):
                return None
        return self._summary

    def tracebacks(self) -> list[str]:
        """Tracebacks in the run's output: the supervisor's own (JSON ``exc``) and any printed ones."""
        out = []
        for ev in self.events:
            if ev.get("exc"):
                out.append(f"{ev.get('proc')}: {ev.get('msg')}: {str(ev['exc']).strip().splitlines()[-1]}")
        for i, line in enumerate(self.lines):
            if line.startswith("Traceback (most recent call last)"):
                tail = next((ln for ln in self.lines[i + 1:i + 80] if ln and not ln.startswith((" ", "Traceback"))),
                            "")
                out.append(f"printed: {tail.strip()}")
        return out


class RingMonitor(threading.Thread):
    """Reads the ``md``, ``book``, ``signals`` and ``orders`` rings of a run as a monitor (no cursor: it never
    holds a producer back), every ``period_s``, into a ``SyncReference``, a ``BookTimeline`` and dicts of
    signals and orders. A monitor that falls more than 3/4 of a ring behind counts the records it skipped
    (``lost``) and marks that stretch unknown. Keeps its mappings after the supervisor unlinks the
    segments, so ``drain()`` after the run reads to the end."""

    RINGS = ("md", "book", "signals", "orders")

    def __init__(self, instance: str, n_symbols: int, period_s: float = 0.02):
        super().__init__(daemon=True, name=f"monitor-{instance}")
        self.instance = instance
        self.period_s = period_s
        self.ref = SyncReference(n_symbols)
        self.book = BookTimeline(n_symbols)
        self.signals: dict[int, dict] = {}
        self.orders: dict[int, dict] = {}
        self.rings: dict = {}
        self.next: dict[str, int] = {}
        self.lost: dict[str, int] = {r: 0 for r in self.RINGS}
        self.error: str | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _attach(self) -> None:
        from core.config import RINGS
        from ringbuffers.ring import Ring, segment_name

        for r in self.RINGS:
            if r in self.rings:
                continue
            try:
                ring = Ring.attach(segment_name(self.instance, r), R.ALL_DTYPES[RINGS[r][0]], "monitor")
            except Exception:  # noqa: BLE001 - not there yet: the next pass tries again
                continue
            self.rings[r] = ring
            self.next[r] = 0

    def _read(self, name: str) -> None:
        ring = self.rings[name]
        cap = ring.capacity
        safe = cap - cap // 4  # the producer may be writing up to a quarter of the ring ahead of published
        start = self.next[name]
        pub = ring.published
        if pub - start > safe:
            skip_to = pub - safe
            self._lost(name, start, skip_to)
            start = skip_to
        if pub <= start:
            return
        idx = np.arange(start, pub, dtype=np.int64) & (cap - 1)
        recs = ring.slots[idx].copy()
        pub2 = ring.published
        oldest_safe = pub2 - safe
        if oldest_safe > start:  # it moved on while we copied: the oldest copies may be torn
            cut = oldest_safe - start
            self._lost(name, start, oldest_safe)
            recs, start = recs[cut:], oldest_safe
        self.next[name] = pub
        if len(recs):
            self._take(name, start, recs)

    def _lost(self, name: str, start: int, end: int) -> None:
        self.lost[name] += end - start
        if name == "md":
            self.ref.lost(self._last_md_pub + 1)
        elif name == "book":
            self.book.lost(start, end)

    _last_md_pub = 0

    def _take(self, name: str, seq0: int, recs: np.ndarray) -> None:
        if name == "md":
            self.ref.feed(recs)
            self._last_md_pub = int(recs["pub_ns"][-1])
        elif name == "book":
            self.book.add(seq0, recs)
        elif name == "signals":
            for r in recs[recs["side"] != R.SIDE_FLAT]:
                self.signals[int(r["signal_id"])] = {"book_seq": int(r["book_seq"]), "symbol": int(r["symbol"]),
                                                     "pub_ns": int(r["pub_ns"])}
        elif name == "orders":
            for r in recs[recs["action"] == R.ORD_NEW]:
                self.orders[int(r["client_order_id"])] = {
                    "signal_id": int(r["signal_id"]), "symbol": int(r["symbol"]), "pub_ns": int(r["pub_ns"]),
                    "origin": int(r["origin"]), "qty": int(r["qty"]), "side": int(r["side"])}

    def poll_once(self) -> None:
        with self._lock:
            self._attach()
            for r in self.RINGS:
                if r in self.rings:
                    self._read(r)

    def run(self) -> None:
        try:
            while not self._halt.wait(self.period_s):
                self.poll_once()
        except Exception as exc:  # noqa: BLE001 - the audit reports it
            self.error = f"{type(exc).__name__}: {exc}"

    def drain(self) -> None:
        """Stop the thread and read what is left (the mappings outlive the segments' names)."""
        self._halt.set()
        self.join(10)
        try:
            with self._lock:
                for r in self.RINGS:
                    if r in self.rings:
                        self._read(r)
        except Exception as exc:  # noqa: BLE001
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        for ring in self.rings.values():
            with contextlib.suppress(Exception):
                ring.close()
        self.rings.clear()

    def first_order_after(self, t_ns: int) -> int | None:
        ts = [o["pub_ns"] for o in list(self.orders.values()) if o["pub_ns"] >= t_ns]
        return min(ts) if ts else None


# ===========================================================================
# A run: config, start, fault, stop, audit
# ===========================================================================
@dataclass
class RunResult:
    """One supervisor run's (or one restarted pair's) figures."""

    name: str
    seed: int | None = None  # the simulator's seed
    orders: int = 0  # orders the venue received
    fills: int = 0  # trades at the venue
    duplicates: int = 0
    duplicates_detail: dict = field(default_factory=dict)
    orders_on_invalid_book: int = 0
    invalid_detail: dict = field(default_factory=dict)
    position_mismatches: int = 0
    position_detail: dict = field(default_factory=dict)
    segments_left: int = 0
    processes_left: int = 0
    supervisor_crashes: int = 0
    unexpected_restarts: int = 0
    restarts: int = 0
    kills: int = 0
    recovery_ms: list = field(default_factory=list)
    faults_seen: dict = field(default_factory=dict)  # evidence the fault happened (sim stats, counters)
    notes: list = field(default_factory=list)
    tracebacks: list = field(default_factory=list)
    wall_s: float = 0.0
    skipped: str | None = None
    audit_error: str | None = None  # the audit itself could not run: the run proves nothing (a failure)
    evidence: dict = field(default_factory=dict)  # what shows the fault happened: a False one fails the run


class Ctx:
    """What every scenario shares: the base config, the campaign's keys and environment, the work dir."""

    def __init__(self, quick: bool, keep: bool, verbose: bool, seed: int | None = None):
        self.seed = seed if seed is not None else secrets.randbelow(1_000_000)
        self.runs = 0
        self.quick = quick
        self.keep = keep
        self.verbose = verbose
        self.base = json.loads(BASE_CONFIG.read_text())
        self.symbols = [i["symbol"] for i in self.base["instruments"]]
        self.env = dict(os.environ)
        self.env[KEY_ENV] = secrets.token_hex(32)
        self.env[SECRET_ENV] = secrets.token_hex(32)
        for k in list(self.env):  # the run's own config decides; a developer's overrides would change it
            if k.startswith("RINGTRADER__"):
                del self.env[k]
        self.root = Path(tempfile.mkdtemp(prefix="chaos-"))

    def say(self, msg: str) -> None:
        if self.verbose:
            sys.stderr.write(f"[chaos {time.strftime('%H:%M:%S')}] {msg}\n")
            sys.stderr.flush()


def system_config(ctx: Ctx, instance: str, venue: Venue, workdir: Path, *, every: int = 3,
                  placement: dict | None = None, spare: bool = False, edits: dict | None = None) -> dict:
    """config/system.json made to trade against ``venue``: mode live on its URLs with the campaign's keys,
    the ``every_n`` strategy on both symbols, risk limits that let it trade, its own instance, journal,
    control socket and a free metrics port."""
    d = copy.deepcopy(ctx.base)
    d["mode"] = "live"
    d["instance"] = instance
    d["market_data"].update({"ws_url": venue.ws_url, "rest_url": venue.base_url})
    d["execution"].update({"rest_url": venue.base_url, "ws_api_url": f"{venue.ws_url}/ws-api/v3",
                           "user_stream_url": venue.ws_url, "api_key_env": KEY_ENV, "api_secret_env": SECRET_ENV,
                           "journal_dir": str(workdir / "journal")})
    d["placement"]["simulator"]["enabled"] = False
    d["signal"]["update_interval_ms"] = 200
    d["signal"]["strategies"] = [
        {"name": "chaos_btc", "type": "every_n", "symbols": ["BTCUSDT"], "qty": "0.001", "params": {"every": every}},
        {"name": "chaos_eth", "type": "every_n", "symbols": ["ETHUSDT"], "qty": "0.005", "params": {"every": every}},
    ]
    d["risk"].update({"max_position_size": "1", "max_order_qty": "0.01", "max_order_notional": "1000",
                      "max_orders_per_s": 20, "max_open_orders": 8, "max_daily_loss": "100000"})
    d["metrics"]["port"] = 0
    d["logging"]["stdout"] = True
    d["supervisor"].update({"control_socket": str(workdir / f"{instance}.sock"), "spare_worker": spare,
                            "ready_timeout_s": 240, "backoff_initial_ms": 50})
    if placement is not None:
        d["placement"] = {**placement, "simulator": d["placement"]["simulator"]}
    for path, value in (edits or {}).items():
        node = d
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return d


def split_placement(base: dict) -> dict:
    """One process per stage (the dedicated host's shape) with the small host's CPUs and idle."""
    proto = {k: v for k, v in base["placement"]["engine"].items() if k != "stages"}
    feed = dict(base["placement"]["feed"])
    return {"feed": feed, **{st: {**proto, "stages": [st]} for st in ("book", "signal", "risk", "execution")}}


class Trading:
    """A scenario's run: the venue, the system (one or more supervisor runs of one instance), the monitors."""

    def __init__(self, ctx: Ctx, name: str, *, venue_faults: dict | None = None, rate: float = 2000.0):
        self.ctx = ctx
        self.name = name
        self.t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name.replace('/', '-')}-", dir=ctx.root))
        (self.dir / "journal").mkdir()
        self.instance = f"cx{os.getpid() % 100000}{secrets.token_hex(2)}"
        ctx.runs += 1
        self.seed = ctx.seed * 1000 + ctx.runs  # the simulator's fault draws and market: a run replays with --seed
        self.venue = Venue(self.dir, ctx.base, ctx.env, seed=self.seed, faults=venue_faults, rate=rate)
        self.runs: list[System] = []
        self.monitors: list[RingMonitor] = []
        self.result = RunResult(name, seed=self.seed)
        self.kills = 0
        self.intended_exit: dict[int, tuple[int, ...]] = {}  # run index -> accepted exit codes

    def start(self, cfg: dict, *, duration: float | None = None, wait_trading: bool = True) -> System:
        tag = f"{len(self.runs)}"
        run = System(self.dir, cfg, self.ctx.env, tag, duration)
        self.runs.append(run)
        self.ctx.say(f"{self.name}: supervisor {run.p.pid} started (instance {self.instance})")
        if run.wait_event(lambda e: e.get("msg") == "all processes ready", 300) is None:
            self.result.notes.append(f"run {tag}: never ready: " + "".join(run.lines[-5:])[-600:])
            return run
        mon = RingMonitor(self.instance, len(self.ctx.symbols))
        mon.start()
        self.monitors.append(mon)
        if wait_trading:
            self.wait_orders(1, 60)
        return run

    @property
    def monitor(self) -> RingMonitor:
        return self.monitors[-1]

    def wait_orders(self, n: int, timeout: float, since_ns: int = 0) -> int | None:
        """Wait until the monitor has seen ``n`` orders decided after ``since_ns``; the first one's pub_ns."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.monitors:
                ts = sorted(o["pub_ns"] for o in list(self.monitor.orders.values()) if o["pub_ns"] >= since_ns)
                if len(ts) >= n:
                    return ts[0]
            time.sleep(0.05)
        return None

    def sleep(self, s: float) -> None:
        time.sleep(s)

    def finish(self) -> RunResult:
        """Stop what still runs, drain the monitors, audit against the venue and the journal; clean up."""
        res = self.result
        try:
            for i, run in enumerate(self.runs):
                if run.exit_code is None:
                    run.stop()
            for m in self.monitors:
                m.drain()
            self._audit()
        except Exception as exc:  # noqa: BLE001 - an audit that failed is a failed scenario, said why
            import traceback

            res.audit_error = f"{type(exc).__name__}: {exc}"
            res.tracebacks.append(traceback.format_exc())
        finally:
            for m in self.monitors:
                m.close()
            for run in self.runs:
                if run.exit_code is None:
                    run.kill_group()
            self.venue.close()
            res.wall_s = round(time.monotonic() - self.t0, 1)
            if not self.ctx.keep:
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                res.notes.append(f"kept in {self.dir}")
        return res

    # -- the audit ------------------------------------------------------------------------------
    def _audit(self) -> None:
        res = self.result
        prefix = f"{self.instance}-"
        syms = self.ctx.symbols
        v_orders, v_trades = [], []
        for s in syms:
            v_orders += self.venue.all_orders(s)
            v_trades += self.venue.my_trades(s)
        ours = [o for o in v_orders if str(o.get("clientOrderId", "")).startswith(prefix)]
        our_ids = {(o["symbol"], o["orderId"]) for o in ours}  # venue order ids are per symbol
        v_trades = [t for t in v_trades if (t["symbol"], t["orderId"]) in our_ids]
        res.orders, res.fills = len(ours), len(v_trades)

        jpath = self.dir / "journal" / f"{self.instance}.sqlite"
        jorders, jfills = read_journal(jpath)
        intents: dict[str, Decimal] = {}
        for row in jorders:
            if row["action"] == "NEW" and row["client_order_id"]:
                intents[row["client_order_id"]] = Decimal(row["qty"]) / R.FIXED_SCALE
        for m in self.monitors:
            for cid, o in m.orders.items():
                intents.setdefault(f"{prefix}{cid}", Decimal(o["qty"]) / R.FIXED_SCALE)
        dup = venue_duplicates(ours, v_trades, intents, prefix)
        journal_dups = 0
        for run in self.runs:
            s = run.summary() or {}
            journal_dups = max(journal_dups, int((s.get("execution") or {}).get("duplicate_client_ids") or 0))
        dup["journal_duplicate_client_ids"] = journal_dups
        res.duplicates = dup["total"] + journal_dups
        res.duplicates_detail = dup

        sent = {int(o["clientOrderId"][len(prefix):]) for o in ours if o["clientOrderId"][len(prefix):].isdigit()}
        sent |= {int(r["cid"]) for r in jorders if r["action"] == "NEW" and r["sent_ns"] and r["cid"] is not None}
        inv = {"invalid": 0, "by_book": 0, "by_reference": 0, "unverified": 0, "checked": 0, "examples": []}
        claimed: set[int] = set()
        for m in self.monitors:
            mine = {c for c in sent if c in m.orders and c not in claimed}
            claimed |= mine
            r = orders_on_invalid_book(mine, m.orders, m.signals, m.book, m.ref)
            for k in ("invalid", "by_book", "by_reference", "unverified", "checked"):
                inv[k] += r[k]
            inv["examples"] += r["examples"]
        inv["unverified"] += len(sent - claimed)
        inv["monitor_lost"] = {k: sum(m.lost[k] for m in self.monitors) for k in RingMonitor.RINGS}
        inv["reference_gaps"] = sum(m.ref.gaps for m in self.monitors)
        inv["reference_reconnects"] = sum(m.ref.reconnects for m in self.monitors)
        errors = [m.error for m in self.monitors if m.error]
        if errors:
            res.notes.append(f"monitor: {errors}")
        res.orders_on_invalid_book = inv["invalid"]
        res.invalid_detail = inv

        base_of = {s["symbol"]: s["symbol"][:-4] if s["symbol"].endswith("USDT") else None
                   for s in self.ctx.base["instruments"]}
        vt = [{"symbol": t["symbol"], "trade_id": t["id"], "buy": bool(t["isBuyer"]), "qty": Decimal(t["qty"]),
               "px": Decimal(t["price"]), "commission": Decimal(t["commission"]),
               "fee_in_base": t["commissionAsset"] == base_of.get(t["symbol"])} for t in v_trades]
        jt = [{"symbol": f["symbol"], "trade_id": f["trade_id"], "buy": f["side"] == "BUY",
               "qty": Decimal(f["qty"]) / R.FIXED_SCALE, "px": Decimal(f["px"]) / R.FIXED_SCALE,
               "commission": Decimal(f["commission"]) / R.FIXED_SCALE, "fee_in_base": f["commission_asset"] == "BASE"}
              for f in jfills]
        fm = fill_mismatches(jt, vt)
        last = next((run.summary() for run in reversed(self.runs) if run.summary()), None) or {}
        ex = last.get("execution") or {}
        checked = bool(ex.get("positions_checked"))
        sm = ex.get("position_mismatches")
        fm["summary_positions_checked"] = checked
        fm["summary_position_mismatches"] = sm
        res.position_mismatches = fm["total"] + int(sm or 0)
        if not checked:
            why = next((str(e.get("msg")) for run in reversed(self.runs) for e in reversed(run.events)
                        if str(e.get("msg", "")).startswith("shutdown venue checks failed")), "")
            res.notes.append("execution did not check positions at its last stop" + (f" ({why})" if why else "")
                             + "; this script's own comparison of fills stands")
        res.position_detail = fm

        segs = segments_left(self.instance)
        res.segments_left = len(segs)
        if segs:
            res.notes.append(f"segments left: {segs}")
        time.sleep(0.5)  # orphans are reaped asynchronously
        left = sorted(p for run in self.runs for p in run.pids if alive(p))
        res.processes_left = len(left)
        if left:
            res.notes.append(f"processes left: {left}")
            for p in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        res.segments_left += res.processes_left
        for seg in segments_left(self.instance):  # never leave them to the next run
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{seg}")

        restarts = 0
        for i, run in enumerate(self.runs):
            ok = self.intended_exit.get(i, (0,))
            if run.forced or run.exit_code not in ok:
                res.supervisor_crashes += 1
                res.notes.append(f"run {i}: supervisor exit {run.exit_code}{' (killed to stop)' if run.forced else ''}"
                                 f", expected {ok}")
            tb = run.tracebacks()
            res.tracebacks += tb
            sup_tb = [t for t in tb if t.startswith("supervisor:") or t.startswith("printed:")]
            if sup_tb and run.exit_code in ok and not run.forced:
                res.supervisor_crashes += 1
            s = run.summary()
            if s:
                restarts += int(s.get("restarts") or 0)
        res.restarts = restarts
        res.kills = self.kills
        res.unexpected_restarts = max(0, restarts - self.kills)
        vs = self.venue.stats()
        res.faults_seen.setdefault("venue", {k: v for k, v in (vs.get("faults") or {}).items() if v})


def read_journal(path: Path) -> tuple[list[dict], list[dict]]:
    """The journal's orders and fills (plain sqlite3, read after the run)."""
    if not path.exists():
        return [], []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        orders = [dict(r) for r in con.execute(
            "SELECT client_order_id, cid, action, symbol, side, qty, state, sent_ns, decided_ns, ack_ns, signal_id, "
            "origin FROM orders")]
        fills = [dict(r) for r in con.execute(
            "SELECT symbol, trade_id, client_order_id, side, px, qty, commission, commission_asset FROM fills")]
    finally:
        con.close()
    return orders, fills


# ===========================================================================
# Scenarios
# ===========================================================================
@dataclass
class Scenario:
    name: str
    what: str
    fn: Callable[[Ctx, dict], list[RunResult]]
    quick: dict
    full: dict


def _counters(run: System, stage: str) -> dict:
    s = run.summary() or {}
    return ((s.get("stages") or {}).get(stage) or {}).get("counters") or {}


def sc_feed_disconnect(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "feed_disconnect")
    try:
        run = t.start(system_config(ctx, t.instance, t.venue, t.dir))
        faults, aborted = [], 0
        end = time.monotonic() + p["seconds"]
        while time.monotonic() < end and run.p.poll() is None:
            time.sleep(p["every_s"])
            faults.append(time.monotonic_ns())
            aborted += t.venue.drop_streams()
        time.sleep(2.0)  # the last resync completes
        t.result.faults_seen["disconnects"] = len(faults)
        t.result.faults_seen["connections_aborted"] = aborted
        t.result.recovery_ms = book_recovery_ms(t.monitor.book, faults)
    finally:
        res = t.finish()
    fc = _counters(t.runs[0], "feed")
    res.faults_seen["feed_reconnects"] = fc.get("reconnects")
    cuts = res.faults_seen.get("disconnects", 0)
    res.evidence["stream connections cut"] = cuts > 0 and res.faults_seen.get("connections_aborted", 0) >= cuts
    res.evidence["the feed reconnected after each"] = cuts > 0 and (fc.get("reconnects") or 0) >= cuts
    return [res]


def sc_hostile_frames(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "hostile_frames")
    try:
        run = t.start(system_config(ctx, t.instance, t.venue, t.dir))
        key, counter = "hostile_probability", ("faults", "hostile")
        if not t.venue.fault(hostile_probability=0.0)[0]:
            t.result.notes.append("no hostile_probability in this simulator: malformed (truncated JSON) frames only")
            key, counter = "malformed_probability", ("faults", "malformed")
        t0 = time.monotonic_ns()
        hits = t.venue.hold_fault({key: p["probability"]}, {key: 0.0}, counter, p["at_least"], p["seconds"],
                                  3 * p["seconds"])
        time.sleep(1.0)
        t.result.faults_seen["hostile_frames_sent"] = hits
        t.result.faults_seen["by_class"] = t.venue.stats().get("faults", {}).get("hostile_by_class")
        t.result.recovery_ms = book_recovery_ms(t.monitor.book, [t0], window_ns=int(3 * p["seconds"] * 1e9))
        if run.p.poll() is not None:
            t.result.notes.append("the supervisor ended during the fault")
    finally:
        res = t.finish()
    fc = _counters(t.runs[0], "feed")
    errs = {k: v for k, v in fc.items() if ("error" in k or "malformed" in k or "unknown" in k) and v}
    res.faults_seen["feed_decode_errors"] = errs
    res.evidence["hostile frames sent"] = res.faults_seen.get("hostile_frames_sent", 0) > 0
    res.evidence["the feed counted them"] = bool(errs)
    return [res]


def sc_sequence_gaps(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "sequence_gaps")
    try:
        t.start(system_config(ctx, t.instance, t.venue, t.dir))
        hits = t.venue.hold_fault({"gap_probability": p["probability"]}, {"gap_probability": 0.0},
                                  ("faults", "gaps"), p["at_least"], p["seconds"], 3 * p["seconds"])
        time.sleep(2.0)
        t.result.faults_seen["diffs_dropped"] = hits
        spans = []
        for s in range(len(ctx.symbols)):
            spans += [(b - a) / 1e6 for a, b in t.monitor.book.invalid_spans(s)[1:] if b is not None]
        t.result.recovery_ms = spans  # every invalid stretch after the first sync: gap -> valid again
    finally:
        res = t.finish()
    bc = _counters(t.runs[0], "book")
    res.faults_seen["book_chain_breaks"] = bc.get("chain_breaks")
    res.evidence["diffs dropped by the venue"] = res.faults_seen.get("diffs_dropped", 0) > 0
    res.evidence["the book saw a gap"] = bool(bc.get("chain_breaks"))
    return [res]


def sc_md_ring_lapped(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "md_ring_lapped", rate=p.get("rate", 2000.0))
    try:
        cfg = system_config(ctx, t.instance, t.venue, t.dir, edits={
            "rings.md": {"capacity": p["capacity"], "policy": "overwrite"}, "market_data.snapshot_limit": 100})
        run = t.start(cfg)
        faults = []
        for _ in range(p["laps"]):
            time.sleep(p["gap_s"])
            pid = run.ready_pid("engine")
            if pid is None:
                break
            os.kill(pid, signal.SIGSTOP)
            time.sleep(p["stop_s"])
            faults.append(time.monotonic_ns())
            os.kill(pid, signal.SIGCONT)
        time.sleep(2.0)  # the last resync completes
        t.result.recovery_ms = book_recovery_ms(t.monitor.book, faults)
        t.result.faults_seen["stops"] = len(faults)
    finally:
        res = t.finish()
    s = t.runs[0].summary() or {}
    res.faults_seen["md_laps"] = ((s.get("rings") or {}).get("md") or {}).get("laps")
    bc = _counters(t.runs[0], "book")
    res.faults_seen["book_lapped"] = bc.get("lapped")
    res.evidence["the md ring was lapped"] = bool(res.faults_seen["md_laps"])
    res.evidence["the book saw the lap"] = bool(bc.get("lapped"))
    return [res]


def _sweep_run(ctx: Ctx, p: dict, transport: str) -> RunResult:
    t = Trading(ctx, f"rate_limit_sweeps/{transport}", venue_faults={"retry_after_s": 1})
    try:
        run = t.start(system_config(ctx, t.instance, t.venue, t.dir, edits={"execution.transport": transport}))
        seq = []
        for _ in range(p["rounds"]):
            seq += ["429", "ok", "500", "ok", "502", "ok", "503", "ok", "504", "ok"]
        t.venue.fault(order_fault_sequence=seq)
        t.venue.fault(rest_status_sequence=[429, 503, 500, 502, 504])
        t.venue.drop_streams()  # the feed's resync snapshots meet the REST sweep
        t0 = time.monotonic_ns()
        deadline = time.monotonic() + p["seconds"]
        while time.monotonic() < deadline and t.venue.count("faults", "order_faults") < len(seq) // 2:
            time.sleep(0.5)
        t.venue.fault(order_fault_sequence=["418"])
        t418 = time.monotonic_ns()
        halted = run.wait_event(lambda e: "418" in str(e.get("msg", "")) or "ban" in str(e.get("msg", "")), 20)
        time.sleep(1.5)  # the Retry-After
        reply = run.control("resume")
        t_resume = time.monotonic_ns()
        t.result.faults_seen["halted_on_418"] = halted is not None
        t.result.faults_seen["resume"] = reply.get("state") or reply.get("error")
        first = t.wait_orders(1, 20, since_ns=t_resume)
        t.result.recovery_ms = [(first - t_resume) / 1e6] if first else []
        if first is None:
            t.result.notes.append("no order after the operator's resume")
        time.sleep(1.0)
        t.result.faults_seen["sweep_s"] = round((t418 - t0) / 1e9, 1)
    finally:
        res = t.finish()
    ex = _counters(t.runs[0], "execution")
    res.faults_seen["unknown_outcomes"] = ex.get("venue_unknown_outcomes")
    res.faults_seen["retries_429"] = ex.get("venue_retries_429")
    v = res.faults_seen.get("venue") or {}
    res.evidence["order entry faulted"] = v.get("order_faults", 0) > 0
    res.evidence["REST faulted"] = v.get("rest_faults", 0) > 0
    res.evidence["halted on the 418"] = bool(res.faults_seen.get("halted_on_418"))
    return res


def sc_rate_limit_sweeps(ctx: Ctx, p: dict) -> list[RunResult]:
    """Orders over the WS API (the feed's snapshots over REST meet the REST sweep in the same run); with
    ``transports`` also a run with orders over REST."""
    return [_sweep_run(ctx, p, tr) for tr in p["transports"]]


def sc_order_timeouts(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "order_timeouts", venue_faults={"order_hang_s": 3.0})
    try:
        t.start(system_config(ctx, t.instance, t.venue, t.dir, edits={"execution.order_timeout_ms": 1000}))
        seq = []
        for _ in range(p["rounds"]):
            seq += ["hang", "ok", "drop", "ok", "drop", "ok"]  # a drop also loses the session's other events
        t.venue.fault(order_fault_sequence=seq)
        deadline = time.monotonic() + p["seconds"]
        while time.monotonic() < deadline and t.venue.count("faults", "order_faults") < 3 * p["rounds"]:
            time.sleep(0.5)
        time.sleep(4.0)  # the last hang's answer comes, unknown outcomes settle
    finally:
        res = t.finish()
    ex = _counters(t.runs[0], "execution")
    res.faults_seen["unknown_outcomes"] = ex.get("venue_unknown_outcomes")
    res.faults_seen["adopted"] = ex.get("venue_adopted")
    res.faults_seen["fills_found_by_reconciliation"] = ex.get("venue_reconcile_missed_fills", 0)
    res.evidence["unknown outcomes"] = bool(ex.get("venue_unknown_outcomes"))
    return [res]


def sc_user_data_faults(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "user_data_faults")
    try:
        t.start(system_config(ctx, t.instance, t.venue, t.dir))
        q = p["probability"]
        dup = t.venue.hold_fault({"user_event_duplicate_probability": q, "user_event_reorder_probability": q},
                                 {"user_event_duplicate_probability": 0.0, "user_event_reorder_probability": 0.0},
                                 ("ws_api", "event_duplicates"), p["at_least"], p["seconds"], 3 * p["seconds"])
        time.sleep(1.0)
        t.result.faults_seen["events_duplicated"] = dup
        t.result.faults_seen["events_reordered"] = t.venue.count("ws_api", "event_reorders")
    finally:
        res = t.finish()
    ex = _counters(t.runs[0], "execution")
    res.faults_seen["duplicate_events_dropped"] = ex.get("venue_duplicate_events")
    res.faults_seen["late_fills"] = ex.get("venue_late_fills", 0)  # a fill re-ordered after its order's final one
    res.evidence["events duplicated"] = res.faults_seen.get("events_duplicated", 0) > 0
    res.evidence["events re-ordered"] = res.faults_seen.get("events_reordered", 0) > 0
    res.evidence["execution dropped the duplicates"] = bool(ex.get("venue_duplicate_events"))
    return [res]


def _kill_run(ctx: Ctx, p: dict, placement_name: str) -> RunResult:
    placement = split_placement(ctx.base) if placement_name == "split" else None
    t = Trading(ctx, f"kill_processes/{placement_name}")
    try:
        cfg = system_config(ctx, t.instance, t.venue, t.dir, placement=placement, spare=True,
                            edits={"supervisor.max_restarts": 1000, "supervisor.restart_window_s": 1})
        run = t.start(cfg)
        names = [n for n in cfg["placement"] if n != "simulator" and not n.startswith("_")]
        victims = names + ["spare"]
        after_kill = []
        for rnd in range(p["rounds"]):
            for v in victims:
                if run.p.poll() is not None:
                    break
                if v == "spare" and rnd < p["rounds"] - p.get("spare_rounds", p["rounds"]):
                    continue  # the spare is killed in the last spare_rounds rounds only (waiting for it costs)
                if v == "spare":  # killed once it is warm (a spare that dies before use is replaced)
                    deadline = time.monotonic() + 15
                    while run.spare_pid() is None and time.monotonic() < deadline:
                        time.sleep(0.1)
                pid = run.spare_pid() if v == "spare" else run.ready_pid(v)
                if pid is None or not alive(pid):
                    t.result.notes.append(f"no live {v} to kill")
                    continue
                os.kill(pid, signal.SIGKILL)
                t_kill = time.monotonic_ns()
                if v != "spare":
                    t.kills += 1
                    back = run.wait_event(lambda e, v=v, pid=pid: e.get("msg") == f"{v} ready" and e.get("pid") != pid,
                                          60)
                    if back is None:
                        t.result.notes.append(f"{v} not back within 60 s")
                        continue
                    first = t.wait_orders(1, 30, since_ns=t_kill)
                    if first is not None:
                        after_kill.append((first - t_kill) / 1e6)
                time.sleep(p["interval_s"])
        t.result.faults_seen["kill_to_next_order_ms"] = percentiles(after_kill)
    finally:
        res = t.finish()
    s = t.runs[0].summary() or {}
    rec = [x for pr in (s.get("processes") or {}).values() for x in (pr.get("recovery_ms") or [])]
    res.recovery_ms = rec
    res.faults_seen["spares"] = {k: s.get("spares", {}).get(k) for k in ("started", "used", "failed")}
    res.evidence["processes killed"] = res.kills > 0
    res.evidence["every kill restarted"] = res.restarts >= res.kills
    return res


def sc_kill_processes(ctx: Ctx, p: dict) -> list[RunResult]:
    out = [_kill_run(ctx, p, "small")]
    if p.get("split"):
        out.append(_kill_run(ctx, {**p, "rounds": p["split"]}, "split"))
    return out


def sc_kill_supervisor(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "kill_supervisor")
    try:
        cfg = system_config(ctx, t.instance, t.venue, t.dir, spare=True)
        recs = []
        cleaned = []
        for k in range(p["kills"]):
            run = t.start(cfg, wait_trading=k == 0)
            if k > 0:
                stale = run.wait_event(lambda e: "stale segments" in str(e.get("msg", "")), 1)
                cleaned.append(bool(stale))
                first = t.wait_orders(1, 60, since_ns=run.t_launch_ns)
                recon = run.wait_event(lambda e: e.get("msg") == "execution reconciled the venue: state ACTIVE", 30)
                recs.append((first - run.t_launch_ns) / 1e6 if first else float("inf"))
                if recon is None:
                    t.result.notes.append(f"restart {k}: execution never said it reconciled")
            time.sleep(p["seconds"])
            run.kill9()
            t.intended_exit[len(t.runs) - 1] = (-signal.SIGKILL,)
            t.ctx.say(f"kill_supervisor: killed {run.p.pid}")
            time.sleep(0.5)
        run = t.start(cfg, wait_trading=False)
        stale = run.wait_event(lambda e: "stale segments" in str(e.get("msg", "")), 1)
        cleaned.append(bool(stale))
        first = t.wait_orders(1, 60, since_ns=run.t_launch_ns)
        recs.append((first - run.t_launch_ns) / 1e6 if first else float("inf"))
        if run.wait_event(lambda e: e.get("msg") == "execution reconciled the venue: state ACTIVE", 30) is None:
            t.result.notes.append("the last restart: execution never said it reconciled")
        time.sleep(p["after_s"])
        t.result.recovery_ms = recs
        t.result.faults_seen["stale_segments_cleaned"] = cleaned
    finally:
        res = t.finish()
    if any(r == float("inf") for r in res.recovery_ms):
        res.notes.append("a restarted supervisor never traded")
        res.supervisor_crashes += 1
    cleaned = res.faults_seen.get("stale_segments_cleaned") or []
    res.evidence["supervisor killed and restarted"] = len(t.runs) >= 2
    res.evidence["the restart removed the killed run's segments"] = bool(cleaned) and all(cleaned)
    return [res]


def _mount_tmpfs(path: Path, size_mb: int) -> str | None:
    """Mount a tmpfs of ``size_mb`` at ``path``; None when it is mounted, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exit {r.returncode}")


def _fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); returns the bytes written."""
    n = 0
    chunk = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while True:
                n += f.write(b"\0" * 512)
    return n


def sc_disk_full(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "disk_full")
    mnt = t.dir / "disk"
    why = _mount_tmpfs(mnt, p["size_mb"])
    if why is not None:
        res = t.finish()
        res.skipped = f"cannot mount a tmpfs here ({why}): needs root or CAP_SYS_ADMIN"
        return [res]
    try:
        (mnt / "journal").mkdir()
        cfg = system_config(ctx, t.instance, t.venue, t.dir, edits={
            "execution.journal_dir": str(mnt / "journal"), "market_data.recording_dir": str(mnt / "rec"),
            "market_data.recording_rotate_mb": 1})
        run = t.start(cfg)
        time.sleep(p["before_s"])
        filler = mnt / "filler"
        written = _fill(filler)
        t_full = time.monotonic_ns()
        ctx.say(f"disk_full: filled {written >> 10} KiB")
        time.sleep(p["full_s"])
        filler.unlink()
        t_free = time.monotonic_ns()
        time.sleep(p["after_s"])
        if run.p.poll() is not None:
            t.result.notes.append("the supervisor ended while the disk was full")
        t.result.faults_seen["filled_kib"] = written >> 10
        t.result.faults_seen["orders_while_full"] = sum(1 for o in list(t.monitor.orders.values())
                                                        if t_full <= o["pub_ns"] < t_free)
        run.stop()
        # journal writing again once freed: the first batch written after the filler went
        jw = None
        with contextlib.suppress(Exception):
            con = sqlite3.connect(f"file:{mnt / 'journal' / (t.instance + '.sqlite')}?mode=ro", uri=True)
            row = con.execute("SELECT min(journal_ns) FROM events WHERE journal_ns >= ?", (t_free,)).fetchone()
            con.close()
            jw = row[0]
        t.result.recovery_ms = [(jw - t_free) / 1e6] if jw else []
        # the journal lives on the tmpfs: copy it where the audit reads it before unmounting
        for f in (mnt / "journal").iterdir():
            shutil.copy2(f, t.dir / "journal" / f.name)
    finally:
        res = t.finish()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    ex = _counters(t.runs[0], "execution") if t.runs else {}
    res.faults_seen["journal"] = {k: v for k, v in ex.items() if k.startswith("journal_") and v}
    logs = [str(e.get("msg", "")) for run in t.runs for e in run.events]
    res.faults_seen["recording_errors_logged"] = sum(m.startswith("recording: ") and "No space" in m for m in logs)
    res.faults_seen["journal_errors_logged"] = sum(m.startswith("journal write failed") for m in logs)
    if not res.skipped:
        res.evidence["the journal's writes failed"] = res.faults_seen["journal_errors_logged"] > 0
        res.evidence["the recording's writes failed"] = res.faults_seen["recording_errors_logged"] > 0
    return [res]


def sc_clock_step(ctx: Ctx, p: dict) -> list[RunResult]:
    t = Trading(ctx, "clock_step")
    try:
        run = t.start(system_config(ctx, t.instance, t.venue, t.dir))
        recs = []
        for step in p["steps_ms"]:
            t.venue.fault(clock_skew_ms=step)
            time.sleep(p["hold_s"])
            t.venue.fault(clock_skew_ms=0)
            t_back = time.monotonic_ns()
            first = t.wait_orders(1, p["wait_s"], since_ns=t_back)
            recs.append((first - t_back) / 1e6 if first else float("inf"))
            if first is None:
                t.result.notes.append(f"no order within {p['wait_s']} s after the clock stepped back from {step} ms")
        time.sleep(1.0)
        t.result.recovery_ms = recs
        if run.p.poll() is not None:
            t.result.notes.append("the supervisor ended during the clock steps")
    finally:
        res = t.finish()
    ex = _counters(t.runs[0], "execution")
    rk = _counters(t.runs[0], "risk")
    res.faults_seen["retries_1021"] = ex.get("venue_retries_1021")
    res.faults_seen["denied_clock"] = {k: v for k, v in rk.items() if "clock" in k and v}
    res.evidence["orders refused -1021"] = bool(ex.get("venue_retries_1021"))
    res.evidence["risk refused to trade at the offset"] = bool(rk.get("denied.clock_offset"))
    return [res]


SCENARIOS = [
    Scenario("feed_disconnect", "market streams dropped every 10 s", sc_feed_disconnect,
             quick={"every_s": 3.0, "seconds": 9}, full={"every_s": 10.0, "seconds": 600}),
    Scenario("hostile_frames", "1 % hostile market frames", sc_hostile_frames,
             quick={"probability": 0.01, "seconds": 6, "at_least": 5},
             full={"probability": 0.01, "seconds": 300, "at_least": 100}),
    Scenario("sequence_gaps", "depth diffs dropped", sc_sequence_gaps,
             quick={"probability": 0.05, "seconds": 5, "at_least": 2},
             full={"probability": 0.01, "seconds": 300, "at_least": 20}),
    Scenario("md_ring_lapped", "engine stopped 1.5 s on a small overwrite md ring", sc_md_ring_lapped,
             quick={"capacity": 1024, "laps": 2, "gap_s": 2.0, "stop_s": 1.5},
             full={"capacity": 1024, "laps": 20, "gap_s": 5.0, "stop_s": 1.5}),
    Scenario("rate_limit_sweeps", "429/5xx then 418 on order entry (WS API and REST), 429/418/5xx on snapshots",
             sc_rate_limit_sweeps, quick={"rounds": 1, "seconds": 15, "transports": ["ws"]},
             full={"rounds": 10, "seconds": 120, "transports": ["ws", "rest"]}),
    Scenario("order_timeouts", "order entry hangs past the time-out / connection dropped after execution",
             sc_order_timeouts, quick={"rounds": 2, "seconds": 15}, full={"rounds": 20, "seconds": 180}),
    Scenario("user_data_faults", "user-data events duplicated and re-ordered (20 %)", sc_user_data_faults,
             quick={"probability": 0.2, "seconds": 6, "at_least": 3},
             full={"probability": 0.2, "seconds": 300, "at_least": 100}),
    Scenario("kill_processes", "kill -9 of every process (and the spare) under load", sc_kill_processes,
             quick={"rounds": 2, "spare_rounds": 1, "interval_s": 1.0, "split": 0},
             full={"rounds": 20, "interval_s": 2.0, "split": 20}),
    Scenario("kill_supervisor", "kill -9 of the supervisor, then a restart", sc_kill_supervisor,
             quick={"kills": 1, "seconds": 3, "after_s": 3}, full={"kills": 5, "seconds": 20, "after_s": 20}),
    Scenario("disk_full", "journal and recording on a full tmpfs, then freed", sc_disk_full,
             quick={"size_mb": 24, "before_s": 2, "full_s": 4, "after_s": 3},
             full={"size_mb": 64, "before_s": 10, "full_s": 60, "after_s": 30}),
    Scenario("clock_step", "the venue's clock stepped +10 s, then back", sc_clock_step,
             quick={"steps_ms": [10_000], "hold_s": 3, "wait_s": 30},
             full={"steps_ms": [10_000, -10_000, 3_000], "hold_s": 20, "wait_s": 120}),
]


# ===========================================================================
# Report
# ===========================================================================
def verdict(r: RunResult) -> list[str]:
    """Why a run fails (empty: it passes)."""
    if r.skipped:
        return []
    why = [f"audit failed: {r.audit_error}"] if r.audit_error else []
    for k in ("duplicates", "orders_on_invalid_book", "position_mismatches", "segments_left", "supervisor_crashes",
              "unexpected_restarts"):
        if getattr(r, k):
            why.append(f"{k}={getattr(r, k)}")
    if r.orders == 0:
        why.append("no order reached the venue")
    why += [f"fault not seen: {k}" for k, ok in r.evidence.items() if not ok]
    if any(x == float("inf") for x in r.recovery_ms):
        why.append("never recovered")
    return why


def scenario_dict(name: str, runs: list[RunResult]) -> dict:
    rec = [x for r in runs for x in r.recovery_ms]
    finite = [x for x in rec if x != float("inf")]
    out = {
        "scenario": name, "runs": len(runs),
        "orders": sum(r.orders for r in runs), "fills": sum(r.fills for r in runs),
        "duplicates": sum(r.duplicates for r in runs),
        "orders_on_invalid_book": sum(r.orders_on_invalid_book for r in runs),
        "position_mismatches": sum(r.position_mismatches for r in runs),
        "segments_left": sum(r.segments_left for r in runs),
        "supervisor_crashes": sum(r.supervisor_crashes for r in runs),
        "recovery_ms": {**percentiles(finite), "never": len(rec) - len(finite), "all": [round(x, 1) for x in rec]},
        "restarts": sum(r.restarts for r in runs), "kills": sum(r.kills for r in runs),
        "unexpected_restarts": sum(r.unexpected_restarts for r in runs),
        "unverified_orders": sum(r.invalid_detail.get("unverified", 0) for r in runs),
        "wall_s": round(sum(r.wall_s for r in runs), 1),
        "skipped": next((r.skipped for r in runs if r.skipped), None),
        "failures": [f"{r.name}: {w}" for r in runs for w in verdict(r)],
        "detail": [{"run": r.name, "seed": r.seed, "evidence": r.evidence, "orders": r.orders, "fills": r.fills,
                    "duplicates": r.duplicates_detail,
                    "invalid_book": r.invalid_detail, "positions": r.position_detail,
                    "processes_left": r.processes_left, "faults_seen": r.faults_seen, "notes": r.notes,
                    "tracebacks": r.tracebacks[:10], "wall_s": r.wall_s} for r in runs],
    }
    out["pass"] = not out["failures"]
    return out


def table(rows: list[dict]) -> str:
    hdr = ("scenario", "runs", "orders", "fills", "dup", "inv.book", "mismatch", "seg.left", "sup.crash",
           "recovery p50/max ms", "restarts", "result")
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for d in rows:
        rec = d["recovery_ms"]
        r = "-" if rec["n"] == 0 else f"{rec['p50']:.0f} / {rec['max']:.0f} (n={rec['n']})"
        if rec["never"]:
            r += f" never={rec['never']}"
        result = "skipped" if d["skipped"] else ("pass" if d["pass"] else "FAIL")
        lines.append("| " + " | ".join(str(x) for x in (
            d["scenario"], d["runs"], d["orders"], d["fills"], d["duplicates"], d["orders_on_invalid_book"],
            d["position_mismatches"], d["segments_left"], d["supervisor_crashes"], r, d["restarts"], result)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every scenario shortened (CI: under 5 minutes in all)")
    ap.add_argument("--scenario", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="print the per-scenario figures as JSON (to PATH when given)")
    ap.add_argument("--keep", action="store_true", help="keep each run's directory (configs, logs, journal)")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--param", action="append", default=[], metavar="SCENARIO.KEY=JSON",
                    help="override one parameter of a scenario's preset, e.g. kill_processes.rounds=5 (repeatable)")
    ap.add_argument("--seed", type=int, default=None,
                    help="campaign seed (each run's simulator seed derives from it; default: random, reported)")
    args = ap.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:<20} {sc.what}")
        return 0
    names = [n for n in args.scenario.split(",") if n]
    unknown = [n for n in names if n not in {s.name for s in SCENARIOS}]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; --list shows them")
    chosen = [s for s in SCENARIOS if not names or s.name in names]
    overrides: dict[str, dict] = {}
    for item in args.param:
        key, _, value = item.partition("=")
        sc_name, _, k = key.partition(".")
        if sc_name not in {s.name for s in SCENARIOS} or not k or not value:
            ap.error(f"--param {item!r}: expected SCENARIO.KEY=JSON with a known scenario")
        try:
            overrides.setdefault(sc_name, {})[k] = json.loads(value)
        except ValueError:
            ap.error(f"--param {item!r}: the value is not JSON")
    ensure_compiled(str(BASE_CONFIG))  # one process compiles; the runs only load (core.numba_cache)
    ctx = Ctx(args.quick, args.keep, args.verbose, args.seed)
    t0 = time.monotonic()
    rows = []
    try:
        for sc in chosen:
            ctx.say(f"scenario {sc.name} ({'quick' if args.quick else 'full'})")
            try:
                runs = sc.fn(ctx, {**(sc.quick if args.quick else sc.full), **overrides.get(sc.name, {})})
            except Exception as exc:  # noqa: BLE001 - a scenario that could not run fails, the others go on
                import traceback

                traceback.print_exc()
                runs = [RunResult(sc.name, audit_error=f"scenario error: {type(exc).__name__}: {exc}")]
            d = scenario_dict(sc.name, runs)
            rows.append(d)
            ctx.say(f"scenario {sc.name}: {'pass' if d['pass'] else 'FAIL ' + '; '.join(d['failures'])} "
                    f"({d['wall_s']} s)")
    finally:
        if not args.keep:
            shutil.rmtree(ctx.root, ignore_errors=True)
    total_s = round(time.monotonic() - t0, 1)
    failed = [d for d in rows if not d["pass"]]
    verdict_text = "all pass" if not failed else f"{len(failed)} FAIL"
    text = table(rows) + f"\n\n{len(rows)} scenarios, {total_s} s, seed {ctx.seed}: {verdict_text}"
    for d in failed:
        text += "\n  " + d["scenario"] + ": " + "; ".join(d["failures"])
    if args.json is not None:
        payload = json.dumps({"quick": args.quick, "seed": ctx.seed, "total_s": total_s, "scenarios": rows}, indent=1,
                             default=str)
        if args.json == "-":
            print(payload)
            sys.stderr.write(text + "\n")
        else:
            Path(args.json).write_text(payload)
            print(text)
    else:
        print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

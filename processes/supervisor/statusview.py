"""The live status table: one snapshot of a running system and one fixed-width text rendering of it.

``snapshot(sup, prev)`` gathers, on the supervisor's main thread, what the
supervisor already holds: the ring headers (``Ring.stats()``: published,
consumer cursors, drops, laps, stalls), the view the metrics endpoint reads
(``summary.build_view``: processes, the merged per-hop latency histograms'
percentiles, the stages' heartbeat counters; reused when it is at most one
second old, built otherwise), the tail of the ``book`` ring (each symbol's
latest record: state, update id, age, best bid/ask) and the ``resync``
events the book stage sent. It returns plain JSON-able data: the operator
socket carries it (``ctl.sh status``). Rates are messages per second between
``prev`` and now, or since the go when there is no usable ``prev``.

``render(snap)`` turns a snapshot into lines of at most ``WIDTH`` (100)
columns: the header (instance, mode, phase, uptime, trading state, breaker,
restarts), rings, books, signals by strategy, risk's decisions, orders and
fills, positions and P&L, latency p50/p99/max per hop, processes, and the
latest warnings of the log. It imports only the standard library, so the
``ctl.sh`` client renders without numba.

``StatusTable`` redraws it from the watch loop at most once per
``PERIOD_S`` (0.5 s): the main loop builds the snapshot and the text (the
measured cost is logged at the end of the run) and hands the frame to a
writer thread, which alone touches the terminal: a terminal that does not
read (a paused ssh session, Ctrl-S) stalls that thread, never the watch loop;
frames it could not write in time are replaced by the newest and counted.
On a terminal each frame starts at the top-left corner (``ESC [H``), clears
each line's rest (``ESC [K``) and everything below it (``ESC [J``), so it
redraws in place without flicker; off a terminal (``supervisor.status_table:
"on"``) frames are appended, separated by a blank line, with no escapes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

log = logging.getLogger("ringtrader.supervisor")

PERIOD_S = 0.5  # at most two frames a second
WIDTH = 100  # no line of the table is longer
BOOK_TAIL = 1024  # book records read back from the ring head per snapshot, to find each symbol's latest
RESYNC_RECENT_S = 10.0  # an invalid book with a resync request this recent is "resyncing" (book retries every 5 s)
MIN_RATE_WINDOW_S = 0.2  # a ``prev`` closer than this gives no rate of its own: its rates are carried over
VIEW_FRESH_S = 1.0  # the metrics view is reused when at most this old (it is rebuilt every 0.5 s while in use)
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
_FIXED = 100_000_000  # core.records.FIXED_SCALE (not imported: render runs in the numba-free ctl client)


# ---------------------------------------------------------------------------
# Snapshot (the supervisor's main thread)
# ---------------------------------------------------------------------------


def _dec(v) -> str | None:
    """A fixed-point integer as an exact decimal string (None when absent)."""
    if v is None:
        return None
    return format((Decimal(int(v)) / _FIXED).normalize(), "f")


def _places(step: int) -> int | None:
    """Decimals of a fixed-point step (a tick of 1000000 = 0.01: 2); None when unknown (0)."""
    if step <= 0:
        return None
    d = (Decimal(int(step)) / _FIXED).normalize()
    return max(0, -d.as_tuple().exponent)


def _px(v: int, places: int | None) -> str | None:
    """A fixed-point price with its tick's decimals (60000.30, not 60000.3); None for 0 (no such side)."""
    if not v:
        return None
    d = Decimal(int(v)) / _FIXED
    return format(d.quantize(Decimal(1).scaleb(-places)) if places is not None else d.normalize(), "f")


def _view(sup, now: float) -> dict:
    """The metrics view when it is fresh (metrics on or the table drawn), else one built now."""
    view = getattr(sup, "metrics_view", None)
    if view and now - getattr(sup, "view_at", 0.0) <= VIEW_FRESH_S:
        return view
    from processes.supervisor.summary import build_view

    return build_view(sup)


def _rings(sup, prev: dict | None, now: float) -> tuple[dict, float | None, bool]:
    """Per ring: published, rate, lag (slowest consumer), drops, laps, stalls; the rate window; whether the
    rates were computed from ``prev`` (False: carried over from it, or averaged since the go)."""
    out = {}
    for name, ring in getattr(sup, "rings", {}).items():
        if ring.ctrl is None:
            continue  # closed (the run is over)
        st = ring.stats()
        out[name] = {"published": st.published, "rate": None, "capacity": st.capacity, "policy": st.policy,
                     "lag": max((st.published - c for c in st.consumed), default=0),
                     "drops": sum(st.lost), "laps": sum(st.lapped), "stalls": st.stalls}
    dt = now - prev["t"] if prev else None
    if dt is not None and dt >= MIN_RATE_WINDOW_S:
        before = prev.get("rings") or {}
        for name, r in out.items():
            if name in before:
                r["rate"] = round(max(0, r["published"] - before[name]["published"]) / dt, 1)
        return out, round(dt, 3), True
    if dt is not None:  # too close to ``prev`` for a rate of its own: prev's stand
        before = prev.get("rings") or {}
        for name, r in out.items():
            r["rate"] = (before.get(name) or {}).get("rate")
        return out, prev.get("rate_window_s"), False
    t_go = getattr(sup, "t_go", None)
    if t_go and now > t_go:
        for r in out.values():
            r["rate"] = round(r["published"] / (now - t_go), 1)
    return out, None, False


def _books(sup, prev: dict | None, book_counters: dict) -> dict:
    """Each symbol's latest book record (from the ring's tail), or the previous snapshot's when the symbol
    published nothing lately."""
    import numpy as np

    from core.records import BK_TOP, BOOK_VALID

    ids = {i.id: i.symbol for i in sup.cfg.instruments}
    places = {i.id: _places(i.tick_size) for i in sup.cfg.instruments}
    before = ((prev or {}).get("books") or {}).get("symbols") or {}
    now_ns = time.monotonic_ns()
    syms: dict[str, dict] = {}
    ring = getattr(sup, "rings", {}).get("book")
    if ring is not None and ring.ctrl is not None:
        end = ring.published
        n = min(end, BOOK_TAIL, ring.capacity // 2)  # overwriting these takes half a ring of publishes mid-read
        if n:
            idx = np.arange(end - n, end) & ring.mask
            slots = ring.slots
            sym, kind, state = slots["symbol"][idx], slots["kind"][idx], slots["state"][idx]
            for sid, name in ids.items():
                hit = np.flatnonzero(sym == sid)
                if not len(hit):
                    continue
                j = int(idx[hit[-1]])
                e = {"valid": int(state[hit[-1]]) == BOOK_VALID, "update_id": int(slots["last_update_id"][j]),
                     "pub_ns": int(slots["pub_ns"][j]), "bid": None, "ask": None}
                tops = hit[kind[hit] == BK_TOP]
                if len(tops):
                    k = int(idx[tops[-1]])
                    e["bid"] = _px(int(slots["top_bid_px"][k]), places[sid])
                    e["ask"] = _px(int(slots["top_ask_px"][k]), places[sid])
                elif name in before:
                    e["bid"], e["ask"] = before[name].get("bid"), before[name].get("ask")
                syms[name] = e
    resync = getattr(sup, "resync_seen", {})
    now = time.monotonic()
    for sid, name in ids.items():
        e = syms.get(name) or (dict(before[name]) if name in before and before[name].get("pub_ns") else None)
        if e is None:
            syms[name] = {"state": "no data", "update_id": None, "age_ms": None, "bid": None, "ask": None}
            continue
        if e.get("valid"):
            e["state"] = "valid"
        else:
            asked = resync.get(sid)
            e["state"] = "resyncing" if asked is not None and now - asked <= RESYNC_RECENT_S else "invalid"
        e["age_ms"] = round(max(0, now_ns - e["pub_ns"]) / 1e6, 1)
        syms[name] = e
    return {"valid": book_counters.get("books_valid"), "total": book_counters.get("books", len(ids)),
            "resyncs": book_counters.get("resyncs_requested"), "symbols": {s: syms[s] for s in ids.values()}}


def _signals(sg: dict) -> dict:
    by: dict[str, dict] = {}
    for key, v in sg.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in ("signals", "suppressed"):
            s = by.setdefault(parts[1], {"signals": 0, "suppressed": 0, "suppressed_by": {}})
            if parts[0] == "signals":
                s["signals"] += int(v)
            elif v:
                s["suppressed"] += int(v)
                s["suppressed_by"][parts[2]] = int(v)
    return {"read": sg.get("read"), "total": sg.get("signals"), "by_strategy": by}


def _trading(rk: dict) -> dict:
    from core.risk_kernels import STATE_NAMES, TRIP_NAMES

    if "approved" not in rk:
        return {"state": None, "trip": None}
    state, trip = int(rk.get("state", 0)), int(rk.get("trip", 0))
    return {"state": STATE_NAMES[state] if 0 <= state < len(STATE_NAMES) else str(state),
            "trip": (TRIP_NAMES[trip] if 0 <= trip < len(TRIP_NAMES) else str(trip)) if trip else None,
            **{k: int(rk.get(k, 0)) for k in ("signals", "approved", "denied", "exits", "cancel_all")},
            "denied_by_reason": {k.split(".", 1)[1]: int(v) for k, v in sorted(rk.items())
                                 if k.startswith("denied.") and v}}


def _orders(ex: dict, rk: dict) -> dict:
    from processes.metrics import order_counts  # the metrics' own reading of paper_* / venue_* counters

    n = order_counts(ex)
    if n is None:  # pass-through execution: no venue, so nothing is sent; risk's fills are the pass-through's
        return {"venue": False, "sent": None, "fills": rk.get("fills"), "rejects": rk.get("rejects"),
                "cancels": None, "unknown": None}
    return {"venue": True, **n}


def _positions(sup, rk: dict) -> dict:
    if "approved" not in rk:
        return {}
    out = {}
    for i in sup.cfg.instruments:
        s = i.symbol
        net, unreal = rk.get(f"realized_net.{s}", 0), rk.get(f"unrealized.{s}", 0)
        out[s] = {"position": _dec(rk.get(f"position.{s}", 0)), "avg_entry": _dec(rk.get(f"avg_entry.{s}", 0)),
                  "realized": _dec(rk.get(f"realized.{s}", 0)), "realized_net": _dec(net),
                  "unrealized": _dec(unreal), "total": _dec(net + unreal), "price_places": _places(i.tick_size)}
    return out


def _processes(sup, view: dict, now: float) -> dict:
    vp = view.get("processes") or {}
    out = {}
    for p in list(sup.procs.values()):
        out[p.name] = {"state": p.state, "up": p.state == "running" and p.alive,
                       "pid": p.proc.pid if p.proc is not None else None, "restarts": len(p.restarts),
                       "heartbeat_age_s": round(now - p.last_hb, 2) if p.state == "running" and p.last_hb else None,
                       "idle_fraction": (vp.get(p.name) or {}).get("idle_fraction"), "stages": list(p.stages)}
    return out


def snapshot(sup, prev: dict | None = None, *, now: float | None = None) -> dict:
    """The system as the supervisor sees it now; ``prev`` (an earlier snapshot) gives the rates."""
    now = time.monotonic() if now is None else now
    view = _view(sup, now)
    rings, window, fresh = _rings(sup, prev, now)
    rk = view.get("risk") or {}
    control = getattr(sup, "control", None)
    sink = getattr(sup, "sink", None)
    t_go = getattr(sup, "t_go", None)
    procs = _processes(sup, view, now)
    return {
        "t": now, "wall": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        "instance": sup.cfg.instance, "mode": sup.cfg.mode,
        "phase": control.server.phase if control is not None else None,
        "uptime_s": round(now - sup.t_start, 1), "flow_s": round(now - t_go, 1) if t_go else None,
        "rate_window_s": window, "rates_fresh": fresh,
        "trading": _trading(rk),
        "restarts": sum(p["restarts"] for p in procs.values()),
        "rings": rings,
        "books": _books(sup, prev, view.get("book") or {}),
        "signals": _signals(view.get("signal") or {}),
        "orders": _orders(view.get("execution") or {}, rk),
        "positions": _positions(sup, rk),
        "latency": {hop: {k: s.get(k) for k in ("count", "p50_us", "p99_us", "max_us")}
                    for hop, s in (view.get("latency") or {}).items() if s.get("count")},
        "processes": procs,
        "log": list(getattr(sink, "recent", ())),
    }


# ---------------------------------------------------------------------------
# Rendering (standard library only: the ctl client uses it)
# ---------------------------------------------------------------------------


def _fit(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def _n(v) -> str:
    return "-" if v is None else str(v)


def _rate(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _us(v) -> str:
    """Microseconds in at most 6 characters: 35.2, 12177, 268ms, 12s."""
    if v is None:
        return "-"
    if v < 1000:
        return f"{v:.1f}"
    if v < 100_000:
        return f"{v:.0f}"
    return f"{v / 1000:.0f}ms" if v < 10_000_000 else f"{v / 1e6:.0f}s"


def _num(s, places: int) -> str:
    """A decimal string rounded for display (``places`` decimals), "-" when absent."""
    if s is None:
        return "-"
    try:
        d = Decimal(str(s))
    except InvalidOperation:
        return str(s)
    q = d.quantize(Decimal(1).scaleb(-places))
    return format(q.normalize() if q == q.to_integral_value() else q, "f")


def _qty(s) -> str:
    return "-" if s is None else str(s)


def _age(ms) -> str:
    if ms is None:
        return "-"
    if ms < 10_000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.0f} s" if ms < 3_600_000 else f"{ms / 3_600_000:.1f} h"


def _dur(s) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _pairs(d: dict, limit: int = 6) -> str:
    items = sorted(d.items(), key=lambda kv: -kv[1])[:limit]
    return " ".join(f"{k}={v}" for k, v in items) + (" ..." if len(d) > limit else "")


def _header(s: dict) -> list[str]:
    tr = s.get("trading") or {}
    state = tr.get("state") or "unknown (no risk heartbeat yet)"
    trip = tr.get("trip")
    left = (f"ringtrader {s.get('instance')}  mode {s.get('mode')}  {s.get('phase') or '-'}  "
            f"up {_dur(s.get('uptime_s'))}")
    wall = s.get("wall") or ""
    w = s.get("rate_window_s")
    when = (f"rates: msgs/s over the last {w:.1f} s" if w is not None else
            f"rates: msgs/s since start ({s['flow_s']:.0f} s)" if s.get("flow_s") else "")
    second = f"trading {state}  breaker {'TRIPPED: ' + trip if trip else 'ok'}  restarts {s.get('restarts', 0)}"
    return [left + " " * max(1, WIDTH - len(left) - len(wall)) + wall,
            second + " " * max(2, WIDTH - len(second) - len(when)) + when]


def _ring_lines(s: dict) -> list[str]:
    lines = [f"{'ring':<9}{'rate/s':>10}{'published':>13}{'lag':>8}{'drops':>8}{'laps':>7}{'stalls':>8}"
             f"{'capacity':>10}  policy"]
    for name, r in (s.get("rings") or {}).items():
        lines.append(f"{name:<9}{_rate(r.get('rate')):>10}{_n(r.get('published')):>13}{_n(r.get('lag')):>8}"
                     f"{_n(r.get('drops')):>8}{_n(r.get('laps')):>7}{_n(r.get('stalls')):>8}"
                     f"{_n(r.get('capacity')):>10}  {r.get('policy') or ''}")
    return lines


def _book_lines(s: dict) -> list[str]:
    b = s.get("books") or {}
    head = f"{'book':<10}{'state':<11}{'update id':>14}{'age':>9}{'bid':>16}{'ask':>16}"
    extra = f"  valid {_n(b.get('valid'))}/{_n(b.get('total'))}  resyncs {_n(b.get('resyncs'))}"
    lines = [head + extra]
    for sym, e in (b.get("symbols") or {}).items():
        state = e.get("state") or "-"
        lines.append(f"{sym[:9]:<10}{state if state == 'valid' else state.upper():<11}{_n(e.get('update_id')):>14}"
                     f"{_age(e.get('age_ms')):>9}{_qty(e.get('bid')):>16}{_qty(e.get('ask')):>16}")
    return lines


def _signal_lines(s: dict) -> list[str]:
    sg = s.get("signals") or {}
    by = sg.get("by_strategy") or {}
    lines = [f"{'strategy':<20}{'signals':>10}{'suppressed':>12}  by reason    "
             f"(signal stage read {_n(sg.get('read'))}, emitted {_n(sg.get('total'))})"]
    for name, v in by.items():
        lines.append(f"{name:<20}{v.get('signals', 0):>10}{v.get('suppressed', 0):>12}  "
                     f"{_pairs(v.get('suppressed_by') or {})}")
    if not by:
        lines.append("(no strategy has reported yet)")
    return lines


def _risk_lines(s: dict) -> list[str]:
    tr = s.get("trading") or {}
    o = s.get("orders") or {}
    lines = []
    if "approved" in tr:
        denied = tr.get("denied_by_reason") or {}
        lines.append(f"risk     signals {tr.get('signals', 0)}  approved {tr.get('approved', 0)}  denied "
                     f"{tr.get('denied', 0)}  exits {tr.get('exits', 0)}  cancel-all {tr.get('cancel_all', 0)}")
        if denied:
            lines.append(f"         denied by reason: {_pairs(denied)}")
    if o.get("venue"):
        lines.append(f"orders   sent {_n(o.get('sent'))}  fills {_n(o.get('fills'))}  rejects {_n(o.get('rejects'))}"
                     f"  cancels {_n(o.get('cancels'))}  unknown outcomes {_n(o.get('unknown'))}")
    elif o:
        lines.append(f"orders   pass-through execution (no venue): fills {_n(o.get('fills'))}  rejects "
                     f"{_n(o.get('rejects'))}")
    return lines


def _position_lines(s: dict) -> list[str]:
    pos = s.get("positions") or {}
    if not pos:
        return ["positions: (no risk heartbeat yet)"]
    lines = [f"{'position':<12}{'qty':>14}{'avg entry':>15}{'realized':>14}{'real. net':>14}{'unrealized':>14}"
             f"{'net P&L':>14}"]
    for sym, p in pos.items():
        places = p.get("price_places")
        lines.append(f"{sym:<12}{_qty(p.get('position')):>14}"
                     f"{_num(p.get('avg_entry'), 2 if places is None else places):>15}"
                     + "".join(f"{_num(p.get(k), 4):>14}" for k in ("realized", "realized_net", "unrealized",
                                                                     "total")))
    return lines


def _latency_lines(s: dict) -> list[str]:
    lat = list((s.get("latency") or {}).items())
    col = f"{'count':>8}{'p50':>7}{'p99':>7}{'max':>7}"
    lines = [f"{'latency (us)':<18}{col}  | {'(since start)':<18}{col}"]
    half = (len(lat) + 1) // 2

    def cell(item) -> str:
        hop, h = item
        return (f"{hop[:17]:<18}{_n(h.get('count')):>8}{_us(h.get('p50_us')):>7}{_us(h.get('p99_us')):>7}"
                f"{_us(h.get('max_us')):>7}")
    for i in range(half):
        right = cell(lat[half + i]) if half + i < len(lat) else ""
        lines.append(cell(lat[i]) + ("  | " + right if right else ""))
    if not lat:
        lines.append("(no samples yet)")
    return lines


def _process_lines(s: dict) -> list[str]:
    lines = [f"{'process':<12}{'state':<10}{'up':<5}{'pid':>8}{'restarts':>10}{'heartbeat':>11}{'idle':>6}  stages"]
    for name, p in (s.get("processes") or {}).items():
        hb = p.get("heartbeat_age_s")
        idle = p.get("idle_fraction")
        lines.append(f"{name:<12}{p.get('state', '?'):<10}{'yes' if p.get('up') else 'NO':<5}{_n(p.get('pid')):>8}"
                     f"{p.get('restarts', 0):>10}{(f'{hb:.1f} s' if hb is not None else '-'):>11}"
                     f"{(f'{idle:.0%}' if idle is not None else '-'):>6}  {','.join(p.get('stages') or []) or '-'}")
    return lines


def _log_lines(s: dict) -> list[str]:
    recent = s.get("log") or []
    if not recent:
        return []
    return ["latest warnings (the full log: stderr or logging.file)"] + [
        f"{(ts or '')[11:19]} {proc} {level} {msg}" for ts, proc, level, msg in recent]


def render(snap: dict) -> str:
    """The table as text: lines of at most ``WIDTH`` columns, sections separated by a blank line."""
    sections = [_header(snap), _ring_lines(snap), _book_lines(snap), _signal_lines(snap) + _risk_lines(snap),
                _position_lines(snap), _latency_lines(snap), _process_lines(snap), _log_lines(snap)]
    out: list[str] = []
    for sec in sections:
        if sec:
            if out:
                out.append("")
            out.extend(_fit(line.rstrip()) for line in sec)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The live table (the supervisor's watch loop)
# ---------------------------------------------------------------------------


class StatusTable:
    """Draws ``render(snapshot(sup))`` on ``out`` at most every ``period_s``; a thread does the writing.

    ``tick(sup)`` is called from the watch loop each pass; it returns at once
    unless a frame is due. ``close()`` stops the writer and returns the
    counts and the measured cost of one snapshot + render.
    """

    def __init__(self, out=None, *, tty: bool, period_s: float = PERIOD_S):
        self.out = out if out is not None else sys.stdout
        self.tty = tty
        self.period_s = period_s
        self.prev: dict | None = None  # the last snapshot (the control socket's status uses it for its rates)
        self.next_at = 0.0
        self.frames = 0  # handed to the writer
        self.written = 0
        self.skipped = 0  # replaced by a newer frame before the writer got to them
        self.errors = 0  # snapshots or renders that raised (logged once), writes that failed
        self.cost_ns: deque[int] = deque(maxlen=4096)  # snapshot + render, per frame
        self.first_ns: int | None = None
        self._pending: str | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    @staticmethod
    def prepare() -> None:
        """Import what ``snapshot`` imports lazily, before the run: the first frame would otherwise stall the
        watch loop for those imports (prometheus_client, numba modules: about 0.1 s on a 2-CPU host)."""
        import importlib

        for mod in ("numpy", "core.records", "core.risk_kernels", "processes.metrics", "processes.supervisor.summary"):
            importlib.import_module(mod)

    def tick(self, sup) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.period_s
        t0 = time.perf_counter_ns()
        try:
            snap = snapshot(sup, self.prev, now=now)
            text = render(snap)
        except Exception:  # noqa: BLE001 - the table is a view: it never takes the watch loop down
            self.errors += 1
            if self.errors == 1:
                log.exception("status table: a snapshot failed (the table stays as it was)")
            return
        self.cost_ns.append(time.perf_counter_ns() - t0)
        if self.first_ns is None:
            self.first_ns = self.cost_ns[-1]  # includes the lazy imports of the first snapshot
        self.prev = snap
        self._post(self.frame(text))

    def frame(self, text: str) -> str:
        """What goes to the terminal for one table: redrawn in place on a terminal (clipped to its size, so a
        small window neither wraps nor scrolls it), appended elsewhere."""
        if not self.tty:
            return text + "\n\n"
        lines = text.split("\n")
        try:
            cols, rows = os.get_terminal_size(self.out.fileno())
        except (AttributeError, OSError, ValueError):  # not a real terminal (a test's stand-in): as it is
            cols = rows = 0
        if rows > 1:
            lines = lines[:rows - 1]
        if cols > 0:
            lines = [line[:cols] for line in lines]
        return HOME + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW

    def _post(self, frame: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._writer, name="ringtrader-status", daemon=True)
            self._thread.start()
        with self._cv:
            if self._pending is not None:
                self.skipped += 1
            self._pending = frame
            self.frames += 1
            self._cv.notify()

    def _writer(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._pending is None:
                    return
                frame, self._pending = self._pending, None
            try:
                self.out.write(frame)
                self.out.flush()
                self.written += 1
            except (OSError, ValueError):  # a closed or broken terminal: the table is lost, trading is not
                self.errors += 1

    def close(self, timeout_s: float = 1.0) -> dict:
        """Stop drawing (the last frame stays on the terminal); the counts and the cost of a frame."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        costs = sorted(self.cost_ns)
        ms = (lambda q: round(costs[min(len(costs) - 1, int(q * len(costs)))] / 1e6, 3)) if costs else (
            lambda q: None)
        return {"frames": self.frames, "written": self.written, "skipped": self.skipped, "errors": self.errors,
                "cost_ms_p50": ms(0.5), "cost_ms_p99": ms(0.99),
                "cost_ms_max": round(costs[-1] / 1e6, 3) if costs else None,
                "cost_ms_first": round(self.first_ns / 1e6, 3) if self.first_ns is not None else None}

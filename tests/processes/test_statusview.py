"""The live status table: its rendering, its snapshot of rings and books, and a real run under a terminal.

The renderer is checked on a hand-built snapshot (every section, 100
columns at most, an invalid book shown as such); the snapshot on real rings
with a stand-in supervisor (rates from two snapshots, each book's latest
record from the ring's tail); the writer never holds up the watch loop when
the terminal does not read; and one real supervisor run under a
pseudo-terminal redraws the table in place at most twice a second, with its
JSON log on stderr and none of it on the terminal. Off a terminal stdout
stays JSON lines: ``test_ctl.py``'s running system checks that, and its
``ctl.sh status`` prints this table.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from processes.supervisor.statusview import WIDTH, StatusTable, render, snapshot
from ringbuffers.ring import list_segments

from test_supervisor import small_config

ROOT = Path(__file__).resolve().parents[2]
HOPS12 = ("feed", "md->book", "book->signal", "book->risk", "book->execution", "signals->risk", "orders->execution",
          "reports->risk", "end_to_end", "tick_to_order", "order_to_wire", "ack_rtt")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def hand_snapshot(**edits) -> dict:
    s = {
        "t": 100.0, "wall": "2026-12-01 17:55:01Z", "instance": "main", "mode": "sim", "phase": "running",
        "uptime_s": 83.4, "flow_s": 60.2, "rate_window_s": 0.5, "rates_fresh": True,
        "trading": {"state": "ACTIVE", "trip": None, "signals": 120, "approved": 100, "denied": 20, "exits": 3,
                    "cancel_all": 0, "denied_by_reason": {"max_position": 15, "min_notional": 5}},
        "restarts": 1,
        "rings": {r: {"published": 123456789, "rate": 1234.5, "capacity": 65536, "policy": "block", "lag": 3,
                      "drops": 0, "laps": 0, "stalls": 7} for r in ("md", "book", "signals", "orders", "reports")},
        "books": {"valid": 1, "total": 2, "resyncs": 3, "symbols": {
            "BTCUSDT": {"state": "valid", "update_id": 98765432101, "age_ms": 12.3, "bid": "65000.01",
                        "ask": "65000.02"},
            "ETHUSDT": {"state": "invalid", "update_id": 1234, "age_ms": 15300.0, "bid": None, "ask": None}}},
        "signals": {"read": 5000, "total": 120, "by_strategy": {"every_n": {
            "signals": 120, "suppressed": 30, "suppressed_by": {"warmup": 20, "stale": 10}}}},
        "orders": {"venue": True, "sent": 100, "fills": 95, "rejects": 2, "cancels": 3, "unknown": 0},
        "positions": {"BTCUSDT": {"position": "0.00123", "avg_entry": "65000.12345678", "realized": "-1.23456789",
                                  "realized_net": "-1.5", "unrealized": "0.0012", "total": "-1.4988"},
                      "ETHUSDT": {"position": "-123456.12345678", "avg_entry": "3000", "realized": "123456789.5",
                                  "realized_net": "0", "unrealized": "0", "total": "0"}},
        "latency": {h: {"count": 123456789, "p50_us": 35.2, "p99_us": 612.0, "max_us": 152345.5} for h in HOPS12},
        "processes": {"feed": {"state": "running", "up": True, "pid": 1234, "restarts": 0, "heartbeat_age_s": 0.12,
                               "idle_fraction": None, "stages": ["feed"]},
                      "engine": {"state": "backoff", "up": False, "pid": 1240, "restarts": 1,
                                 "heartbeat_age_s": None, "idle_fraction": 0.83,
                                 "stages": ["book", "signal", "risk", "execution"]}},
        "log": [["2026-12-01T17:55:00.123Z", "supervisor", "WARNING", "engine exited with code -9; " + "x" * 200]],
    }
    s.update(edits)
    return s


def row(text: str, first: str) -> str:
    """The line of the table that starts with ``first``."""
    return next(line for line in text.splitlines() if line.split() and line.split()[0] == first)


# ---------------------------------------------------------------------------
# The renderer
# ---------------------------------------------------------------------------


def test_render_shows_every_section_within_100_columns():
    text = render(hand_snapshot())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH == 100
    assert lines[0].startswith("ringtrader main  mode sim  running  up 0:01:23")
    assert "trading ACTIVE  breaker ok  restarts 1" in lines[1] and "over the last 0.5 s" in lines[1]
    for ring in ("md", "book", "signals", "orders", "reports"):
        assert row(text, ring).split()[1:4] == ["1234", "123456789", "3"]  # rate/s, published, lag
    assert row(text, "BTCUSDT").split()[:5] == ["BTCUSDT", "valid", "98765432101", "12", "ms"]
    assert "65000.01" in row(text, "BTCUSDT") and "65000.02" in row(text, "BTCUSDT")
    assert row(text, "every_n").split()[:3] == ["every_n", "120", "30"] and "warmup=20" in row(text, "every_n")
    assert "approved 100  denied 20" in text and "max_position=15" in text
    assert "sent 100  fills 95  rejects 2  cancels 3" in text
    pos = [line for line in lines if line.startswith("BTCUSDT") and "0.00123" in line]
    assert pos and pos[0].split()[1:] == ["0.00123", "65000.12", "-1.2346", "-1.5000", "0.0012", "-1.4988"]
    for hop in HOPS12:  # two hops a line, every hop present with p50 and p99
        assert re.search(rf"(^|\| ){re.escape(hop)}\s+123456789\s+35\.2\s+612\.0\s+152ms", text, re.M), hop
    assert row(text, "engine").split()[:5] == ["engine", "backoff", "NO", "1240", "1"]
    assert "engine exited with code -9" in text and any(line.endswith("~") for line in lines)  # clipped, not wrapped


def test_an_invalid_or_resyncing_book_is_shown_as_not_valid():
    s = hand_snapshot()
    text = render(s)
    assert row(text, "ETHUSDT").split()[1] == "INVALID"
    s["books"]["symbols"]["ETHUSDT"]["state"] = "resyncing"
    s["books"]["symbols"]["BTCUSDT"] = {"state": "no data", "update_id": None, "age_ms": None, "bid": None,
                                        "ask": None}
    text = render(s)
    assert row(text, "ETHUSDT").split()[1] == "RESYNCING"
    assert row(text, "BTCUSDT").split()[1:3] == ["NO", "DATA"]


def test_a_tripped_breaker_and_a_halt_head_the_table():
    s = hand_snapshot()
    s["trading"].update(state="HALTED", trip="daily_loss")
    assert render(s).splitlines()[1].startswith("trading HALTED  breaker TRIPPED: daily_loss")


def test_a_snapshot_with_nothing_reported_yet_still_renders():
    text = render({"instance": "x", "mode": "sim", "trading": {"state": None}, "rings": {}, "books": {},
                   "signals": {}, "orders": {}, "positions": {}, "latency": {}, "processes": {}, "log": []})
    assert "unknown (no risk heartbeat yet)" in text and "(no samples yet)" in text
    assert max(len(line) for line in text.splitlines()) <= WIDTH


# ---------------------------------------------------------------------------
# The snapshot, on real rings
# ---------------------------------------------------------------------------


@pytest.fixture
def stand_in(tmp_path, instance):
    """A stand-in supervisor with the real five rings of ``instance`` and a metrics view that is always fresh."""
    from core import records
    from core.config import RINGS, load_config
    from ringbuffers.ring import Ring, segment_name

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(small_config(instance)))
    cfg = load_config(str(path))
    rings = {r: Ring.create(segment_name(instance, r), records.ALL_DTYPES[dt], 1024, len(cons))
             for r, (dt, _p, cons) in RINGS.items()}
    view = {"processes": {}, "latency": {"md->book": {"count": 10, "p50_us": 30.0, "p99_us": 90.0, "max_us": 99.0}},
            "book": {"books": 2, "books_valid": 1, "resyncs_requested": 1}, "signal": {}, "risk": {},
            "execution": {}}
    sup = SimpleNamespace(cfg=cfg, rings=rings, procs={}, metrics_view=view, view_at=float("inf"), t_start=0.0,
                          t_go=None, resync_seen={}, sink=SimpleNamespace(recent=[]), control=None)
    try:
        yield sup
    finally:
        for r in rings.values():
            r.unlink()
            r.close()


def test_rates_are_messages_per_second_between_two_snapshots(stand_in):
    from core import records

    md = stand_in.rings["md"]
    md.publish_batch(np.zeros(100, records.MD_EVENT))
    first = snapshot(stand_in, now=10.0)
    assert first["rings"]["md"]["published"] == 100 and first["rate_window_s"] is None
    md.publish_batch(np.zeros(250, records.MD_EVENT))
    second = snapshot(stand_in, first, now=10.5)
    assert second["rate_window_s"] == 0.5 and second["rates_fresh"]
    assert second["rings"]["md"]["rate"] == 500.0 and second["rings"]["book"]["rate"] == 0.0
    assert second["rings"]["md"]["lag"] == 350  # nobody consumes it here
    again = snapshot(stand_in, second, now=10.6)  # too soon for a rate of its own: the last one stands
    assert again["rings"]["md"]["rate"] == 500.0 and not again["rates_fresh"]
    assert "over the last 0.5 s" in render(second)
    json.dumps(second)  # what the control socket sends


def test_each_books_state_is_its_latest_record_and_a_resync_request_shows(stand_in):
    from core import records

    ids = stand_in.cfg.symbol_ids()
    btc, eth = ids["BTCUSDT"], ids["ETHUSDT"]
    recs = np.zeros(4, records.BOOK_EVENT)
    recs["symbol"] = [btc, eth, btc, eth]
    recs["kind"] = [records.BK_TOP, records.BK_TOP, records.BK_TRADE, records.BK_TOP]
    recs["state"] = [records.BOOK_VALID, records.BOOK_VALID, records.BOOK_VALID, records.BOOK_INVALID]
    recs["last_update_id"] = [11, 21, 12, 22]
    recs["pub_ns"] = time.monotonic_ns()
    recs["top_bid_px"][0], recs["top_ask_px"][0] = 6_500_001_000_000, 6_500_002_000_000
    stand_in.rings["book"].publish_batch(recs)
    s = snapshot(stand_in)
    b = s["books"]["symbols"]
    assert (b["BTCUSDT"]["state"], b["BTCUSDT"]["update_id"]) == ("valid", 12)
    assert (b["BTCUSDT"]["bid"], b["BTCUSDT"]["ask"]) == ("65000.01", "65000.02")  # from its latest top
    assert (b["ETHUSDT"]["state"], b["ETHUSDT"]["update_id"]) == ("invalid", 22)
    assert 0 <= b["BTCUSDT"]["age_ms"] < 10_000
    stand_in.resync_seen[eth] = time.monotonic()  # the book asked the feed for a snapshot
    s2 = snapshot(stand_in, s)
    assert s2["books"]["symbols"]["ETHUSDT"]["state"] == "resyncing"
    assert (s2["books"]["valid"], s2["books"]["total"]) == (1, 2)
    text = render(s2)
    assert row(text, "ETHUSDT").split()[1] == "RESYNCING" and row(text, "BTCUSDT").split()[1] == "valid"


# ---------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------


class StuckTerminal:
    """A terminal that stops reading (a paused ssh session): ``write`` blocks until released."""

    def __init__(self):
        self.release = threading.Event()
        self.frames: list[str] = []

    def write(self, text: str) -> None:
        self.release.wait(10)
        self.frames.append(text)

    def flush(self) -> None:
        pass


def test_a_terminal_that_does_not_read_never_holds_up_the_watch_loop():
    out = StuckTerminal()
    table = StatusTable(out, tty=True)
    t0 = time.monotonic()
    for i in range(50):
        table._post(table.frame(f"frame {i}"))
    assert time.monotonic() - t0 < 0.5  # the writer thread is stuck on the first frame; posting goes on
    out.release.set()
    st = table.close(timeout_s=5)
    assert st["frames"] == 50 and st["skipped"] >= 48  # only the newest frame waits; the others are replaced
    assert out.frames[-1] == "\x1b[Hframe 49\x1b[K\n\x1b[J"


def test_on_a_small_terminal_the_frame_is_clipped_to_its_size_not_wrapped():
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 10, 40, 0, 0))  # 10 rows, 40 columns
        with os.fdopen(os.dup(slave), "w") as term:
            frame = StatusTable(term, tty=True).frame(render(hand_snapshot()))
    finally:
        os.close(master)
        os.close(slave)
    lines = ANSI.sub("", frame).split("\n")[:-1]
    assert len(lines) == 9 and max(map(len, lines)) == 40  # the last row stays free: the screen never scrolls


def test_where_the_table_goes_depends_on_the_terminal_and_the_settings():
    from processes.supervisor.cli import _status_table

    def cfg(mode):
        return SimpleNamespace(supervisor=SimpleNamespace(status_table=mode))

    tty = SimpleNamespace(isatty=lambda: True)
    pipe = SimpleNamespace(isatty=lambda: False)
    assert _status_table(cfg("auto"), False, pipe) is None  # JSON lines on stdout, as always
    assert _status_table(cfg("auto"), True, tty) is None  # --no-status
    assert _status_table(cfg("off"), False, tty) is None
    assert _status_table(cfg("auto"), False, tty).tty
    table = _status_table(cfg("on"), False, pipe)
    assert table is not None and not table.tty and table.frame("a\nb") == "a\nb\n\n"  # plain frames, no escapes


# ---------------------------------------------------------------------------
# A real run under a pseudo-terminal
# ---------------------------------------------------------------------------


def test_a_run_on_a_terminal_redraws_the_table_in_place_and_logs_to_stderr(tmp_path):
    inst = f"sv-{uuid.uuid4().hex[:10]}"
    cfg = small_config(inst, **{"metrics.enabled": False, "supervisor.spare_worker": False,
                                "supervisor.control_socket": str(tmp_path / "ctl.sock")})
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-m", "core.numba_cache", "--warm", str(cfg_path)], cwd=ROOT, check=True,
                   timeout=600, stdout=subprocess.DEVNULL)
    master, slave = pty.openpty()
    stderr = open(tmp_path / "stderr.log", "w")  # noqa: SIM115 - closed below
    p = subprocess.Popen([sys.executable, "-m", "processes.supervisor", "--config", str(cfg_path), "--duration", "8",
                          "--summary-json", str(tmp_path / "summary.json")], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=stderr, start_new_session=True)
    os.close(slave)
    out = bytearray()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            out += chunk
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait(10)
        os.close(master)
        stderr.close()
        for seg in list_segments(inst):
            os.unlink(os.path.join("/dev/shm", seg))
    text = out.decode().replace("\r\n", "\n")
    summary = json.loads((tmp_path / "summary.json").read_text())
    frames = [f.split("\x1b[J")[0] for f in text.split("\x1b[H")[1:]]
    assert 2 <= len(frames) <= 2 * summary["flow_s"] + 2, f"{len(frames)} frames in {summary['flow_s']} s"
    last = ANSI.sub("", frames[-1])
    assert all(len(line) <= WIDTH for line in last.splitlines())
    for first in ("md", "book", "signals", "orders", "reports", "BTCUSDT", "ETHUSDT", "feed", "engine"):
        row(last, first)
    assert re.search(r"^md->book\s+\d+", last, re.M) and "end_to_end" in last
    assert "trading ACTIVE" in last
    # nothing but frames and, after the last one, the text summary: no JSON line on the terminal
    assert not [line for line in ANSI.sub("", text).splitlines() if line.lstrip().startswith("{")]
    assert "== ringtrader summary" in text.rsplit("\x1b[J", 1)[1]
    logged = [json.loads(line) for line in (tmp_path / "stderr.log").read_text().splitlines()]
    assert any(ev["msg"] == "all processes ready" for ev in logged)
    cost = next(ev for ev in logged if ev["msg"].startswith("status table:"))["status_table"]
    assert cost["written"] == len(frames) and cost["errors"] == 0

"""A process killed in mid-trading: positions and open orders come back from the journal and the venue.

Real supervisor runs in sim mode against the local simulator (real sockets on 127.0.0.1), trading with the
``every_n`` strategy (a BUY, then a CLOSE, every few top-of-book changes). A worker is killed with SIGKILL
while orders flow; the run goes on and stops cleanly. Then:

* the restarted risk stage rebuilt its positions: its final positions equal the journal's (this epoch);
* the journal's positions equal the change of the simulator account's balances (execution checks this at
  shutdown: ``position_mismatches`` 0);
* no client order id was used twice, nothing unsettled is left;
* the restarted risk went REDUCE_ONLY, asked execution to reconcile, and came back ACTIVE when it had.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import time
from decimal import Decimal
from pathlib import Path

import pytest

from processes.journal import Journal

from test_supervisor import Run, msg, split_placement

ROOT = Path(__file__).resolve().parents[2]
BASE = json.loads((ROOT / "config" / "system.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trading_config(instance: str, journal_dir: Path, placement: dict | None = None, every: int = 4) -> dict:
    d = copy.deepcopy(BASE)
    port = _free_port()
    d["instance"] = instance
    d["market_data"]["ws_url"] = f"ws://127.0.0.1:{port}"
    d["market_data"]["rest_url"] = f"http://127.0.0.1:{port}"
    d["simulator"]["port"] = port
    d["metrics"]["port"] = 0
    d["execution"]["journal_dir"] = str(journal_dir)
    d["signal"]["strategies"] = [
        {"name": "ticker", "type": "every_n", "symbols": ["BTCUSDT"], "qty": "0.001", "params": {"every": every}},
        {"name": "latency_probe", "type": "trace_probe"},
    ]
    d["risk"].update({"max_orders_per_s": 20, "max_open_orders": 8, "max_daily_loss": "1000"})
    d["supervisor"].update({"ready_timeout_s": 240, "backoff_initial_ms": 50})
    if placement is not None:
        d["placement"] = {**placement, "simulator": d["placement"]["simulator"]}
    return d


@pytest.mark.parametrize("victim", ["engine", "risk"])
def test_a_killed_worker_rebuilds_positions_from_the_journal_and_matches_the_venue(tmp_path, instance, victim):
    placement = split_placement() if victim == "risk" else None
    jdir = tmp_path / "journal"
    run = Run(tmp_path, trading_config(instance, jdir, placement), "--duration", "30")
    try:
        run.wait_event(msg("all processes ready"), 240)
        ready = run.wait_event(msg(f"{victim} ready"), 10)
        # wait until it has traded, then kill it in mid-flow
        run.wait_event(lambda e: e.get("msg") == "event reconciled", 30)
        time.sleep(4.0)
        os.kill(ready["pid"], signal.SIGKILL)
        again = run.wait_event(lambda e: e.get("msg") == f"{victim} ready" and e.get("incarnation", 0) > 1, 60)
        assert again["pid"] != ready["pid"]
        rebuilt = run.wait_event(lambda e: str(e.get("msg", "")).startswith("risk restarted with"), 30)
        assert rebuilt.get("fills", 0) > 0  # it had traded before the kill and rebuilt from the journal
        run.wait_event(lambda e: e.get("msg") == "execution reconciled the venue: state ACTIVE", 30)
        assert run.wait(120) == 0
    finally:
        run.kill_group()
        (tmp_path / "run.log").write_text("".join(run.lines))  # kept by pytest for a failure's post-mortem
    s = run.summary()
    ex = s["execution"]
    assert ex["duplicate_client_ids"] == 0
    assert ex["positions_checked"] is True and ex["position_mismatches"] == 0, ex
    assert ex["fills"] > 0
    risk = s["stages"]["risk"]["counters"]
    assert risk["state"] == 0  # ACTIVE again
    assert risk["approved"] > 0  # it traded after the restart
    with Journal(jdir / f"{instance}.sqlite", create=False) as j:
        pos = j.positions("fifo", epoch=True)
        assert j.duplicate_client_ids() == 0
        assert j.integrity_check() == "ok"
        assert j.epoch()["baseline"] is not None
        left = [o for o in j.open_orders() if o["state"] in ("INTENT", "SENT")]
    journal_btc = pos["BTCUSDT"]["position"] if "BTCUSDT" in pos else Decimal(0)
    assert Decimal(risk.get("position.BTCUSDT", 0)) / 10**8 == journal_btc
    assert left == []  # nothing the journal believes in flight without a venue answer

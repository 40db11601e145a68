"""Config loading: typed objects from the shipped files; every kind of bad config -> exit 2 naming the key."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_config, load_secrets, parse_config
from core.errors import ConfigError
from core.records import FIXED_SCALE

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = ROOT / "config" / "system.json"
DEDICATED = ROOT / "config" / "dedicated-host.json"


def base() -> dict:
    return json.loads(SYSTEM.read_text())


def test_system_json_loads_into_typed_frozen_objects():
    cfg = load_config(SYSTEM, env={})
    assert cfg.mode == "sim"
    assert cfg.instruments[0].symbol == "BTCUSDT" and cfg.instruments[0].id == 0
    assert cfg.instruments[0].tick_size == FIXED_SCALE // 100  # "0.01" exactly
    assert cfg.risk.max_position_size == FIXED_SCALE // 100  # "0.01"
    assert cfg.rings["orders"].policy == "block" and cfg.rings["md"].capacity == 65536
    assert set(cfg.placement["feed"].cpus) <= set(os.sched_getaffinity(0))
    assert cfg.placement["feed"].idle.strategy == "backoff"
    assert cfg.metrics.host == "127.0.0.1"
    assert cfg.supervisor.spare_worker is True  # a warm spare process by default
    assert cfg.book.bar_intervals_ms == (1000, 60000) and cfg.book.levels_capacity >= 5000  # no book section: defaults
    with pytest.raises(AttributeError):
        cfg.mode = "live"  # frozen


def test_dedicated_host_json_is_valid_apart_from_this_hosts_cpus():
    cfg = load_config(DEDICATED, env={}, host_cpus=None)
    hot = ("feed", "book", "signal", "risk", "execution")
    assert all(cfg.process_of(n).stages == (n,) for n in hot)  # one process per stage
    assert all(cfg.process_of(n).idle.strategy == "busy_spin" for n in hot)
    cores = [cfg.process_of(n).cpus for n in hot]
    assert all(len(c) == 1 for c in cores) and len({c[0] for c in cores}) == len(hot)  # one core each


def test_small_host_placement_runs_the_feed_alone_and_the_other_stages_in_one_engine():
    cfg = load_config(SYSTEM, env={}, host_cpus=None)
    assert {n: p.stages for n, p in cfg.placement.items() if p.stages} == {
        "feed": ("feed",), "engine": ("book", "signal", "risk", "execution")}
    assert cfg.process_of("risk").name == "engine" and cfg.simulator_enabled


def test_topology_derives_the_shutdown_order_event_routes_and_hops():
    from core.topology import HOPS, event_route, process_rings, shutdown_plan

    cfg = load_config(SYSTEM, env={}, host_cpus=None)
    assert shutdown_plan(cfg) == [("feed", ()), ("engine", ("md",)), ("simulator", ())]
    pr = process_rings(cfg, "engine")
    assert pr.external == ("md",) and set(pr.internal) == {"book", "signals", "orders", "reports"}
    assert (event_route(cfg, "resync"), event_route(cfg, "halt"), event_route(cfg, "cancel_all")) == (
        "feed", "engine", "engine")
    assert HOPS[0] == "feed" and HOPS[-1] == "end_to_end" and "signals->risk" in HOPS and "reports->risk" in HOPS
    ded = load_config(DEDICATED, env={}, host_cpus=None)
    plan = shutdown_plan(ded)
    assert [n for n, _ in plan] == ["feed", "book", "signal", "risk", "execution", "simulator"]
    assert dict(plan)["risk"] == ("book", "signals", "reports") and dict(plan)["execution"] == ("book", "orders")
    assert event_route(ded, "cancel_all") == "execution"


def test_stages_of_a_process_run_in_pipeline_order_whatever_the_file_says():
    data = base()
    data["placement"]["engine"]["stages"] = ["execution", "book", "risk", "signal"]
    assert parse_config(data).placement["engine"].stages == ("book", "signal", "risk", "execution")


def test_env_override_changes_a_key_and_its_error_names_the_variable():
    cfg = load_config(SYSTEM, env={"RINGTRADER__RISK__MAX_POSITION_SIZE": "0.5", "RINGTRADER__MODE": "paper",
                                   "RINGTRADER__PLACEMENT__FEED__CPUS": "[0]"})
    assert cfg.risk.max_position_size == FIXED_SCALE // 2
    assert cfg.mode == "paper" and cfg.placement["feed"].cpus == (0,)
    with pytest.raises(ConfigError) as err:
        load_config(SYSTEM, env={"RINGTRADER__RISK__MAX_POSITION_SIZE": "-1"})
    assert str(err.value) == "risk.max_position_size (from $RINGTRADER__RISK__MAX_POSITION_SIZE) must be > 0, got -1"


def test_secrets_come_only_from_the_environment():
    data = base()
    data["execution"]["api_key"] = "abc"
    with pytest.raises(ConfigError, match=r"execution\.api_key must not be in a config file"):
        parse_config(data)
    cfg = load_config(SYSTEM, env={"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})
    secrets = load_secrets(cfg, {"BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s"})
    assert secrets.present and "k" not in repr(secrets) and "s'" not in repr(secrets)
    with pytest.raises(ConfigError, match="BINANCE_API_KEY"):
        load_config(SYSTEM, env={"RINGTRADER__MODE": "live"})  # live without keys refuses to start


def test_comment_keys_are_ignored_but_other_unknown_keys_are_not():
    data = base()
    data["risk"]["_comment_limits"] = "why these limits"
    parse_config(data)
    data["risk"]["_note"] = "x"
    with pytest.raises(ConfigError, match=r"^risk\._note is not a known key"):
        parse_config(data)


def _set(path: str, value):
    def edit(d):
        node = d
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
        return d
    return edit


# (case, edit of system.json or raw file text, text the message must contain)
BAD = [
    ("unknown key", _set("risk.max_positon_size", "1"), "risk.max_positon_size is not a known key"),
    ("wrong type", _set("rings.md.capacity", "big"), "rings.md.capacity must be an integer, got string"),
    ("negative limit", _set("risk.max_position_size", -1), "risk.max_position_size must be > 0, got -1"),
    ("unknown mode", _set("mode", "yolo"), "mode must be one of sim, paper, live, got \"yolo\""),
    ("bad cpu id", _set("placement.engine.cpus", [0, 4096]), "placement.engine.cpus[1] CPU 4096 is not available"),
    ("feed shares a process", _set("placement.feed.stages", ["feed", "book"]), "stage feed runs its own event loop"),
    ("stage in two processes", _set("placement.feed.stages", ["book"]), "stage book is already placed in process"),
    ("stage not placed", _set("placement.engine.stages", ["book", "signal", "risk"]), "places no process for stage(s) execution"),
    ("unknown stage", _set("placement.engine.stages", ["book", "signals"]), "placement.engine.stages[1] must be one of"),
    ("unknown idle", _set("placement.engine.idle", {"strategy": "nap"}), "placement.engine.idle.strategy must be one of"),
    ("old processes section", _set("processes", {}), "processes was replaced by \"placement\""),
    ("stage module of another process", _set("placement.engine.modules", {"feed": "x"}), "placement.engine.modules.feed is not a stage of this process"),
    ("overwrite order ring", _set("rings.orders.policy", "overwrite"), "rings.orders.policy must be block"),
    ("capacity not power of two", _set("rings.book.capacity", 1000), "rings.book.capacity must be a power of two"),
    ("recording rotation", _set("market_data.recording_rotate_mb", 0), "market_data.recording_rotate_mb must be > 0"),
    ("book bar interval", _set("book", {"bar_intervals_ms": [1000, 1500]}), "book.bar_intervals_ms[1] must be a whole number of seconds"),
    ("book levels", _set("book", {"levels_capacity": 100}), "book.levels_capacity must be >= 5000, got 100"),
    ("book unknown key", _set("book", {"watermark": 5}), "book.watermark is not a known key"),
    ("spare flag", _set("supervisor.spare_worker", "yes"), "supervisor.spare_worker must be true or false, got string \"yes\""),
    ("status table", _set("supervisor.status_table", "always"), "supervisor.status_table must be one of auto, on, off"),
    ("duplicate symbol", _set("instruments", [{"symbol": "BTCUSDT", "tick_size": "0.01", "lot_size": "0.00001",
                                                "min_notional": "5"}] * 2), "duplicate"),
    ("no instruments", _set("instruments", []), "instruments"),
    ("bad symbol", _set("instruments.0.symbol", "btc/usdt"), "instruments[0].symbol"),
    ("bad instance", _set("instance", "has space"), "instance"),
    ("unknown section", _set("strategy", {}), "strategy is not a known key"),
    ("unknown source", _set("market_data.source", "ftp"), "market_data.source must be one of"),
    ("transport", _set("execution.transport", "carrier-pigeon"), "execution.transport must be one of"),
    ("shutdown policy", _set("execution.on_shutdown", "panic"), "execution.on_shutdown must be one of"),
    ("recv window", _set("execution.recv_window_ms", 70000), "execution.recv_window_ms"),
    ("sizing mode", _set("risk.sizing", {"mode": "yolo"}), "risk.sizing.mode must be one of"),
    ("pnl method", _set("risk.pnl_method", "hifo"), "risk.pnl_method"),
    ("metrics port", _set("metrics.port", 70000), "metrics.port"),
    ("empty cpu set", _set("placement.engine.cpus", []), "placement.engine.cpus must be a non-empty array"),
    ("negative cpu", _set("placement.engine.cpus", [-1]), "placement.engine.cpus[0]"),
    ("idle sleeps", _set("placement.engine.idle", {"strategy": "backoff", "min_sleep_us": 500, "max_sleep_us": 10}),
     "placement.engine.idle"),
    ("env key name", _set("execution.api_key_env", "not a var"), "execution.api_key_env"),
    ("live without keys", _set("mode", "live"), "mode live needs $BINANCE_API_KEY"),
    ("open orders zero", _set("risk.max_open_orders", 0), "risk.max_open_orders"),
    ("missing file", None, "config file not found"),
    ("invalid json", "{\"mode\": \"sim\",, }", "is not valid JSON"),
]


@pytest.mark.parametrize("case,edit,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_rejected_naming_the_key(tmp_path, case, edit, expect):
    path = tmp_path / "bad.json"
    if callable(edit):
        path.write_text(json.dumps(edit(copy.deepcopy(base()))))
    elif isinstance(edit, str):
        path.write_text(edit)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert expect in str(err.value)


def test_supervisor_exits_2_with_the_message_for_every_bad_config(tmp_path):
    """The real entry point, every case (six at a time: each is a fresh interpreter)."""
    procs = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGTRADER__", "BINANCE_"))}
    for i, (case, edit, expect) in enumerate(BAD):
        path = tmp_path / f"bad{i}.json"
        if callable(edit):
            path.write_text(json.dumps(edit(copy.deepcopy(base()))))
        elif isinstance(edit, str):
            path.write_text(edit)
        procs.append((case, expect, [sys.executable, "-m", "processes.supervisor", "--config", str(path)]))
    running = []

    def finish(case, expect, p):
        out, err = p.communicate(timeout=180)
        assert p.returncode == 2, f"{case}: exit {p.returncode}\n{out}\n{err}"
        assert expect in err, f"{case}: {err!r}"
        line = json.loads(out.splitlines()[-1])
        assert line["level"] == "ERROR" and expect in line["msg"] and line["proc"] == "supervisor"

    try:
        for case, expect, cmd in procs:  # a few at a time: each is a fresh interpreter importing numpy and numba
            if len(running) >= 6:
                finish(*running.pop(0))
            running.append((case, expect, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                           stderr=subprocess.PIPE, text=True)))
        while running:
            finish(*running.pop(0))
    finally:
        for _c, _e, p in running:
            p.kill()
            p.communicate()


def test_supervisor_exits_2_for_a_bad_strategy_or_model(tmp_path):
    """Strategies, model files and their feature contract are checked before anything starts."""
    import pickle

    import numpy as np

    from core.features import FEATURE_NAMES, FEATURE_VERSION
    from core.models import save_linear_npz

    swapped = list(FEATURE_NAMES)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    save_linear_npz(tmp_path / "swapped.npz", np.zeros(len(swapped)), 0.0, "logistic", swapped, FEATURE_VERSION)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({"not": "a model"}))
    (tmp_path / "m.json").write_text(json.dumps({"feature_names": list(FEATURE_NAMES),
                                                 "feature_version": FEATURE_VERSION}))
    ml = {"name": "m", "type": "ml", "qty": "0.001"}
    cases = [
        ("missing model file", [{**ml, "model": str(tmp_path / "nope.txt")}], "nope.txt"),
        ("pickle without opt-in", [{**ml, "model": str(tmp_path / "m.pkl")}], "allow_pickle"),
        ("feature mismatch", [{**ml, "model": str(tmp_path / "swapped.npz")}], FEATURE_NAMES[2]),
        ("unknown strategy type", [{"name": "x", "type": "martingale", "qty": "1"}], "signal.strategies[0].type"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGTRADER__")}
    procs = []
    for i, (case, strategies, expect) in enumerate(cases):
        d = copy.deepcopy(base())
        d["signal"]["strategies"] = strategies
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(d))
        procs.append((case, expect, subprocess.Popen(
            [sys.executable, "-m", "processes.supervisor", "--config", str(path)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for case, expect, p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, f"{case}: exit {p.returncode}\n{out}\n{err}"
        assert expect in err, f"{case}: {err!r}"
        assert "Traceback" not in err, case


def test_placements_are_checked_against_the_online_cpus_not_this_processs_affinity():
    """isolcpus cores and a systemd unit's CPUAffinity= leave this process's affinity, not the host."""
    from core.config import online_cpus

    assert set(os.sched_getaffinity(0)) <= online_cpus()

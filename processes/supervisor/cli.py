"""``python -m processes.supervisor --config PATH [--duration S] [--summary-json PATH] [--log-file PATH]``
``[--no-status]``.

On a terminal the supervisor draws the live status table on stdout (``statusview.py``) and the JSON log goes to
the log file when one is configured, else to stderr; off a terminal stdout carries the JSON log as always.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from core import numba_cache

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _validate_simulator(cfg) -> None:
    """The simulator owns its section: have it validate the keys before anything starts (sim mode only)."""
    if not cfg.simulator_enabled:
        return
    try:
        from processes.simulator.config import SimulatorConfig
    except ImportError:
        return  # no simulator in this tree: the supervisor warns and runs without it
    SimulatorConfig.from_dict(cfg.simulator, "simulator")


def _sim_keys(cfg, environ=None) -> list[str]:
    """Sim mode: give every HMAC simulator account whose two variables are unset a random pair for this run.

    The pair goes into this process's environment before anything is spawned,
    so the simulator and the stage processes inherit the same one (execution
    signs with it). Nothing is logged but the variable names, and nothing is
    persisted: the simulator keeps its accounts in memory. One variable set
    without the other is a config error (exit 2) rather than a guess; an
    Ed25519 account needs its public key provided (the simulator refuses to
    start without it). Returns the variables it set.
    """
    import secrets

    from core.errors import ConfigError

    env = os.environ if environ is None else environ
    if not cfg.simulator_enabled:
        return []
    raw = cfg.simulator.get("accounts") if isinstance(cfg.simulator, dict) else None
    accounts = raw if isinstance(raw, list) else [{"name": "main", "api_key_env": "BINANCE_SIM_API_KEY",
                                                   "api_secret_env": "BINANCE_SIM_API_SECRET"}]
    made = []
    for i, acc in enumerate(accounts):
        if not isinstance(acc, dict) or acc.get("key_type", "hmac") != "hmac":
            continue
        k_env = acc.get("api_key_env", "BINANCE_SIM_API_KEY")
        s_env = acc.get("api_secret_env", "BINANCE_SIM_API_SECRET")
        if not isinstance(k_env, str) or not isinstance(s_env, str):
            continue  # the simulator's own validation names it
        have_k, have_s = bool(env.get(k_env)), bool(env.get(s_env))
        if have_k and have_s:
            continue
        if have_k != have_s:
            missing = s_env if have_k else k_env
            raise ConfigError(f"simulator.accounts[{i}]", f"{k_env if have_k else s_env} is set but {missing} is "
                                                          "not: set both, or neither for a generated pair")
        env[k_env] = secrets.token_hex(32)
        env[s_env] = secrets.token_hex(32)
        made += [k_env, s_env]
    return made


def _validate_signal(cfg) -> None:
    """Strategies, feature parameters and the model file (with its feature contract) before anything starts."""
    from processes.signal import validate

    validate(cfg)


def _status_table(cfg, no_status: bool, stdout):
    """The live status table when it is wanted on ``stdout`` (``supervisor.status_table``, ``--no-status``)."""
    from processes.supervisor.statusview import StatusTable

    try:
        tty = stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        tty = False
    mode = "off" if no_status else cfg.supervisor.status_table
    if mode == "off" or (mode == "auto" and not tty):
        return None
    return StatusTable(stdout, tty=tty)


def main(argv=None) -> int:
    numba_cache.configure()  # before anything imports numba (the workers inherit it)
    from core.config import load_config
    from core.errors import ConfigError
    from processes.supervisor.logsink import LogSink, SinkHandler
    from processes.supervisor.summary import format_summary
    from processes.supervisor.supervisor import EXIT_CONFIG, Supervisor

    ap = argparse.ArgumentParser(prog="python -m processes.supervisor",
                                 description="Run ringtrader: rings, processes, watch, orderly stop.")
    ap.add_argument("--config", default=str(PROJECT_ROOT / "config" / "system.json"))
    ap.add_argument("--duration", type=float, default=None, help="run this many seconds, then shut down in order")
    ap.add_argument("--summary-json", default=None, help="also write the exit summary as JSON here")
    ap.add_argument("--log-file", default=None, help="also append the JSON log stream here (overrides logging.file)")
    ap.add_argument("--quiet-summary", action="store_true", help="do not print the text summary")
    ap.add_argument("--no-status", action="store_true",
                    help="no live status table on a terminal: JSON log lines on stdout, as when stdout is not a "
                         "terminal (supervisor.status_table: \"off\")")
    args = ap.parse_args(argv)

    sink = LogSink(stdout=True, path=args.log_file)
    root = logging.getLogger()
    root.handlers[:] = [SinkHandler(sink)]
    root.setLevel(logging.INFO)
    log = logging.getLogger("ringtrader.supervisor")
    try:
        cfg = load_config(args.config)
        generated = _sim_keys(cfg)
        _validate_simulator(cfg)
        _validate_signal(cfg)
    except ConfigError as exc:
        log.error("config error: %s", exc, extra={"config": args.config, "key": exc.path})
        sys.stderr.write(f"config error: {exc}\n")
        return EXIT_CONFIG
    root.setLevel(cfg.logging.level)
    log_file = args.log_file or cfg.logging.file
    table = _status_table(cfg, args.no_status, sys.stdout)
    if table is not None:
        # the table holds stdout: the JSON log goes to the log file when there is one, else to stderr
        sink.close()
        sink = LogSink(stdout=cfg.logging.stdout and not log_file, path=log_file, stream=sys.stderr)
        root.handlers[:] = [SinkHandler(sink)]
    elif not cfg.logging.stdout or (cfg.logging.file and not args.log_file):
        sink.close()
        sink = LogSink(stdout=cfg.logging.stdout, path=log_file)
        root.handlers[:] = [SinkHandler(sink)]
    log.info("starting", extra={"config": cfg.source_path, "instance": cfg.instance, "mode": cfg.mode,
                                "pid": os.getpid(), "placement": {n: list(p.stages) for n, p in cfg.placement.items()
                                                                  if p.stages}})
    if generated:
        log.info("generated a simulator key pair for this run", extra={"variables": generated})
    if table is not None:
        table.prepare()
        log.info("live status table on stdout; the JSON log goes to %s",
                 log_file or ("stderr" if cfg.logging.stdout else "nowhere (logging.stdout is false)"),
                 extra={"status_table": "terminal" if table.tty else "frames", "log_file": log_file})
    sup = Supervisor(cfg, sink, status=table)
    code = sup.run(args.duration)
    summary = sup.final
    log.info("summary", extra={"summary": summary})
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    if not args.quiet_summary:
        sys.stdout.write(format_summary(summary) + "\n")
        sys.stdout.flush()
    sink.close()
    return code

"""``python -m processes.supervisor --config PATH [--duration S] [--summary-json PATH] [--log-file PATH]``."""

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


def _validate_signal(cfg) -> None:
    """Strategies, feature parameters and the model file (with its feature contract) before anything starts."""
    from processes.signal import validate

    validate(cfg)


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
    args = ap.parse_args(argv)

    sink = LogSink(stdout=True, path=args.log_file)
    root = logging.getLogger()
    root.handlers[:] = [SinkHandler(sink)]
    root.setLevel(logging.INFO)
    log = logging.getLogger("ringtrader.supervisor")
    try:
        cfg = load_config(args.config)
        _validate_simulator(cfg)
        _validate_signal(cfg)
    except ConfigError as exc:
        log.error("config error: %s", exc, extra={"config": args.config, "key": exc.path})
        sys.stderr.write(f"config error: {exc}\n")
        return EXIT_CONFIG
    root.setLevel(cfg.logging.level)
    if not cfg.logging.stdout or (cfg.logging.file and not args.log_file):
        sink.close()
        sink = LogSink(stdout=cfg.logging.stdout, path=args.log_file or cfg.logging.file)
        root.handlers[:] = [SinkHandler(sink)]
    log.info("starting", extra={"config": cfg.source_path, "instance": cfg.instance, "mode": cfg.mode,
                                "pid": os.getpid(), "placement": {n: list(p.stages) for n, p in cfg.placement.items()
                                                                  if p.stages}})
    sup = Supervisor(cfg, sink)
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

"""Standalone simulator: ``python -m processes.simulator --config PATH [--port N] [--replay P ...] [--speed X]``.

Reads the ``simulator`` and ``instruments`` sections of a full system config
(JSON). Without --config the offline defaults apply (127.0.0.1:9010,
BTCUSDT and ETHUSDT, seed 42, 2000 events/s). Exit code 2 on bad config,
including a configured account whose key variables are not set (the
default account's ``BINANCE_SIM_API_KEY``/``_SECRET`` may be unset: the
order endpoints then answer -2015).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

import orjson

from core.errors import ConfigError
from processes.simulator.config import SimulatorConfig, resolve_symbols
from processes.simulator.server import serve

log = logging.getLogger("ringtrader.simulator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m processes.simulator", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="system config JSON (uses its simulator and instruments sections)")
    p.add_argument("--port", type=int, help="override simulator.port (0 = ephemeral)")
    p.add_argument("--host", help="override simulator.host")
    p.add_argument("--replay", nargs="+", metavar="PATH", help="replay these recordings instead of generating")
    p.add_argument("--speed", type=float, help="replay speed: 1 = recorded, 0 = as fast as possible")
    p.add_argument("--rate", type=float, help="override simulator.rate (events/s)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def load(args: argparse.Namespace):
    raw: dict = {}
    if args.config:
        try:
            raw = orjson.loads(Path(args.config).read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"file not found: {args.config}") from exc
        except orjson.JSONDecodeError as exc:
            raise ConfigError("--config", f"invalid JSON in {args.config}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError("", "the config file must hold a JSON object")
    section = dict(raw.get("simulator") or {})
    for key, value in (("port", args.port), ("host", args.host), ("replay", args.replay),
                       ("replay_speed", args.speed), ("rate", args.rate)):  # fmt: skip
        if value is not None:
            section[key] = value
    cfg = SimulatorConfig.from_dict(section, "simulator")
    instruments = raw.get("instruments")
    if isinstance(instruments, dict) and "symbols" in instruments:
        instruments = instruments["symbols"]
    return cfg, resolve_symbols(instruments, cfg)


async def _amain(cfg: SimulatorConfig, specs) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(sim) -> None:
        log.info("ready: REST %s, streams %s/ws/<stream> and %s/stream?streams=...", sim.base_url, sim.ws_url, sim.ws_url)

    await serve(cfg, specs, ready_cb=ready, stop_event=stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, specs = load(args)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    log.info("config: %s", {k: v for k, v in dataclasses.asdict(cfg).items() if k != "symbols"})
    try:
        try:
            import uvloop

            uvloop.run(_amain(cfg, specs))
        except ImportError:
            asyncio.run(_amain(cfg, specs))
    except ConfigError as exc:  # e.g. an account's key variable unset: found when the simulator is built
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

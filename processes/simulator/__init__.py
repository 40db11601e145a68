"""Local Binance Spot exchange simulator (market streams, public REST, faults, replay).

Standalone: ``python -m processes.simulator --config config/system.json``.
Supervisor worker: ``run(config, ctx)``. In-process (tests): ``serve()`` or
``async with Simulator(cfg, specs) as sim: ... sim.port``.
"""

from __future__ import annotations

from processes.simulator.config import DEFAULT_PORT, FaultConfig, SimulatorConfig, SymbolSpec, resolve_symbols
from processes.simulator.server import Simulator, serve
from processes.simulator.worker import run

__all__ = [
    "DEFAULT_PORT",
    "FaultConfig",
    "SimulatorConfig",
    "Simulator",
    "SymbolSpec",
    "resolve_symbols",
    "run",
    "serve",
]

"""Supervisor entry: ``run(config, ctx)`` runs the simulator as the ``simulator`` worker.

The adapter is deliberately tolerant of the system config's shape: the
``simulator`` section may be a ``SimulatorConfig`` already, a raw dict, or
missing; instruments may be strings, dicts or objects with ``symbol``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from processes.simulator.config import SimulatorConfig, resolve_symbols

HEARTBEAT_S = 1.0
STOP_POLL_S = 0.1


def sim_config_of(config: Any) -> SimulatorConfig:
    """The simulator section of a system config object or dict."""
    section = config.get("simulator") if isinstance(config, Mapping) else getattr(config, "simulator", None)
    if isinstance(section, SimulatorConfig):
        return section
    if section is None or isinstance(section, Mapping):
        return SimulatorConfig.from_dict(section or {}, "simulator")
    if hasattr(section, "__dataclass_fields__"):  # another typed wrapper: use its fields
        import dataclasses

        return SimulatorConfig.from_dict(
            {k: v for k, v in dataclasses.asdict(section).items() if v is not None}, "simulator"
        )
    raise TypeError(f"config.simulator has an unexpected type: {type(section).__name__}")


def instruments_of(config: Any) -> Any:
    inst = config.get("instruments") if isinstance(config, Mapping) else getattr(config, "instruments", None)
    if inst is not None and not isinstance(inst, (list, tuple, Mapping)):
        inst = getattr(inst, "symbols", inst)  # e.g. an Instruments object holding a list
    return inst


def run(config: Any, ctx: Any) -> None:
    """Worker entry: serve until the supervisor says stop; heartbeat with stats."""
    sim_cfg = sim_config_of(config)
    specs = resolve_symbols(instruments_of(config), sim_cfg)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is a dependency, but the simulator works without it
        runner = asyncio.run
    runner(_main(sim_cfg, specs, ctx))


async def _main(sim_cfg: SimulatorConfig, specs, ctx) -> None:
    from processes.simulator.server import serve

    stop = asyncio.Event()

    async def on_ready(sim) -> None:
        ctx.log.info("simulator ready on %s (symbols: %s)", sim.base_url, ", ".join(s.symbol for s in specs))
        ctx.event("simulator_listening", host=sim_cfg.host, port=sim.port, url=sim.base_url)
        ctx.ready()
        asyncio.get_running_loop().create_task(_watch(sim, ctx, stop))

    await serve(sim_cfg, specs, ready_cb=on_ready, stop_event=stop)


async def _watch(sim, ctx, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    last_hb = 0.0
    while not stop.is_set():
        if ctx.should_stop():
            stop.set()
            return
        now = loop.time()
        if now - last_hb >= HEARTBEAT_S:
            st = sim.stats()
            ctx.heartbeat(
                clients=st["clients"],
                frames_sent=st["frames_sent"],
                events_generated=st.get("events_generated", 0),
                rest_requests=st["rest"]["requests"],
            )
            last_hb = now
        await asyncio.sleep(STOP_POLL_S)


def warm(config: Any) -> None:
    """Load the market generator and stream-building kernels (numba disk cache) on a throwaway generator.

    ``python -m core.numba_cache --warm`` calls it (sim mode), so a first
    ``scripts/start.sh`` after the install does not compile the simulator.
    """
    from processes.simulator.market import MarketGenerator
    from processes.simulator.streams import StreamBuilder

    sim_cfg = sim_config_of(config)
    specs = resolve_symbols(instruments_of(config), sim_cfg)
    gen = MarketGenerator(specs, seed=sim_cfg.seed, rate=sim_cfg.rate, depth_levels=sim_cfg.depth_levels)
    builder = StreamBuilder(gen)
    wanted = {f"{s.symbol.lower()}@{k}" for s in specs for k in ("depth@100ms", "depth", "trade", "aggTrade",
                                                                  "bookTicker")}
    for i in range(3):
        builder.build(gen.step(i * gen.tick_ms), i * gen.tick_ms, wanted)
    from processes.simulator import orders

    orders.warm()  # the order side's matching kernels

"""Measure the simulator's throughput (a benchmark, not a test).

    python -m processes.simulator.bench [--seconds 5] [--rates 2000 50000 100000] [--json]

1. ``generate+serialise``: generator steps plus building every stream's frames
   (both symbols, all five streams), no sockets; reports the events/s one core
   sustains (simulated seconds per CPU second x configured rate).
2. ``loopback``: the real server at each rate for N seconds, one client process
   subscribed to every stream over a combined connection; reports events
   generated per second, frames the client received per second, and the
   simulator process's CPU use. A run keeps up when events/s ~ the rate and
   the lag counter stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time

STREAMS = ("depth@100ms", "depth", "trade", "aggTrade", "bookTicker")
SYMBOLS = ("BTCUSDT", "ETHUSDT")

_CLIENT = r"""
import asyncio, sys, time, aiohttp
async def main(url, seconds):
    n = 0; nbytes = 0
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url, max_msg_size=0) as ws:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    m = await ws.receive(timeout=1)
                except asyncio.TimeoutError:
                    continue
                if m.type == aiohttp.WSMsgType.TEXT:
                    n += 1; nbytes += len(m.data)
                elif m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
    print(n, nbytes)
asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def bench_generate(rate: float, sim_seconds: float = 5.0) -> dict:
    from processes.simulator.config import SimulatorConfig, resolve_symbols
    from processes.simulator.market import MarketGenerator
    from processes.simulator.streams import StreamBuilder

    cfg = SimulatorConfig.from_dict({"rate": rate})
    gen = MarketGenerator(resolve_symbols(list(SYMBOLS), cfg), seed=1, rate=rate, depth_levels=cfg.depth_levels)
    builder = StreamBuilder(gen)
    wanted = {f"{s.lower()}@{k}" for s in SYMBOLS for k in STREAMS}
    builder.build(gen.step(0), 0, wanted)  # compile / warm
    ev0 = gen.events_total
    steps = int(sim_seconds * 1000 / gen.tick_ms)
    frames = 0
    t0 = time.process_time()
    for i in range(steps):
        frames += len(builder.build(gen.step(i * gen.tick_ms), i * gen.tick_ms, wanted))
    cpu = time.process_time() - t0
    events = gen.events_total - ev0
    return {
        "mode": "generate+serialise",
        "rate": rate,
        "events": events,
        "frames": frames,
        "cpu_s": round(cpu, 3),
        "max_events_per_s": round(events / cpu) if cpu else None,
        "cpu_share_at_rate": round(cpu / sim_seconds, 3),
    }


async def _loopback(rate: float, seconds: float) -> dict:
    from processes.simulator import Simulator, SimulatorConfig, resolve_symbols

    cfg = SimulatorConfig.from_dict({"port": 0, "rate": rate})
    sim = Simulator(cfg, resolve_symbols(list(SYMBOLS), cfg))
    await sim.start()
    try:
        names = "/".join(f"{s.lower()}@{k}" for s in SYMBOLS for k in STREAMS)
        url = f"{sim.ws_url}/stream?streams={names}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENT, url, str(seconds), stdout=subprocess.PIPE
        )
        await asyncio.sleep(0.5)  # let the client connect
        ev0, cpu0, t0 = sim.source.gen.events_total, time.process_time(), time.monotonic()
        out, _ = await proc.communicate()
        dt = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        events = sim.source.gen.events_total - ev0
        frames, nbytes = (int(x) for x in out.split())
        st = sim.stats()
    finally:
        await sim.stop()
    return {
        "mode": "loopback",
        "rate": rate,
        "events_per_s": round(events / dt),
        "client_frames_per_s": round(frames / (seconds)),
        "client_mb_per_s": round(nbytes / seconds / 1e6, 2),
        "sim_cpu_share": round(cpu / dt, 3),
        "lag_resets": st["lag_resets"],
        "slow_drops": st["slow_drops"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rates", type=float, nargs="+", default=[2000, 50000, 100000])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from core.numba_cache import configure

    configure()  # the keyed numba cache, before the generator kernels load
    machine = {
        "cpu": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    results = [bench_generate(r, args.seconds) for r in args.rates]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    results += [run(_loopback(r, args.seconds)) for r in args.rates]
    if args.json:
        sys.stdout.write(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    else:
        sys.stdout.write(f"machine: {machine}\n")
        for r in results:
            sys.stdout.write("  ".join(f"{k}={v}" for k, v in r.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the simulator tests: run a coroutine, a dict-based reference book
that follows Binance's documented sync procedure, and config builders."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import aiohttp
import orjson

from processes.simulator import Simulator, SimulatorConfig, resolve_symbols


# how long a test waits for a condition before it fails: generous, because the test host is a
# loaded 2-CPU machine; tests wait for what they need to see, never for a fixed time
DEADLINE = 30.0


def arun(coro, timeout: float = 3 * DEADLINE):
    """Run one async test body with an overall timeout."""

    async def _bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(_bounded())


async def wait_until(pred, what: str, timeout: float = DEADLINE, step: float = 0.01) -> None:
    """Poll ``pred()`` until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


def make_cfg(**overrides) -> SimulatorConfig:
    d = {"port": 0, "rate": 4000, "depth_levels": 150, "seed": 7}
    d.update(overrides)
    return SimulatorConfig.from_dict(d)


def specs(cfg: SimulatorConfig, symbols=("BTCUSDT", "ETHUSDT")):
    return resolve_symbols(list(symbols), cfg)


def sim_for(**overrides) -> Simulator:
    cfg = make_cfg(**overrides)
    return Simulator(cfg, specs(cfg))


class SyncError(AssertionError):
    pass


class RefBook:
    """A slow, obviously-correct L2 book (Decimal keys) kept in sync per Binance's procedure.

    feed(diff) buffers until ``set_snapshot`` is called, then applies with the
    bridge/chain checks; a violation raises SyncError (the test fails).
    """

    def __init__(self) -> None:
        self.buffer: list[dict] = []
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.update_id: int | None = None
        self.applied = 0
        self.first_u_seen: int | None = None

    def feed(self, ev: dict) -> None:
        if self.first_u_seen is None:
            self.first_u_seen = ev["U"]
        if self.update_id is None:
            self.buffer.append(ev)
        else:
            self._apply(ev, first=False)

    def set_snapshot(self, snap: dict) -> None:
        last = snap["lastUpdateId"]
        self.bids = {Decimal(p): Decimal(q) for p, q in snap["bids"]}
        self.asks = {Decimal(p): Decimal(q) for p, q in snap["asks"]}
        self.update_id = last
        pending = [e for e in self.buffer if e["u"] > last]
        self.buffer = []
        for i, ev in enumerate(pending):
            self._apply(ev, first=(i == 0))
        self._bridged = bool(pending)

    def _apply(self, ev: dict, first: bool) -> None:
        if ev["u"] <= self.update_id:
            return  # stale
        if first or self.applied == 0:
            if not ev["U"] <= self.update_id + 1 <= ev["u"]:
                raise SyncError(f"first diff does not bridge: U={ev['U']} u={ev['u']} L={self.update_id}")
        elif ev["U"] != self.update_id + 1:
            raise SyncError(f"gap: U={ev['U']} after u={self.update_id}")
        for side, levels in ((self.bids, ev["b"]), (self.asks, ev["a"])):
            for p, q in levels:
                p, q = Decimal(p), Decimal(q)
                if q == 0:
                    side.pop(p, None)
                else:
                    side[p] = q
        self.update_id = ev["u"]
        self.applied += 1

    def top(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        bb = max(self.bids)
        ba = min(self.asks)
        return bb, self.bids[bb], ba, self.asks[ba]

    def as_snapshot(self) -> tuple[dict, dict]:
        return dict(self.bids), dict(self.asks)


def snapshot_levels(snap: dict) -> tuple[dict, dict]:
    return (
        {Decimal(p): Decimal(q) for p, q in snap["bids"]},
        {Decimal(p): Decimal(q) for p, q in snap["asks"]},
    )


async def get_json(session: aiohttp.ClientSession, url: str, **params):
    async with session.get(url, params=params) as r:
        return r.status, dict(r.headers), orjson.loads(await r.read())


async def post_json(session: aiohttp.ClientSession, url: str, body=None):
    async with session.post(url, data=orjson.dumps(body or {})) as r:
        return r.status, orjson.loads(await r.read())


async def recv_json(ws, timeout: float = DEADLINE):
    msg = await ws.receive(timeout=timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r}")
    return orjson.loads(msg.data)

"""Benchmark the execution stage's venue path against the local simulator: WebSocket API vs REST orders.

A benchmark, not a test: it reports latency and asserts nothing about speed.

What it measures
----------------
The venue half of the order path, as the execution stage runs it: a
``processes.venue_exec.VenueExecutor`` (its own uvloop thread, orders handed
over from the caller's thread with ``submit``), talking to the exchange
simulator (``python -m processes.simulator``, its own process) over loopback.
For each transport (``execution.transport``: ``ws`` = orders on the WebSocket
API session, ``rest`` = orders over keep-alive ``httpx``; the user-data
stream is the WS session's in both), in one run so the two are comparable:

* ``order_to_wire``: the order record handed to ``submit`` -> its bytes
  written to the socket (the executor's own histogram ``hists[1]``; the
  orders carry ``pub_ns`` = ``recv_ns`` = ``time.monotonic_ns()`` at
  submit). This is the venue path's share of "order record in the ring ->
  bytes on the socket": the cross-thread hand-off (``call_soon_threadsafe``),
  the task, the limiter, signing and the transport's send. The ring hop
  before it is measured by ``scripts/latency_profile.py --order-every``.
  "Bytes on the socket" is the WS frame handed to the transport, or
  httpcore's ``send_request_headers.started`` trace event for REST (the
  write begins with no loop yield before it).
* ``ack_rtt``: bytes on the socket -> the venue's answer back in the
  executor (``hists[2]``: the simulator's work, loopback both ways, the
  answer's decoding and the awaiting task resumed). The simulator sends the
  order's executionReports (NEW, TRADE) before the answer, so ``ack_rtt``
  also holds the client's handling of those; ``--breakdown``'s
  ``wire->event`` / ``wire->final`` say when the reports came.
* counts: orders, final reports (every order must end FILLED or REJECTED),
  fills (TRADE reports), rejects.
* baselines on the same transport and session, measured in the same run
  (interleaved with the orders, on the venue loop, ``--rate`` per second
  each): ``ping`` (unsigned: the transport's bare round trip plus the
  client's request machinery) and ``signed`` (``openOrders.status`` for the
  symbol: signed, answered with an empty list), each timed around the whole
  ``await api.<call>()``. Ratios ``ack_rtt / baseline`` (p50 and p99) say
  how much more an order costs the venue path than a bare request.

Phases per transport: ``--warmup`` orders (not recorded), then ``--orders``
orders paced at ``--rate`` per second, one at a time on the clock
(alternately MARKET BUY and SELL of ``--qty`` of the config's first
instrument, BTCUSDT: the simulator account's balances barely move), then ``--burst-rounds`` bursts of ``--burst`` orders
submitted back to back (queueing: the limiter's FIFO, REST's connection
pool), reported separately. ``--breakdown`` also stamps every paced order at
each step of the venue thread (submit -> ``_dispatch`` -> ``_place_once`` ->
limiter acquired -> signed -> on the wire -> answer) by wrapping those calls
from outside (a few microseconds of overhead each; off by default).

Set-up: the simulator runs with a random HMAC key pair in its environment
(``BINANCE_SIM_API_KEY``/``_SECRET``; this process sets the same pair in
its own environment for the executor), its order-rate and weight limits
lifted, ``--sim-rate`` generated market events/s (the simulator's default:
its matching shares its event loop with a live market); the system config is
``config/system.json`` with mode ``sim``, ``market_data`` URLs at the
simulator, ``execution.transport`` set and ``rate_limit_per_second`` high, so
our own pacing never waits. The simulator's config lives in a temporary
directory removed at exit; the simulator is stopped at exit (SIGTERM, then
SIGKILL); nothing is created in shared memory.

Commands::

    .venv/bin/python scripts/bench_execution.py                    # both transports, table
    .venv/bin/python scripts/bench_execution.py --json             # one JSON object
    .venv/bin/python scripts/bench_execution.py --transports ws --orders 1000 --rate 50 --breakdown
    .venv/bin/python scripts/bench_execution.py --orders 10 --rate 50 --burst 5 --burst-rounds 1 --warmup 2 --json

Caveats
-------
* A small shared host (2 CPUs): this process's two threads, the simulator's
  event loop (with its generated market) and anything else running share
  them; a percentile above ~p90 is often a scheduling delay, not the code.
  Run it twice before reading much into a difference of a few tens of us.
* The simulator is on the same host, so the "network" is loopback: the
  figures are the software's cost on both ends, not Binance's; a real venue
  adds its own wire time and matching, the same for both transports.
* Python on both ends (uvloop, picows/httpx in the client, aiohttp in the
  simulator): the simulator's per-request cost is in every round trip and
  in both baselines, which is why the ratios matter more than the absolutes.
* The transports run one after the other on one simulator (a fresh executor
  and session each), so slow drift of the host's load shows as a
  difference between them; ``--transports rest,ws`` swaps the order.
* REST's "bytes on the socket" is httpcore's ``send_request_headers.started``
  trace event: the write of the request begins right after it with no event
  loop yield in between (``.complete`` events come only after anyio's
  checkpoint that follows every write, often after the venue's answer was
  handled). The executor keeps the order's record while ``_place_once``
  runs, so a final report that arrives first no longer loses the sample;
  ``samples_missing`` should be 0 for both transports.
* Percentiles are the upper edges of log-linear buckets (``core.latency``,
  within 3.1 % above the true value); ``max`` is exact.

Seen on the 2-CPU shared development host (defaults, --breakdown; p50)
---------------------------------------------------------------------
WS: order_to_wire ~370 us, made of five steps of 40-80 us each (hand-off
to the venue loop, the task's first step, the client's call layers, the
limiter, params + HMAC, encode + send): Python run cold every 50 ms (at
400 orders/s the same steps take about half). ack_rtt ~1.1 ms against a
signed request's ~0.6 ms and a ping's ~0.37 ms; the executionReports come
~0.8-0.95 ms after the wire, before the answer. REST: ~0.8 ms inside httpx
before it writes (``http->hdr``), submit->hdr ~1.1 ms; its baselines are
~5-6x WS's (httpx in the client, aiohttp's HTTP server in the simulator).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir (inherited by the simulator process)

from _machine import machine  # noqa: E402
from core.config import parse_config  # noqa: E402
from core.latency import I_COUNT, LatencyHistogram, nb_record, new_hist  # noqa: E402
from core.records import (EX_REJECTED, EX_TRADE, ORD_NEW, OS_CANCELED, OS_EXPIRED, OS_FILLED,  # noqa: E402
                          OS_REJECTED, OT_MARKET, SIDE_BUY, SIDE_SELL)

TRANSPORTS = ("ws", "rest")
FINAL = {OS_FILLED, OS_CANCELED, OS_REJECTED, OS_EXPIRED}
KEY_ENV = ("BINANCE_SIM_API_KEY", "BINANCE_SIM_API_SECRET")
STEPS = ("submit", "dispatch", "place", "lim_in", "limiter", "signed", "wire", "ack")  # --breakdown stamps, in order


# -- the simulator process ---------------------------------------------------------------------------
class SimProcess:
    """``python -m processes.simulator`` in its own process; its log is drained on a thread (the last
    lines kept for error messages) so a full pipe never blocks it."""

    def __init__(self, config_path: Path, env: dict, ready_timeout_s: float = 180.0):
        self.log: collections.deque = collections.deque(maxlen=60)
        self.proc = subprocess.Popen([sys.executable, "-m", "processes.simulator", "--config", str(config_path),
                                      "--log-level", "INFO"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.rest_url = ""
        found = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                if not self.rest_url:
                    m = re.search(r"ready: REST (http://\S+),", line)
                    if m:
                        self.rest_url = m.group(1)
                        found.set()
            found.set()  # it exited

        self._drain = threading.Thread(target=drain, name="sim-log", daemon=True)
        self._drain.start()
        if not found.wait(ready_timeout_s) or not self.rest_url:
            self.stop()
            raise RuntimeError("the simulator did not report ready:\n" + "\n".join(self.log))
        self.ws_url = self.rest_url.replace("http://", "ws://", 1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._drain.join(5)
        return self.proc.returncode


def sim_config(base: dict, sim_rate: float) -> dict:
    """The simulator's config file: the system's instruments; order-rate, weight and open-order limits
    lifted (as scripts/bench_sim_orders.py does), so its limits never answer 429."""
    return {"instruments": copy.deepcopy(base["instruments"]),
            "simulator": {"port": 0, "rate": sim_rate, "orders_per_10s": 10**9, "orders_per_day": 10**12,
                          "weight_limit_per_minute": 10**9, "max_open_orders": 10_000}}


def system_config(base: dict, sim: SimProcess, transport: str, instance: str):
    d = copy.deepcopy(base)
    d["mode"] = "sim"
    d["instance"] = instance
    d["market_data"].update(ws_url=sim.ws_url, rest_url=sim.rest_url)
    d["execution"].update(ws_api_url=f"{sim.ws_url}/ws-api/v3", transport=transport, rate_limit_per_second=10_000,
                          order_timeout_ms=5000)
    return parse_config(d, host_cpus=None)


# -- one transport ------------------------------------------------------------------------------------
def summary(h) -> dict:
    return LatencyHistogram(h).summary()


def hist_of(values_ns) -> dict:
    lh = LatencyHistogram()
    for v in values_ns:
        lh.record(int(v))
    return lh.summary()


class Breakdown:
    """--breakdown: per-order stamps at each step of the venue thread, from wrappers installed from
    outside (processes/*.py unchanged). Paced orders go one at a time, so the steps that know no order
    (limiter, signer, httpx) are charged to the order being placed (``cur``). Steps (``steps``):

    submit (this thread) -> dispatch (``_dispatch`` on the venue loop) -> place (``_place_once``: its
    ``note_sent``, just before ``api.place_order``) -> lim_in (``limiter.acquire_order`` called: the
    client's ``place_order``/``_call`` layers) -> limiter (``acquire_order`` returned) -> signed
    (the signature made) -> [REST: http (``httpx.AsyncClient.request`` entered) -> hdr (httpcore's
    ``send_request_headers.started``: h11 encodes the request and writes it with no loop yield in
    between, so this is the last stamp before the bytes)] -> wire (the executor's ``on_sent``: the WS
    frame handed to the transport; REST: httpcore's ``send_request_headers.started``) -> ack (``place_order``
    returned). Beside the chain: ``event`` / ``final``, the order's first / final executionReport from
    the user-data stream (``wire->event``, ``wire->final``; REST: from ``hdr``, with ``hdr->ack``;
    ``event_before_ack`` counts the orders whose first report came before the answer)."""

    def __init__(self, transport: str):
        self.steps = STEPS if transport == "ws" else STEPS[:6] + ("http", "hdr") + STEPS[6:]
        self.stamps: dict[int, dict] = {}
        self.cur: int | None = None
        self.on = False
        self.final_before_wire = 0  # orders whose final report was made before the executor's on_sent ran

    def _stamp(self, key: str, ns: int | None = None) -> None:
        if self.on and self.cur is not None:
            self.stamps[self.cur].setdefault(key, ns or time.monotonic_ns())

    def install(self, ex) -> None:
        inst = ex.instance
        orig_dispatch = ex._dispatch

        def dispatch(rec):
            if self.on:
                self.stamps.setdefault(rec["client_order_id"], {})["dispatch"] = time.monotonic_ns()
            orig_dispatch(rec)

        ex._dispatch = dispatch  # submit() looks it up per call
        api = ex.api
        lim = api.limiter
        orig_acquire = lim.acquire_order

        async def acquire_order(weight=1):
            self._stamp("lim_in")
            t = await orig_acquire(weight)
            self._stamp("limiter")
            return t

        lim.acquire_order = acquire_order
        signer = api._signer
        bd = self

        class TimedSigner:
            key_type = signer.key_type

            def sign(self, payload):
                out = signer.sign(payload)
                bd._stamp("signed")
                return out

        api._signer = TimedSigner()
        orig_sent = api.on_sent

        def on_sent(wire, ns):
            if self.on and wire.startswith(inst + "-"):
                cid = int(wire[len(inst) + 1:])
                self.stamps.setdefault(cid, {}).setdefault("wire", ns)
                if cid not in ex.orders:
                    self.final_before_wire += 1
                self.cur = None
            orig_sent(wire, ns)

        api.on_sent = on_sent
        orig_place = api.place_order

        async def place_order(**params):
            try:
                return await orig_place(**params)
            finally:
                w = params.get("newClientOrderId", "")
                if self.on and w.startswith(inst + "-"):
                    self.stamps.setdefault(int(w[len(inst) + 1:]), {}).setdefault("ack", time.monotonic_ns())

        api.place_order = place_order
        orig_event = ex.client.on_event

        def on_event(ev):  # the user-data stream: the order's first executionReport, and its final one
            if self.on and ev.get("e") == "executionReport" and str(ev.get("c", "")).startswith(inst + "-"):
                tail = ev["c"][len(inst) + 1:]
                if tail.isdigit():
                    st = self.stamps.setdefault(int(tail), {})
                    now = time.monotonic_ns()
                    st.setdefault("event", now)
                    if ev.get("X") in ("FILLED", "CANCELED", "REJECTED", "EXPIRED"):
                        st.setdefault("final", now)
            orig_event(ev)

        ex.client.on_event = on_event
        http = getattr(api, "_http", None)
        if http is not None:  # REST: httpx's own steps
            orig_request = http.request

            async def request(*a, **kw):
                self._stamp("http")
                ext = dict(kw.get("extensions") or {})
                inner = ext.get("trace")

                async def trace(event, info):
                    if event.endswith("send_request_headers.started"):
                        self._stamp("hdr")
                    if inner is not None:
                        await inner(event, info)

                ext["trace"] = trace
                kw["extensions"] = ext
                return await orig_request(*a, **kw)

            http.request = request

    def note_sent(self, cid: int, ns: int) -> None:  # VenueExecutor(note_sent=...): _place_once, before the call
        if self.on:
            self.stamps.setdefault(cid, {}).setdefault("place", ns)
            self.cur = cid

    def report(self) -> dict:
        out: dict = {}
        steps = self.steps
        complete = [s for s in self.stamps.values() if all(k in s for k in steps)]
        for a, b in zip(steps, steps[1:]):
            out[f"{a}->{b}"] = hist_of(s[b] - s[a] for s in complete)
        if "hdr" in steps:
            out["submit->hdr"] = hist_of(s["hdr"] - s["submit"] for s in complete)
        out["submit->wire"] = hist_of(s["wire"] - s["submit"] for s in complete)
        out["submit->ack"] = hist_of(s["ack"] - s["submit"] for s in complete)
        w = "hdr" if "hdr" in steps else "wire"  # the last stamp before the bytes go (REST: see the class doc)
        if w == "hdr":
            out["hdr->ack"] = hist_of(s["ack"] - s["hdr"] for s in complete)
        for key in ("event", "final"):  # the venue's executionReports
            out[f"{w}->{key}"] = hist_of(s[key] - s[w] for s in complete if key in s)
        out["orders"] = len(complete)
        out["event_before_ack"] = sum(1 for s in complete if s.get("event", s["ack"] + 1) < s["ack"])
        out["final_before_wire"] = self.final_before_wire
        return out


class Run:
    """One transport: an executor on the simulator, its orders and reports."""

    def __init__(self, cfg, transport: str, args, breakdown: Breakdown | None):
        from processes.venue_exec import VenueExecutor

        self.transport = transport
        self.args = args
        self.bd = breakdown
        self.hists = (new_hist(), new_hist(), new_hist())
        self.ex = VenueExecutor(cfg, hists=self.hists, note_sent=breakdown.note_sent if breakdown else None)
        self.next_cid = 1
        self.final: dict[int, int] = {}  # cid -> its final status
        self.fills: collections.Counter = collections.Counter()  # cid -> TRADE reports
        self.rejects: dict[int, int] = {}  # cid -> reject code
        self.probe_futs: list = []
        self.qty = int(round(float(args.qty) * 10**8))

    def start(self) -> None:
        self.ex.start(wait_s=60)
        if self.ex.counters().get("reconciled") != 1 or not self.ex._ready.is_set():
            raise RuntimeError(f"{self.transport}: the venue session did not come up within 60 s: "
                               f"{self.ex.counters()} {self.ex.last_error}")
        if self.bd is not None:
            self.bd.install(self.ex)

    def order(self) -> int:
        cid = self.next_cid
        self.next_cid += 1
        now = time.monotonic_ns()
        self.ex.submit({"action": ORD_NEW, "client_order_id": cid, "orig_client_order_id": 0, "symbol": 0,
                        "side": SIDE_BUY if cid % 2 else SIDE_SELL, "order_type": OT_MARKET, "tif": 0, "price": 0,
                        "qty": self.qty, "recv_ns": now, "pub_ns": now, "ref_px": 0})
        if self.bd is not None and self.bd.on:
            self.bd.stamps.setdefault(cid, {})["submit"] = now
        return cid

    def drain(self) -> None:
        for r in self.ex.take_reports():
            cid = r["client_order_id"]
            if r["exec_type"] == EX_TRADE:
                self.fills[cid] += 1
            if r["exec_type"] == EX_REJECTED:
                self.rejects[cid] = int(r.get("reject_code", 0))
            if r["status"] in FINAL:
                self.final[cid] = r["status"]

    def probe(self, kind: str, hist) -> None:
        """A baseline request on the venue loop, timed there around the whole call."""
        api = self.ex.api
        sym = self.ex.symbols[0]

        async def go():
            t0 = time.monotonic_ns()
            if kind == "ping":
                await api.ping()
            else:
                await api.open_orders(sym)
            nb_record(hist, time.monotonic_ns() - t0)

        self.probe_futs.append(asyncio.run_coroutine_threadsafe(go(), self.ex.loop))

    def settle(self, cids, timeout_s: float) -> None:
        """Until every order in ``cids`` has a final report and its answer (ack_rtt recorded), and the
        probes are done."""
        deadline = time.monotonic() + timeout_s
        want = set(cids)
        while time.monotonic() < deadline:
            self.drain()
            st = self.ex.stats
            if want <= set(self.final) and st["acked"] + st["rejects"] + st["adopted"] >= self.next_cid - 1 and \
                    all(f.done() for f in self.probe_futs):
                break
            time.sleep(0.005)
        missing = sorted(want - set(self.final))
        if missing:
            raise RuntimeError(f"{self.transport}: {len(missing)} orders without a final report after {timeout_s:g} s "
                               f"(first {missing[:5]}): {self.ex.counters()} {self.ex.last_error}")
        for f in self.probe_futs:
            if f.done() and f.exception() is not None:
                raise RuntimeError(f"{self.transport}: a baseline request failed: {f.exception()!r}")
        self.probe_futs = [f for f in self.probe_futs if not f.done()]

    def paced(self, n: int, rate: float, base_hists: dict | None) -> list[int]:
        """``n`` orders at ``rate``/s on the clock; baseline probes at 1/3 and 2/3 of each period."""
        period = 1.0 / rate
        t0 = time.monotonic() + 0.02
        cids = []
        for i in range(n):
            events = [(t0 + i * period, "order")]
            if base_hists is not None:
                events += [(t0 + (i + 1 / 3) * period, "ping"), (t0 + (i + 2 / 3) * period, "signed")]
            for at, what in events:
                wait = at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if what == "order":
                    cids.append(self.order())
                else:
                    self.probe(what, base_hists[what])
                self.drain()
        return cids

    def run(self) -> dict:
        a = self.args
        ex = self.ex
        # warm-up (kernels loaded, connections open, caches warm): recorded into throw-away hists
        ex.hists = (new_hist(), new_hist(), new_hist())
        warm = self.paced(a.warmup, a.rate, {"ping": new_hist(), "signed": new_hist()})
        self.settle(warm, a.final_timeout_s)
        # paced
        ex.hists = self.hists
        base = {"ping": new_hist(), "signed": new_hist()}
        if self.bd is not None:
            self.bd.on = True
        t = time.monotonic()
        paced = self.paced(a.orders, a.rate, base)
        paced_s = time.monotonic() - t
        self.settle(paced, a.final_timeout_s)
        if self.bd is not None:
            self.bd.on = False
        out = {"phase_s": round(paced_s, 3), **self.phase(paced, self.hists)}
        out["baseline"] = {k: summary(h) for k, h in base.items()}
        res = {"paced": out}
        # bursts
        if a.burst > 0 and a.burst_rounds > 0:
            bh = (new_hist(), new_hist(), new_hist())
            ex.hists = bh
            cids = []
            for _ in range(a.burst_rounds):
                time.sleep(0.2)
                batch = [self.order() for _ in range(a.burst)]
                cids += batch
                self.settle(batch, a.final_timeout_s)
            res["burst"] = {"size": a.burst, "rounds": a.burst_rounds, **self.phase(cids, bh)}
        res["ratios"] = ratios(out)
        if self.bd is not None:
            res["breakdown"] = self.bd.report()
        res["counters"] = ex.counters()
        res["client"] = {"api": type(ex.api).__name__, "stats": ex.api.stats.as_dict()}
        return res

    def phase(self, cids: list[int], hists) -> dict:
        final = [self.final[c] for c in cids]
        return {"orders": len(cids), "final": len(final), "filled": sum(s == OS_FILLED for s in final),
                "fills": sum(self.fills[c] for c in cids), "rejects": sum(c in self.rejects for c in cids),
                "reject_codes": sorted({self.rejects[c] for c in cids if c in self.rejects}),
                "tick_to_order": summary(hists[0]), "order_to_wire": summary(hists[1]), "ack_rtt": summary(hists[2]),
                # orders the executor recorded no order_to_wire / ack_rtt for (see the module docstring)
                "samples_missing": {"order_to_wire": len(cids) - int(hists[1][I_COUNT]),
                                    "ack_rtt": len(cids) - int(hists[2][I_COUNT])}}

    def close(self) -> None:
        self.ex.close()


def ratios(paced: dict) -> dict:
    out = {}
    ack = paced["ack_rtt"]
    for kind, b in paced["baseline"].items():
        for p in ("p50_us", "p99_us"):
            out[f"ack_rtt/{kind}_{p[:3]}"] = round(ack[p] / b[p], 3) if b[p] > 0 else None
    b = paced["baseline"]["signed"]
    wire_ack = paced["order_to_wire"]["p50_us"] + ack["p50_us"]
    out["order_to_wire+ack_rtt/signed_p50"] = round(wire_ack / b["p50_us"], 3) if b["p50_us"] > 0 else None
    return out


def run_benchmark(args) -> dict:
    base = json.loads((ROOT / "config" / "system.json").read_text())
    key, secret = secrets.token_hex(32), secrets.token_hex(32)
    saved = {k: os.environ.get(k) for k in KEY_ENV}
    os.environ.update(dict(zip(KEY_ENV, (key, secret))))  # the executor reads them (the default sim account's)
    nb_record(new_hist(), 1)  # compiled / loaded from the cache before any measurement
    out: dict = {"benchmark": "bench_execution", "machine": machine(), "command": " ".join([sys.executable] + sys.argv),
                 "settings": {k: getattr(args, k) for k in ("transports", "orders", "rate", "burst", "burst_rounds",
                                                             "warmup", "sim_rate", "qty", "breakdown")},
                 "transports": {}}
    out["settings"]["symbol"] = base["instruments"][0]["symbol"]
    t_start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ringtrader-bench-exec-") as tmp:
            path = Path(tmp) / "simulator.json"
            path.write_text(json.dumps(sim_config(base, args.sim_rate)))
            sim = SimProcess(path, {**os.environ})
            try:
                out["simulator"] = {"rest_url": sim.rest_url, "pid": sim.proc.pid}
                for transport in args.transports:
                    cfg = system_config(base, sim, transport, f"bx{transport}{os.getpid() % 100000}")
                    run = Run(cfg, transport, args, Breakdown(transport) if args.breakdown else None)
                    try:
                        run.start()
                        out["settings"]["switch_interval_s"] = sys.getswitchinterval()
                        out["transports"][transport] = run.run()
                    finally:
                        run.close()
                    if sim.proc.poll() is not None:
                        raise RuntimeError(f"the simulator exited ({sim.proc.returncode}):\n" + "\n".join(sim.log))
            finally:
                rc = sim.stop()
                out.setdefault("simulator", {})["exit_code"] = rc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["elapsed_s"] = round(time.monotonic() - t_start, 2)
    return out


# -- output -------------------------------------------------------------------------------------------
def _row(s: dict) -> str:
    return f"{s['p50_us']:8.0f} {s['p90_us']:8.0f} {s['p99_us']:8.0f} {s['max_us']:8.0f}"


def format_table(res: dict) -> str:
    m, st = res["machine"], res["settings"]
    lines = [f"execution venue path vs the simulator over loopback: {st['orders']} orders at {st['rate']:g}/s "
             f"(MARKET {st['qty']} {st['symbol']}, BUY/SELL alternating), bursts {st['burst_rounds']} x "
             f"{st['burst']}, simulator market {st['sim_rate']:g} events/s",
             f"machine: {m['cpu_model']}, {m['logical_cpus']} CPUs (allowed {m['allowed_cpus']}), kernel "
             f"{m['kernel']}, python {m['python']}, load {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}; "
             f"switch interval {st.get('switch_interval_s', 0) * 1e6:.0f} us",
             "",
             f"{'transport':9} {'phase':6} {'what':14} {'n':>5} " + " ".join(f"{c:>8}" for c in
                                                                          ("p50 us", "p90 us", "p99 us", "max us"))]
    for t, r in res["transports"].items():
        p = r["paced"]
        rows = [("paced", "order_to_wire", p["order_to_wire"]), ("paced", "ack_rtt", p["ack_rtt"]),
                ("paced", "base ping", p["baseline"]["ping"]), ("paced", "base signed", p["baseline"]["signed"])]
        if "burst" in r:
            rows += [("burst", hop, r["burst"][hop]) for hop in ("order_to_wire", "ack_rtt")]
        for phase, what, s in rows:
            lines.append(f"{t:9} {phase:6} {what:14} {s['count']:5d} {_row(s)}")
    lines.append("")
    for t, r in res["transports"].items():
        p, q = r["paced"], r["ratios"]
        lines.append(f"{t}: paced {p['orders']} orders, {p['final']} final, {p['filled']} filled, {p['fills']} fills, "
                     f"{p['rejects']} rejects" + (f" {p['reject_codes']}" if p["rejects"] else "")
                     + (f"; burst {r['burst']['orders']} orders, {r['burst']['final']} final, "
                        f"{r['burst']['rejects']} rejects" if "burst" in r else ""))
        for ph in ("paced", "burst"):
            miss = r[ph]["samples_missing"] if ph in r else {}
            if any(miss.values()):
                lines.append(f"    WARNING ({ph}): the executor recorded no order_to_wire for {miss['order_to_wire']} "
                             f"and no ack_rtt for {miss['ack_rtt']} of {r[ph]['orders']} orders (its on_sent came "
                             f"after the order's final report): those percentiles are of the rest only")
        lines.append(f"    ack_rtt / signed baseline: p50 {q['ack_rtt/signed_p50']}, p99 {q['ack_rtt/signed_p99']}; "
                     f"ack_rtt / ping: p50 {q['ack_rtt/ping_p50']}, p99 {q['ack_rtt/ping_p99']}; "
                     f"(order_to_wire + ack_rtt) / signed, p50: {q['order_to_wire+ack_rtt/signed_p50']}")
        if "breakdown" in r:
            b = r["breakdown"]
            lines.append(f"    breakdown ({b['orders']} paced orders; p50 / p99 us): " + ", ".join(
                f"{k} {b[k]['p50_us']:.0f}/{b[k]['p99_us']:.0f}" for k in b if isinstance(b[k], dict))
                         + f"; final report before the wire stamp: {b['final_before_wire']}, first "
                           f"executionReport before the answer: {b['event_before_ack']}")
    if set(res["transports"]) == set(TRANSPORTS):
        w, r_ = res["transports"]["ws"]["paced"], res["transports"]["rest"]["paced"]
        lines.append("")
        x = lambda a, b: a["p50_us"] / max(b["p50_us"], 1e-9)  # noqa: E731
        lines.append(f"rest / ws, p50: order_to_wire {x(r_['order_to_wire'], w['order_to_wire']):.2f}x, ack_rtt "
                     f"{x(r_['ack_rtt'], w['ack_rtt']):.2f}x, ping baseline "
                     f"{x(r_['baseline']['ping'], w['baseline']['ping']):.2f}x, signed baseline "
                     f"{x(r_['baseline']['signed'], w['baseline']['signed']):.2f}x")
    lines.append(f"(elapsed {res['elapsed_s']} s; percentiles are bucket upper edges, within 3.1 %)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transports", default="ws,rest", help="comma-separated, from: ws, rest (run in this order)")
    p.add_argument("--orders", type=int, default=300, help="paced orders per transport")
    p.add_argument("--rate", type=float, default=20.0, help="paced orders per second (one at a time on the clock)")
    p.add_argument("--burst", type=int, default=20, help="orders per burst, submitted back to back (0: no bursts)")
    p.add_argument("--burst-rounds", type=int, default=3, help="bursts per transport")
    p.add_argument("--warmup", type=int, default=20, help="orders before the measured ones (not recorded)")
    p.add_argument("--sim-rate", type=float, default=2000.0, help="the simulator's generated market, events/s")
    p.add_argument("--qty", default="0.001", help="order quantity (base asset)")
    p.add_argument("--final-timeout-s", type=float, default=60.0, help="wait at most this for the final reports")
    p.add_argument("--breakdown", action="store_true",
                   help="stamp each paced order at every step of the venue thread (wrappers; small overhead)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    ts = [t.strip() for t in args.transports.split(",") if t.strip()]
    bad = [t for t in ts if t not in TRANSPORTS]
    if bad or not ts or len(set(ts)) != len(ts):
        p.error(f"--transports: {args.transports!r}: each of {', '.join(TRANSPORTS)} at most once")
    if args.orders < 1 or args.rate <= 0 or args.burst < 0 or args.burst_rounds < 0 or args.warmup < 0:
        p.error("--orders >= 1, --rate > 0, --burst/--burst-rounds/--warmup >= 0")
    args.transports = ts
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run_benchmark(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Feed benchmarks: (a) frame decode cost, (b) end-to-end feed throughput.

    .venv/bin/python scripts/bench_feed.py [--quick] [--json] [--cpu N]

Part (a), decode: for three real Binance frames (a 10+10-level depth diff, a
trade and a bookTicker, copied byte for byte from the hftbacktest BTCUSDT
2024-08-08 recording), in one run on one host:

``ringtrader``
    frame bytes -> ``core.decode.Decoder.decode_publish``: the numba fast
    path decodes and publishes into a real ``md`` ring
    (``ringbuffers.ring.Ring``, MD_EVENT, overwrite policy so it never
    blocks; created for the bench and unlinked after) in one call, stamping
    pub_ns in the kernel; recv_ns from ``time.monotonic_ns()`` as the feed
    takes it.
``decode only``
    ``Decoder.decode`` into a reused array: no ring, no clock reads.
``kernel``
    ``nb_decode_frame`` called from an ``@njit`` loop: the scan itself, without
    the Python -> numba dispatch (~0.5-1 us per call on a small VM) that the
    rows above pay once per frame.
``baseline``
    the plain path: ``orjson.loads`` + ``float()`` of every price/qty (and
    the ids) into a preallocated numpy float64 array.
``orjson.loads``
    ``orjson.loads`` alone (parsing only, nothing extracted).

Each row: ``--iterations`` frames per timed loop, ``--repeat`` loops; the
median loop gives us/frame (min in the JSON). Ratios are baseline / ours.
Figures are reported, never asserted. Part (b) is a registered section
(see ``SECTIONS``), filled in separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without an install
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from core.decode import Decoder  # noqa: E402
from core.decode_kernels import make_state, nb_decode_frame  # noqa: E402
from core.records import MD_EVENT  # noqa: E402
from ringbuffers.ring import Ring, segment_name  # noqa: E402
from _machine import machine  # noqa: E402  (scripts/ is sys.path[0])

# Real frames, byte for byte, from ../shared/data/hftbacktest/btcusdt_20240808.gz
# (line 703: the first depth diff there with exactly 10 bids and 10 asks;
# line 4: the first trade; line 3: the first bookTicker), embedded so the bench runs without the data.
DEPTH_10_10 = (
    b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161260010,"s":"BTCUSDT","U":500932'
    b'42069,"u":50093242099,"b":[["61829.76000000","2.99683000"],["61829.05000000","0.00000000"],["61828.3'
    b'4000000","0.33471000"],["61818.05000000","0.00084000"],["61816.88000000","0.00105000"],["61813.72000'
    b'000","0.05030000"],["61812.97000000","0.00000000"],["61812.84000000","0.00000000"],["61775.47000000"'
    b',"1.04000000"],["60895.05000000","0.00009000"]],"a":[["61829.77000000","0.44378000"],["61830.9900000'
    b'0","0.00000000"],["61831.00000000","0.00000000"],["61831.24000000","0.00009000"],["61831.51000000","'
    b'0.04060000"],["61832.01000000","0.00000000"],["61834.97000000","0.00000000"],["61841.93000000","0.00'
    b'000000"],["61854.43000000","0.00000000"],["61854.44000000","0.00984000"]]}}'
)
TRADE = (
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61'
    b'837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
)
BOOK_TICKER = (
    b'{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.788'
    b'26000","a":"61837.64000000","A":"1.54698000"}}'
)
FRAMES = [("depth 10+10", DEPTH_10_10), ("trade", TRADE), ("bookTicker", BOOK_TICKER)]


# ---------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------
def time_loop(fn: Callable[[], None], iterations: int, repeat: int) -> tuple[float, float]:
    """(median, min) microseconds per call of ``fn`` over ``repeat`` loops of ``iterations``."""
    for _ in range(min(iterations, 1000)):  # warm caches and branch predictors
        fn()
    per = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        per.append((time.perf_counter_ns() - t0) / iterations / 1000.0)
    return statistics.median(per), min(per)


def machine_info() -> dict:
    return {**machine(), "orjson": orjson.__version__}


# ---------------------------------------------------------------------------
# part (a): decode cost per frame
# ---------------------------------------------------------------------------
@nb.njit(cache=True)
def _kernel_loop(payload, out64, st, iterations):
    total = 0
    for k in range(iterations):
        total += nb_decode_frame(payload, out64, k, st)
    return total


def kernel_us(payload: bytes, iterations: int, repeat: int) -> float:
    """Median us per frame of nb_decode_frame inside an @njit loop (no dispatch)."""
    out64 = np.zeros((64, 8), np.int64)
    st = make_state(["BTCUSDT", "ETHUSDT"])
    _kernel_loop(payload, out64, st, 10)
    per = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        _kernel_loop(payload, out64, st, iterations)
        per.append((time.perf_counter_ns() - t0) / iterations / 1000.0)
    return statistics.median(per)


def baseline_fn(payload: bytes, arr: np.ndarray) -> Callable[[], None]:
    """The plain path: orjson.loads + float() into a numpy array (what the replaced system does)."""
    def depth():
        d = orjson.loads(payload)["data"]
        k = 0
        for px, qty in d["b"]:
            arr[k, 0] = float(px)
            arr[k, 1] = float(qty)
            arr[k, 2] = d["U"]
            arr[k, 3] = d["u"]
            k += 1
        for px, qty in d["a"]:
            arr[k, 0] = float(px)
            arr[k, 1] = -float(qty)
            arr[k, 2] = d["U"]
            arr[k, 3] = d["u"]
            k += 1

    def trade():
        d = orjson.loads(payload)["data"]
        arr[0, 0] = float(d["p"])
        arr[0, 1] = float(d["q"])
        arr[0, 2] = d["t"]
        arr[0, 3] = d["T"]

    def ticker():
        d = orjson.loads(payload)["data"]
        arr[0, 0] = float(d["b"])
        arr[0, 1] = float(d["B"])
        arr[1, 0] = float(d["a"])
        arr[1, 1] = float(d["A"])
        arr[0, 2] = arr[1, 2] = d["u"]

    data = orjson.loads(payload)["data"]
    return {"depthUpdate": depth, "trade": trade}.get(data.get("e"), ticker)


def bench_decode(args) -> dict:
    dec = Decoder(["BTCUSDT", "ETHUSDT"])
    out = dec.new_out()
    arr = np.zeros((64, 4), np.float64)
    name = segment_name(f"bench-feed-{os.getpid()}", "md")
    ring = Ring.create(name, MD_EVENT, capacity=1 << 16, consumers=1, policy="overwrite")
    rows = []
    try:
        mono = time.monotonic_ns
        decode = dec.decode
        decode_publish = dec.decode_publish
        for label, payload in FRAMES:
            n = decode(payload, 1, out)
            ref = dec.new_out()
            if n <= 0 or dec.decode_reference(payload, 1, ref) != n or not np.array_equal(out[:n], ref[:n]):
                raise SystemExit(f"bench frame {label!r} does not decode identically on both paths")

            def ours(payload=payload):
                decode_publish(payload, mono(), ring)

            def decode_only(payload=payload):
                decode(payload, 1, out)

            def loads_only(payload=payload):
                orjson.loads(payload)

            published0 = ring.published
            med, mn = time_loop(ours, args.iterations, args.repeat)
            published = ring.published - published0
            if published != n * (args.iterations * args.repeat + min(args.iterations, 1000)):
                raise SystemExit(f"{label}: ring got {published} records, expected {n} per frame")
            dmed, dmn = time_loop(decode_only, args.iterations, args.repeat)
            bmed, bmn = time_loop(baseline_fn(payload, arr), args.iterations, args.repeat)
            omed, omn = time_loop(loads_only, args.iterations, args.repeat)
            kmed = kernel_us(payload, args.iterations, args.repeat)
            rows.append({
                "name": label,
                "bytes": len(payload),
                "records": n,
                "us_per_frame": round(med, 3),
                "us_per_frame_min": round(mn, 3),
                "decode_only_us": round(dmed, 3),
                "kernel_us": round(kmed, 3),
                "baseline_us_per_frame": round(bmed, 3),
                "baseline_us_per_frame_min": round(bmn, 3),
                "orjson_loads_us": round(omed, 3),
                "orjson_loads_us_min": round(omn, 3),
                "baseline_over_ours": round(bmed / med, 2),
                "orjson_loads_over_ours": round(omed / med, 2),
                "records_published": published,
            })
        fast_share = dec.fast / max(1, dec.fast + dec.slow)
    finally:
        ring.close()
        ring.unlink()
    return {"frames": rows, "fast_path_share": round(fast_share, 4), "target_depth_us": 3.0}


def print_decode(res: dict) -> None:
    print("\n(a) decode: frame bytes -> MD_EVENT records in the md ring (us per frame, median of loops)")
    hdr = f"{'frame':<13}{'bytes':>6}{'recs':>5}{'ringtrader':>12}{'decode':>9}{'kernel':>8}{'baseline':>10}" \
          f"{'orjson':>9}{'base/ours':>11}{'orjson/ours':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in res["frames"]:
        print(f"{r['name']:<13}{r['bytes']:>6}{r['records']:>5}{r['us_per_frame']:>12.3f}{r['decode_only_us']:>9.3f}"
              f"{r['kernel_us']:>8.3f}{r['baseline_us_per_frame']:>10.3f}{r['orjson_loads_us']:>9.3f}{r['baseline_over_ours']:>10.2f}x"
              f"{r['orjson_loads_over_ours']:>12.2f}x")
    print("ringtrader = Decoder.decode_publish into a real md ring (pub_ns stamped in the kernel); "
          "decode = Decoder.decode alone; kernel = the numba scan without dispatch;")
    print("baseline = orjson.loads + float() into numpy; orjson = orjson.loads alone. "
          f"Target: depth 10+10 <= {res['target_depth_us']} us. Fast-path share {res['fast_path_share']:.2%}.")


# ---------------------------------------------------------------------------
# part (b): end-to-end feed throughput and frame-received -> published latency
# ---------------------------------------------------------------------------
# The simulator runs in its own process (spawned, so it does not share this
# process's loop or GIL) at --sim-rate events/s; the client under test runs
# here for --seconds on uvloop:
#   ringtrader  processes.feed_client.FeedClient (picows) + processes.feed.RingPublisher
#               into a real md ring (overwrite policy: never waits, no consumer needed);
#               latency = pub_ns (stamped in the decode+publish kernel) - recv_ns (picows callback)
#   baseline    aiohttp ws client + orjson.loads + float() of every price/qty into numpy
#               (the plain path); latency = after conversion - message received
# Both get a fresh simulator with the same seed and rate. "kept up" = the simulator did
# not drop the client as too slow and the client received what the simulator sent.
B_SYMBOLS = ("BTCUSDT", "ETHUSDT")
B_STREAMS = ("depth@100ms", "trade", "bookTicker")


def _sim_process(rate: float, seed: int, port_q) -> None:
    import asyncio as _asyncio

    from processes.simulator import SimulatorConfig, resolve_symbols
    from processes.simulator.server import serve

    cfg = SimulatorConfig.from_dict({"port": 0, "rate": rate, "seed": seed, "depth_levels": 200,
                                     "max_client_queue": 1000})
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = _asyncio.run
    runner(serve(cfg, resolve_symbols(list(B_SYMBOLS), cfg), ready_cb=lambda sim: port_q.put(sim.port)))


class _SimProc:
    def __init__(self, rate: float, seed: int = 11):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        self.p = ctx.Process(target=_sim_process, args=(rate, seed, q), daemon=True)
        self.p.start()
        self.port = q.get(timeout=120)

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/sim/stats", timeout=60).json()  # a saturated simulator answers late

    def close(self) -> None:
        self.p.terminate()
        self.p.join(10)


class _NullCtx:
    """What RingPublisher needs from a worker context (no supervisor in a bench)."""

    def __init__(self):
        from ringbuffers.idle import make_idle

        self.idle = make_idle("busy_spin")
        self.stats: dict = {}

    def heartbeat(self, **kw) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _percentiles(h) -> dict:
    """Bucket upper edges of core.latency's log histogram (a few % resolution), max exact."""
    sm = h.summary()
    return {"count": sm["count"], "p50_us": sm["p50_us"], "p90_us": sm["p90_us"], "p99_us": sm["p99_us"],
            "p99.9_us": sm["p999_us"], "max_us": sm["max_us"]}


async def _run_ringtrader(port: int, seconds: float, ring) -> dict:
    from core.latency import LatencyHistogram
    from processes.feed import RingPublisher
    from processes.feed_client import FeedClient, FeedSettings

    hop = LatencyHistogram()
    pub = RingPublisher(ring, _NullCtx(), hop)
    s = FeedSettings(ws_url=f"ws://127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{port}", symbols=B_SYMBOLS,
                     streams=B_STREAMS, snapshot_wait_first_diff_s=0.2)
    client = FeedClient(s, pub.records, frame_sink=pub)
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    deadline = time.monotonic() + 15  # a saturated simulator answers REST late: measure anyway after this
    while client.stats.snapshots < len(B_SYMBOLS) and time.monotonic() < deadline:  # the steady stream only
        await asyncio.sleep(0.01)
    hop = pub.hop = LatencyHistogram()  # count only the steady stream
    f0, r0, b0, t0 = client.stats.frames, client.stats.records, client.stats.bytes, time.monotonic()
    await asyncio.sleep(seconds)
    f1, r1, b1, t1 = client.stats.frames, client.stats.records, client.stats.bytes, time.monotonic()
    stop.set()
    await task
    el = t1 - t0
    return {"frames": f1 - f0, "records": r1 - r0, "frames_per_s": round((f1 - f0) / el), "records_per_s":
            round((r1 - r0) / el), "mb_per_s": round((b1 - b0) / el / 1e6, 2), "latency": _percentiles(hop),
            "decode_errors": dict(client.stats.decode_errors), "reconnects": client.stats.reconnects,
            "total_frames": client.stats.frames}


async def _run_baseline(port: int, seconds: float) -> dict:
    import aiohttp

    from core.latency import LatencyHistogram

    hop = LatencyHistogram()
    arr = np.zeros((4096, 2), np.float64)
    url = f"ws://127.0.0.1:{port}/stream?streams=" + "/".join(f"{x.lower()}@{st}" for x in B_SYMBOLS for st in B_STREAMS)
    frames = records = nbytes = 0
    total = 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0, autoping=True) as ws:
            t0 = None
            end = None
            while True:
                msg = await ws.receive()
                recv = time.monotonic_ns()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                total += 1
                d = orjson.loads(msg.data)["data"]
                k = 0
                if "b" in d and isinstance(d["b"], list):
                    for px, q in d["b"]:
                        arr[k, 0] = float(px); arr[k, 1] = float(q); k += 1  # noqa: E702
                    for px, q in d["a"]:
                        arr[k, 0] = float(px); arr[k, 1] = -float(q); k += 1  # noqa: E702
                elif "p" in d:
                    arr[0, 0] = float(d["p"]); arr[0, 1] = float(d["q"]); k = 1  # noqa: E702
                else:
                    arr[0, 0] = float(d["b"]); arr[0, 1] = float(d["B"])  # noqa: E702
                    arr[1, 0] = float(d["a"]); arr[1, 1] = float(d["A"]); k = 2  # noqa: E702
                now = time.monotonic_ns()
                if t0 is None:
                    if total >= 200:  # skip the start, as for ringtrader
                        t0 = time.monotonic()
                        end = t0 + seconds
                    continue
                hop.record(now - recv)
                frames += 1
                records += max(k, 1)
                nbytes += len(msg.data)
                if time.monotonic() >= end:
                    break
            el = time.monotonic() - t0
    return {"frames": frames, "records": records, "frames_per_s": round(frames / el), "records_per_s":
            round(records / el), "mb_per_s": round(nbytes / el / 1e6, 2), "latency": _percentiles(hop),
            "total_frames": total}


def bench_end_to_end(args) -> dict:
    from ringbuffers.ring import Ring, segment_name as _seg

    rows = []
    for label in ("ringtrader", "baseline"):
        sim = _SimProc(args.sim_rate)
        try:
            if label == "ringtrader":
                name = _seg(f"bench-feed-e2e-{os.getpid()}", "md")
                ring = Ring.create(name, MD_EVENT, capacity=1 << 16, consumers=1, policy="overwrite")
                try:
                    try:
                        import uvloop

                        row = uvloop.run(_run_ringtrader(sim.port, args.seconds, ring))
                    except ImportError:
                        row = asyncio.run(_run_ringtrader(sim.port, args.seconds, ring))
                finally:
                    ring.close()
                    ring.unlink()
            else:
                try:
                    import uvloop

                    row = uvloop.run(_run_baseline(sim.port, args.seconds))
                except ImportError:
                    row = asyncio.run(_run_baseline(sim.port, args.seconds))
            st = sim.stats()
        finally:
            sim.close()
        row["name"] = label
        row["sim_events_per_s_configured"] = args.sim_rate
        row["sim_events_generated"] = st.get("events_generated")
        row["sim_frames_sent"] = st.get("frames_sent")
        row["sim_slow_drops"] = st.get("slow_drops")
        row["sim_lag_resets"] = st.get("lag_resets")
        # the simulator drops a client whose send queue backs up (max_client_queue): a client that kept up was never dropped
        row["kept_up"] = st.get("slow_drops", 0) == 0 and row.get("reconnects", 0) == 0 and row["frames"] > 0
        rows.append(row)
    ours, base = rows
    return {"seconds": args.seconds, "rows": rows,
            "latency_p50_base_over_ours": round(base["latency"]["p50_us"] / max(ours["latency"]["p50_us"], 1e-3), 2),
            "latency_p99_base_over_ours": round(base["latency"]["p99_us"] / max(ours["latency"]["p99_us"], 1e-3), 2)}


def print_end_to_end(res: dict) -> None:
    print(f"\n(b) end to end: simulator process -> loopback WebSocket -> client here, {res['seconds']} s each "
          "(latency = frame received -> records published, us)")
    hdr = f"{'client':<12}{'frames/s':>10}{'records/s':>11}{'MB/s':>7}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>9}" \
          f"{'max':>9}{'kept up':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in res["rows"]:
        lat = r["latency"]
        print(f"{r['name']:<12}{r['frames_per_s']:>10}{r['records_per_s']:>11}{r['mb_per_s']:>7.2f}{lat['p50_us']:>8.2f}"
              f"{lat['p90_us']:>8.2f}{lat['p99_us']:>8.2f}{lat['p99.9_us']:>9.2f}{lat['max_us']:>9.1f}"
              f"{'yes' if r['kept_up'] else 'NO':>9}")
    r0 = res["rows"][0]
    print(f"simulator configured at {r0['sim_events_per_s_configured']:g} events/s; baseline/ours latency: "
          f"p50 {res['latency_p50_base_over_ours']}x, p99 {res['latency_p99_base_over_ours']}x. "
          "ringtrader = FeedClient (picows, numba decode+publish into an md ring); baseline = aiohttp + orjson + float().")


# ---------------------------------------------------------------------------
# sections: part (a) here; PART (b) -- end-to-end feed throughput with the
# simulator -- is added by appending a Section (run(args) -> dict, show(dict))
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    key: str  # key in the --json output
    run: Callable[[argparse.Namespace], dict]
    show: Callable[[dict], None]


SECTIONS: list[Section] = [
    Section("decode", bench_decode, print_decode),
    Section("end_to_end", bench_end_to_end, print_end_to_end),  # part (b)
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20000, help="frames per timed loop")
    ap.add_argument("--repeat", type=int, default=7, help="timed loops per row (median reported)")
    ap.add_argument("--quick", action="store_true", help="2000 x 3 loops (smoke run)")
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--seconds", type=float, default=5.0, help="(b) measured seconds per client")
    ap.add_argument("--sim-rate", type=float, default=50_000, help="(b) simulator events/s; above what one core "
                    "generates it runs flat out (sim_events_generated / seconds is the rate it reached)")
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.repeat = 2000, 3
        args.seconds = min(args.seconds, 2.0)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = {"machine": machine_info(), "iterations": args.iterations, "repeat": args.repeat}
    for section in SECTIONS:
        result[section.key] = section.run(args)
    # the --json contract of part (a): {"frames": [...]} at the top level
    result["frames"] = result["decode"]["frames"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["machine"]
        print(f"bench_feed on {m['cpu_model']} ({len(m['allowed_cpus'])} allowed CPUs), python {m['python']}, "
              f"numba {m['numba']}, load {m['load_avg_at_start'][0]:.2f}")
        for section in SECTIONS:
            section.show(result[section.key])
    return 0


if __name__ == "__main__":
    sys.exit(main())

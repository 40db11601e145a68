"""Prometheus metrics endpoint of the supervisor.

``MetricsServer(instance, view, host, port)`` serves ``/metrics`` (the
``prometheus_client`` HTTP server, in a daemon thread of the supervisor) from
one custom collector, ``RingtraderCollector``, evaluated at scrape time. The
workers pay nothing for it: rings count in their shared-memory headers, stages
put their counters and latency histograms in the heartbeats they send anyway,
and the supervisor turns both into families only when scraped. Names follow
the Prometheus conventions (base units in the name: ``_seconds``, ``_quote``,
``_base``; ``_total`` on counters; ``promtool check metrics`` clean, see
``tests/processes/test_metrics_families.py``).

Ring counters come straight from the shared-memory headers (the collector
attaches every ring as a read-only ``monitor``), so they are exact at the
moment of the scrape:

=======================================  =========  ===========================================
``ringtrader_ring_published_total``      counter    {ring} records published
``ringtrader_ring_consumed_total``       counter    {ring,consumer} the consumer's cursor
``ringtrader_ring_lag``                  gauge      {ring,consumer} published - consumed
``ringtrader_ring_stalls_total``         counter    {ring} publishes that found the ring full
``ringtrader_ring_lost_total``           counter    {ring,consumer} records a lapped consumer lost
``ringtrader_ring_lapped_total``         counter    {ring,consumer} times the consumer was lapped
``ringtrader_ring_capacity``             gauge      {ring} slots
=======================================  =========  ===========================================

Everything else comes from ``view()`` (``ViewCollector``), a dict the
supervisor rebuilds from its heartbeats twice a second
(``processes.supervisor.summary.build_view``; replaced whole, so the scrape
thread never sees a half-built one). Stage counters are summed over a
process's incarnations; states (risk's state, positions, P&L) are the latest.

Processes (idle time is measured per process, by its idle strategy: a stage
shares its process's loop, so there is no per-stage idle figure):

=================================================  =========  ==============================================
``ringtrader_process_up``                          gauge      {process} 1 while running and heartbeating
``ringtrader_process_restarts_total``              counter    {process} (its stages restart with it)
``ringtrader_process_restarts_via_spare_total``    counter    {process} restarts served by the warm spare
``ringtrader_process_heartbeat_age_seconds``       gauge      {process} since its last heartbeat
``ringtrader_process_recovery_seconds``            gauge      {process} last crash detected -> replacement ready
``ringtrader_process_idle_ratio``                  gauge      {process} share of its time in its idle strategy
``ringtrader_stage_process``                       gauge      {stage,process} 1: the placement
``ringtrader_spare_started_total``                 counter    spare processes started
``ringtrader_spare_used_total``                    counter    spares that became a process
``ringtrader_spare_ready``                         gauge      1 while a warmed spare is waiting
=================================================  =========  ==============================================

Latency (every hop of ``core.topology.HOPS`` and ``VENUE_HOPS`` that has
samples; ``end_to_end`` and ``tick_to_order`` included), cumulative since start:

=================================================  =========  ==============================================
``ringtrader_hop_latency_seconds``                 histogram  {hop} ``le`` = ``LATENCY_BUCKETS_NS`` (1 us ..
                                                              100 ms, 1-2-5 per decade) and +Inf; a source
                                                              bucket straddling a bound counts under the
                                                              next bound (``core.latency.cumulative_counts``)
``ringtrader_hop_latency_quantiles_seconds``       summary    {hop,quantile} 0.5 0.9 0.99 0.999, 1 = max
                                                              (exact max; others: bucket upper edges)
``ringtrader_hop_latency_samples_total``           counter    {hop} (= the histogram's ``_count``)
=================================================  =========  ==============================================

Signal, risk and execution stages (from their heartbeat counters):

=================================================  =========  ==============================================
``ringtrader_signals_total``                       counter    {strategy,reason} signals emitted
``ringtrader_signal_suppressed_total``             counter    {strategy,reason} decisions suppressed: book_invalid,
                                                              stale, warmup, model_budget, bad_score
``ringtrader_risk_signals_total``                  counter    signals risk received
``ringtrader_risk_decisions_total``                counter    {outcome} approved | denied
``ringtrader_risk_denials_total``                  counter    {reason} every ``DENY_NAMES`` reason but ok
``ringtrader_risk_stop_exits_total``               counter    exits risk sent itself (stop, take profit, trail)
``ringtrader_risk_cancel_all_total``               counter    cancel-alls risk sent (breaker trips, commands)
``ringtrader_risk_state``                          gauge      {state} 1 for the trading state (ACTIVE,
                                                              REDUCE_ONLY, HALTED), 0 for the others
``ringtrader_risk_state_code``                     gauge      the same as a number: 0 ACTIVE, 1 REDUCE_ONLY,
                                                              2 HALTED (``core.risk_kernels``)
``ringtrader_risk_breaker_tripped``                gauge      {reason} 1 for the reason the breaker stands
                                                              tripped on, 0 for the others (all 0: not tripped)
``ringtrader_risk_breaker_trips_total``            counter    {reason} trips (when risk reports ``trips.<reason>``)
``ringtrader_position_base``                       gauge      {symbol} position, base asset units (short < 0)
``ringtrader_exposure_quote``                      gauge      {symbol} position x mid, quote (when risk reports
                                                              ``mark.<SYMBOL>``, the mid; none without a book)
``ringtrader_pnl_realized_quote``                  gauge      {symbol,method} gross realized P&L
``ringtrader_pnl_realized_net_quote``              gauge      {symbol,method} realized P&L net of fees
``ringtrader_pnl_unrealized_quote``                gauge      {symbol,method} at the mid (0 without a valid book)
``ringtrader_orders_sent_total``                   counter    orders sent to the venue (sim/live: send attempts,
                                                              a retry counts again) or paper venue (requests)
``ringtrader_fills_total``                         counter    fills (trades) reported
``ringtrader_order_rejects_total``                 counter    orders the venue / paper venue rejected
``ringtrader_order_cancels_total``                 counter    orders that ended canceled (paper; sim/live when
                                                              execution reports ``venue_canceled``)
``ringtrader_unknown_outcomes_total``              counter    orders whose outcome was unknown (sim/live)
``ringtrader_venue_connected``                     gauge      1 while the WebSocket API session is up (sim/live)
``ringtrader_venue_clock_offset_seconds``          gauge      venue clock - host clock (NTP-style midpoint)
``ringtrader_venue_weight_used``                   gauge      {client,window} REQUEST_WEIGHT used in the
                                                              current window: client feed (the venue's
                                                              X-MBX-USED-WEIGHT-1M) or execution (its limiter)
``ringtrader_venue_weight_limit``                  gauge      {client,window} the limit of that window
``ringtrader_venue_orders_used``                   gauge      {window} ORDERS counted in the current window
``ringtrader_venue_orders_limit``                  gauge      {window} the limit of that window
``ringtrader_venue_rate_limited_total``            counter    {status} venue answers 429 (paused) and 418 (banned)
``ringtrader_books``                               gauge      order books kept by the book stage
``ringtrader_books_valid``                         gauge      order books in sync with the venue
``ringtrader_feed_frames_total``                   counter    market-data frames the feed received
``ringtrader_feed_frames_rejected_total``          counter    frames the decoder dropped: malformed, hostile
                                                              (unknown symbol, absurd value or time, wrong
                                                              type, oversized), counted, never published
``ringtrader_feed_disconnects_total``              counter    market-stream connections lost
``ringtrader_feed_snapshot_failures_total``        counter    REST depth snapshots that failed
``ringtrader_book_resyncs_total``                  counter    books rebuilt from a snapshot (gap, lap, reconnect)
``ringtrader_book_chain_breaks_total``             counter    depth diffs that broke the update-id chain
``ringtrader_book_md_lost_total``                  counter    md records lost to a lapped book stage
``ringtrader_book_bar_gaps_capped_total``          counter    bar intervals skipped after a time jump over
                                                              ``bar_max_empty_run`` empty ones
=================================================  =========  ==============================================

P&L families carry every method: risk reports ``pnl.<method>.<kind>.<SYMBOL>``
(kind realized, realized_net, unrealized) for fifo, lifo and average, side by
side (a stage that reports only ``realized.<SYMBOL>`` ... is labelled with the
configured ``risk.pnl_method``). Exposure is the position at risk's mid
(``mark.<SYMBOL>``).

Deprecated (``legacy_names=True``; off by default, for an old dashboard):
``ringtrader_hop_latency_us`` (gauge {hop,quantile}, us) and
``ringtrader_venue_clock_offset_ms`` (gauge, ms). ``promtool`` flags both
(abbreviated units; a quantile label outside a summary); their successors are
``ringtrader_hop_latency_quantiles_seconds`` and
``ringtrader_venue_clock_offset_seconds``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    SummaryMetricFamily)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from core import records
from core.config import RINGS
from core.latency import I_COUNT, I_SUM, cumulative_counts
from core.risk_kernels import DENY_NAMES, STATE_NAMES, TRIP_NAMES
from ringbuffers.ring import Ring, segment_name

PREFIX = "ringtrader_"
_QUANTILES = (("0.5", "p50_us"), ("0.9", "p90_us"), ("0.99", "p99_us"), ("0.999", "p999_us"), ("1", "max_us"))
#: upper bounds (ns) of the latency histograms' ``le`` buckets: 1 us .. 100 ms, 1-2-5 per decade (+Inf added)
LATENCY_BUCKETS_NS = tuple(m * 10**e for e in range(3, 8) for m in (1, 2, 5)) + (100_000_000,)
_LE = tuple(floatToGoString(ns / 1e9) for ns in LATENCY_BUCKETS_NS) + ("+Inf",)
_FIXED = 1e8  # core.records.FIXED_SCALE: risk reports positions, prices and P&L in fixed point


def latency_buckets(h) -> list[tuple[str, int]]:
    """``[(le, cumulative count)]`` of a ``core.latency`` histogram array at ``LATENCY_BUCKETS_NS``, +Inf last."""
    cum = cumulative_counts(h, LATENCY_BUCKETS_NS).tolist()
    return list(zip(_LE, cum + [int(h[I_COUNT])]))


def window_label(ms: int) -> str:
    """A rate-limit window in ms as Binance names it: 1000 -> "1s", 10000 -> "10s", 60000 -> "1m", 86400000 -> "1d"."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class ViewCollector(Collector):
    """The families of the supervisor's view (processes, latency, stages): see the module docstring.

    ``view()`` returns the dict ``build_view`` made (or ``{}``); nothing here
    touches shared memory, so a test can hand it a crafted dict.
    ``legacy_names`` adds the deprecated ``_us``/``_ms`` families.
    """

    def __init__(self, view: Callable[[], dict], *, legacy_names: bool = False):
        self._view = view
        self.legacy_names = legacy_names

    def collect(self):
        view = self._view() or {}
        yield from _process_metrics(view)
        yield from _latency_metrics(view, self.legacy_names)
        yield from _signal_metrics(view.get("signal") or {})
        yield from _risk_metrics(view.get("risk") or {}, view.get("pnl_method") or "")
        yield from _execution_metrics(view.get("execution") or {}, view.get("feed") or {}, self.legacy_names)
        yield from _book_metrics(view.get("book") or {})
        yield from _feed_health_metrics(view.get("feed") or {}, view.get("book") or {})


class RingtraderCollector(ViewCollector):
    """Reads ring headers and the supervisor's worker view at every scrape (see the module docstring)."""

    def __init__(self, instance: str, view: Callable[[], dict], *, legacy_names: bool = False):
        super().__init__(view, legacy_names=legacy_names)
        self._lock = threading.Lock()  # a scrape never reads a ring that close() is unmapping
        self._rings: dict[str, tuple[Ring, tuple[str, ...]]] = {}
        try:
            for ring, (dtype_name, _producer, consumers) in RINGS.items():
                mon = Ring.attach(segment_name(instance, ring), records.ALL_DTYPES[dtype_name], "monitor")
                self._rings[ring] = (mon, consumers)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            for mon, _ in self._rings.values():
                mon.close()
            self._rings = {}

    def collect(self):
        with self._lock:
            yield from self._ring_metrics()
        yield from super().collect()

    def _ring_metrics(self):
        published = CounterMetricFamily(PREFIX + "ring_published", "Records published into the ring", labels=["ring"])
        stalls = CounterMetricFamily(PREFIX + "ring_stalls", "Publishes that found the ring full", labels=["ring"])
        capacity = GaugeMetricFamily(PREFIX + "ring_capacity", "Ring slots", labels=["ring"])
        consumed = CounterMetricFamily(PREFIX + "ring_consumed", "Records released by the consumer",
                                       labels=["ring", "consumer"])
        lag = GaugeMetricFamily(PREFIX + "ring_lag", "Records published but not yet consumed",
                                labels=["ring", "consumer"])
        lost = CounterMetricFamily(PREFIX + "ring_lost", "Records a lapped consumer lost (overwrite policy)",
                                   labels=["ring", "consumer"])
        lapped = CounterMetricFamily(PREFIX + "ring_lapped", "Times the consumer was lapped (overwrite policy)",
                                     labels=["ring", "consumer"])
        for ring, (mon, consumers) in self._rings.items():
            st = mon.stats()
            published.add_metric([ring], st.published)
            stalls.add_metric([ring], st.stalls)
            capacity.add_metric([ring], st.capacity)
            for i, c in enumerate(consumers):
                consumed.add_metric([ring, c], st.consumed[i])
                lag.add_metric([ring, c], max(0, st.published - st.consumed[i]))
                lost.add_metric([ring, c], st.lost[i])
                lapped.add_metric([ring, c], st.lapped[i])
        return [published, consumed, lag, stalls, lost, lapped, capacity]


def _process_metrics(view: dict):
    now = time.monotonic()
    up = GaugeMetricFamily(PREFIX + "process_up", "1 while the process is running", labels=["process"])
    restarts = CounterMetricFamily(PREFIX + "process_restarts", "Process restarts (every stage it hosts restarts "
                                                                 "with it)", labels=["process"])
    via_spare = CounterMetricFamily(PREFIX + "process_restarts_via_spare",
                                    "Process restarts served by the pre-warmed spare process", labels=["process"])
    hb_age = GaugeMetricFamily(PREFIX + "process_heartbeat_age_seconds",
                               "Seconds since the process's last heartbeat", labels=["process"])
    recovery = GaugeMetricFamily(PREFIX + "process_recovery_seconds",
                                 "Last restart: crash detected -> replacement ready", labels=["process"])
    idle = GaugeMetricFamily(PREFIX + "process_idle_ratio", "Share of its running time the process spent in its "
                                                            "idle strategy", labels=["process"])
    placed = GaugeMetricFamily(PREFIX + "stage_process", "1 for the process that hosts each stage (the "
                                                         "placement)", labels=["stage", "process"])
    for name, w in (view.get("processes") or {}).items():
        up.add_metric([name], 1 if w["up"] else 0)
        restarts.add_metric([name], w["restarts"])
        via_spare.add_metric([name], w["via_spare"])
        if w["last_hb"]:
            hb_age.add_metric([name], max(0.0, now - w["last_hb"]))
        if w["recovery_ms"] is not None:
            recovery.add_metric([name], w["recovery_ms"] / 1000.0)
        if w.get("idle_fraction") is not None:
            idle.add_metric([name], w["idle_fraction"])
        for st in w.get("stages") or ():
            placed.add_metric([st, name], 1)
    yield from (up, restarts, via_spare, hb_age, recovery, idle, placed)

    sp = view.get("spares") or {}
    yield CounterMetricFamily(PREFIX + "spare_started", "Spare worker processes started", value=sp.get("started", 0))
    yield CounterMetricFamily(PREFIX + "spare_used", "Spare processes that replaced a crashed worker",
                              value=sp.get("used", 0))
    yield GaugeMetricFamily(PREFIX + "spare_ready", "1 while a warmed spare waits for a crash",
                            value=sp.get("ready", 0))


def _latency_metrics(view: dict, legacy_names: bool):
    hists = view.get("latency_hists") or {}
    hist = HistogramMetricFamily(PREFIX + "hop_latency_seconds", "Per-hop latency since start, seconds (from the "
                                                                 "stages' log-linear histograms)", labels=["hop"])
    for hop, h in hists.items():
        if h[I_COUNT]:
            hist.add_metric([hop], latency_buckets(h), int(h[I_SUM]) / 1e9)
    yield hist
    quant = SummaryMetricFamily(PREFIX + "hop_latency_quantiles_seconds", "Per-hop latency percentiles since start, "
                                                                          "seconds (quantile 1 = max)", labels=["hop"])
    legacy = GaugeMetricFamily(PREFIX + "hop_latency_us", "Deprecated: ringtrader_hop_latency_quantiles_seconds. "
                                                          "Per-hop latency percentiles since start, microseconds "
                                                          "(quantile 1 = max)", labels=["hop", "quantile"])
    samples = CounterMetricFamily(PREFIX + "hop_latency_samples", "Latency samples per hop", labels=["hop"])
    for hop, s in (view.get("latency") or {}).items():
        if not s.get("count"):
            continue
        samples.add_metric([hop], s["count"])
        for q, key in _QUANTILES:  # the summary's us have 3 decimals: whole ns
            quant.samples.append(Sample(quant.name, {"hop": hop, "quantile": q}, round(s[key] * 1e-6, 9)))
            legacy.add_metric([hop, q], s[key])
        h = hists.get(hop)
        quant.add_metric([hop], s["count"], int(h[I_SUM]) / 1e9 if h is not None else s["mean_us"] * s["count"] / 1e6)
    yield quant
    if legacy_names:
        yield legacy
    yield samples


def _signal_metrics(sg: dict):
    sig = CounterMetricFamily(PREFIX + "signals", "Signals emitted by the signal stage, by strategy and reason "
                                                  "(since the hosting process started)", labels=["strategy", "reason"])
    sup = CounterMetricFamily(PREFIX + "signal_suppressed", "Strategy decisions suppressed, by strategy and "
                                                            "reason", labels=["strategy", "reason"])
    for key, v in sg.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in ("signals", "suppressed"):
            (sig if parts[0] == "signals" else sup).add_metric([parts[1], parts[2]], v)
    yield sig
    yield sup


def _risk_metrics(rk: dict, pnl_method: str):
    """Risk's families, when the risk stage reported (``RiskStage.counters()``); nothing before that."""
    if "approved" not in rk:
        return
    yield CounterMetricFamily(PREFIX + "risk_signals", "Signals the risk stage received", value=rk.get("signals", 0))
    dec = CounterMetricFamily(PREFIX + "risk_decisions", "Risk decisions on signals, by outcome", labels=["outcome"])
    dec.add_metric(["approved"], rk.get("approved", 0))
    dec.add_metric(["denied"], rk.get("denied", 0))
    yield dec
    den = CounterMetricFamily(PREFIX + "risk_denials", "Orders risk denied, by reason", labels=["reason"])
    for name in DENY_NAMES[1:]:  # risk reports the non-zero ones: the others are 0, so rate() sees the first
        den.add_metric([name], rk.get(f"denied.{name}", 0))
    yield den
    yield CounterMetricFamily(PREFIX + "risk_stop_exits", "Exit orders risk sent itself (stop loss, take profit, "
                                                          "trailing stop)", value=rk.get("exits", 0))
    yield CounterMetricFamily(PREFIX + "risk_cancel_all", "Cancel-all orders risk sent (breaker trip, operator)",
                              value=rk.get("cancel_all", 0))
    code = int(rk.get("state", 0))
    state = GaugeMetricFamily(PREFIX + "risk_state", "1 for the trading state risk is in, 0 for the others",
                              labels=["state"])
    for i, name in enumerate(STATE_NAMES):
        state.add_metric([name], int(i == code))
    yield state
    yield GaugeMetricFamily(PREFIX + "risk_state_code", "Trading state: 0 ACTIVE, 1 REDUCE_ONLY, 2 HALTED", value=code)
    trip = int(rk.get("trip", 0))
    tripped = GaugeMetricFamily(PREFIX + "risk_breaker_tripped", "1 for the reason the circuit breaker stands tripped "
                                                                 "on (all 0: not tripped)", labels=["reason"])
    for i, name in enumerate(TRIP_NAMES[1:], 1):
        tripped.add_metric([name], int(i == trip))
    yield tripped
    if any(k.startswith("trips.") for k in rk):
        trips = CounterMetricFamily(PREFIX + "risk_breaker_trips", "Circuit breaker trips, by reason",
                                    labels=["reason"])
        for name in TRIP_NAMES[1:]:
            trips.add_metric([name], rk.get(f"trips.{name}", 0))
        yield trips

    syms = [k.split(".", 1)[1] for k in rk if k.startswith("position.")]
    pos = GaugeMetricFamily(PREFIX + "position_base", "Position per instrument, base asset units (short < 0)",
                            labels=["symbol"])
    expo = GaugeMetricFamily(PREFIX + "exposure_quote", "Position x mid per instrument, quote asset units",
                             labels=["symbol"])
    for sym in syms:
        p = rk[f"position.{sym}"] / _FIXED
        pos.add_metric([sym], p)
        if rk.get(f"mark.{sym}", 0) > 0:  # 0: no valid book, no mid
            expo.add_metric([sym], p * (rk[f"mark.{sym}"] / _FIXED))
    yield pos
    if expo.samples:
        yield expo
    fams = {kind: GaugeMetricFamily(PREFIX + f"pnl_{kind}_quote", doc, labels=["symbol", "method"])
            for kind, doc in (("realized", "Gross realized P&L per instrument and method, quote asset units"),
                              ("realized_net", "Realized P&L net of fees per instrument and method, quote asset "
                                               "units"),
                              ("unrealized", "Unrealized P&L at the mid per instrument and method, quote asset "
                                             "units (0 without a valid book)"))}
    if any(k.startswith("pnl.") for k in rk):  # every method: pnl.<method>.<kind>.<SYMBOL>
        for key, v in rk.items():
            parts = key.split(".")
            if len(parts) == 4 and parts[0] == "pnl" and parts[2] in fams:
                fams[parts[2]].add_metric([parts[3], parts[1]], v / _FIXED)
    elif pnl_method:  # the configured method only: <kind>.<SYMBOL>
        for sym in syms:
            for kind, fam in fams.items():
                fam.add_metric([sym, pnl_method], rk.get(f"{kind}.{sym}", 0) / _FIXED)
    yield from fams.values()


def order_counts(ex: dict) -> dict | None:
    """Orders, fills, rejects, cancels, unknown outcomes from the execution stage's counters: ``venue_*``
    (sim/live, ``VenueExecutor``; ``None`` for what it does not report) or ``paper_*`` (paper); ``None`` for the
    pass-through execution (no venue, so no orders leave the process)."""
    if "paper_requests" in ex:
        return {"sent": ex["paper_requests"], "fills": ex.get("paper_taker_fills", 0) + ex.get("paper_maker_fills", 0),
                "rejects": sum(v for k, v in ex.items() if k.startswith("paper_rejected_")),
                "cancels": ex.get("paper_canceled", 0), "unknown": 0}
    if any(k.startswith("venue_") for k in ex):
        return {"sent": ex.get("venue_sent", 0), "fills": ex.get("venue_fills", 0),
                "rejects": ex.get("venue_rejects", 0), "cancels": ex.get("venue_canceled"),
                "unknown": ex.get("venue_unknown_outcomes", 0)}
    return None


def _execution_metrics(ex: dict, feed: dict, legacy_names: bool):
    n = order_counts(ex)
    if n is not None:
        for key, name, doc in (("sent", "orders_sent", "Orders sent to the venue (sim/live: send attempts, a retry "
                                                       "counts again) or to the paper venue"),
                               ("fills", "fills", "Fills (trades) of our orders"),
                               ("rejects", "order_rejects", "Orders the venue rejected"),
                               ("cancels", "order_cancels", "Orders that ended canceled"),
                               ("unknown", "unknown_outcomes", "Orders whose outcome was unknown once sent "
                                                               "(settled by a query)")):
            if n[key] is not None:
                yield CounterMetricFamily(PREFIX + name, doc, value=n[key])
    if "venue_connected" in ex:
        yield GaugeMetricFamily(PREFIX + "venue_connected", "1 while the WebSocket API session is up",
                                value=ex["venue_connected"])
    if "clock_offset_ms" in ex:
        yield GaugeMetricFamily(PREFIX + "venue_clock_offset_seconds", "Venue clock minus this host's (NTP-style "
                                                                       "midpoint of the venue's time), seconds",
                                value=ex["clock_offset_ms"] / 1000.0)
        if legacy_names:
            yield GaugeMetricFamily(PREFIX + "venue_clock_offset_ms", "Deprecated: ringtrader_venue_clock_offset_"
                                                                      "seconds. Venue clock minus this host's, ms",
                                    value=ex["clock_offset_ms"])
    if "venue_connected" in ex:  # sim/live: the venue's answers to our pacing (must stay 0) and bans
        rl = CounterMetricFamily(PREFIX + "venue_rate_limited", "Venue answers 429 (paused new orders) and 418 "
                                                                "(banned: trading halted)", labels=["status"])
        rl.add_metric(["429"], ex.get("venue_retries_429", 0))
        rl.add_metric(["418"], ex.get("venue_halts", 0))
        yield rl
    yield from _rate_limit_metrics(ex, feed)


def _book_metrics(book: dict):
    """Books the book stage keeps and how many are valid (in sync with the venue)."""
    if "books" in book:
        yield GaugeMetricFamily(PREFIX + "books", "Order books kept by the book stage", value=book["books"])
        yield GaugeMetricFamily(PREFIX + "books_valid", "Order books in sync with the venue (snapshot + diffs)",
                                value=book.get("books_valid", 0))


#: (stage, counter, family, help) of the feed's and the book's health counters (folded across restarts)
_HEALTH = (
    ("feed", "frames", "feed_frames", "Market-data frames the feed received"),
    ("feed", "decode_errors_total", "feed_frames_rejected", "Frames the decoder dropped (malformed or hostile: "
                                                            "unknown symbol, absurd value or time, wrong type, "
                                                            "oversized)"),
    ("feed", "disconnects", "feed_disconnects", "Market-stream connections lost"),
    ("feed", "snapshot_failures", "feed_snapshot_failures", "REST depth snapshots that failed"),
    ("book", "resyncs", "book_resyncs", "Books rebuilt from a snapshot (a gap, a lap, a reconnect)"),
    ("book", "chain_breaks", "book_chain_breaks", "Depth diffs that broke the update-id chain"),
    ("book", "md_lost", "book_md_lost", "md records lost to a lapped book stage"),
    ("book", "bar_gaps_capped", "book_bar_gaps_capped", "Bar intervals skipped after a time jump over "
                                                         "bar_max_empty_run empty ones"),
)


def _feed_health_metrics(feed: dict, book: dict):
    """What the feed and the book dropped, lost or rebuilt: hostile input is counted, and shows here."""
    stages = {"feed": feed, "book": book}
    for stage, key, name, doc in _HEALTH:
        if key in stages[stage]:
            yield CounterMetricFamily(PREFIX + name, doc, value=stages[stage][key])


def _rate_limit_metrics(ex: dict, feed: dict):
    """The venue's REQUEST_WEIGHT and ORDERS windows: the feed's last ``X-MBX-USED-WEIGHT-1M`` and the
    executor's limiter (``weight_used.<ms>``, ``weight_limit.<ms>``, ``orders_used.<ms>``, ``orders_limit.<ms>``
    in its counters, ``<ms>`` the window)."""
    fams = {}
    for what, doc in (("weight_used", "REQUEST_WEIGHT used in the current window (feed: the venue's count at its "
                                      "last snapshot; execution: its limiter's count)"),
                      ("weight_limit", "REQUEST_WEIGHT limit of the window"),
                      ("orders_used", "ORDERS counted in the current window (the executor's limiter)"),
                      ("orders_limit", "ORDERS limit of the window")):
        fams[what] = GaugeMetricFamily(PREFIX + "venue_" + what, doc,
                                       labels=["client", "window"] if what.startswith("weight") else ["window"])
    if "rest_used_weight_1m" in feed:
        fams["weight_used"].add_metric(["feed", "1m"], feed["rest_used_weight_1m"])
    for key, v in ex.items():
        what, _, ms = key.partition(".")
        if what in fams and ms.isdigit():
            window = window_label(int(ms))
            fams[what].add_metric(["execution", window] if what.startswith("weight") else [window], v)
    yield from (f for f in fams.values() if f.samples)


class MetricsServer:
    """The endpoint: ``/metrics`` on ``host:port`` (port 0 = any free port, see ``.port``).

    Raises ``OSError`` when it cannot listen (port in use, bad address); the
    supervisor turns that into one warning and runs on without metrics.
    """

    def __init__(self, instance: str, view: Callable[[], dict], host: str, port: int, *, legacy_names: bool = False):
        self.collector = RingtraderCollector(instance, view, legacy_names=legacy_names)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError:
            self.collector.close()
            raise
        self.port = self._server.server_port

    def close(self) -> None:
        """Stop serving (returns within the server's 0.5 s poll interval) and detach from the rings."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
        self.collector.close()

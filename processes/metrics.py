"""Prometheus metrics endpoint of the supervisor.

``MetricsServer(instance, view, host, port)`` serves ``/metrics`` (the
``prometheus_client`` HTTP server, in a daemon thread of the supervisor) from
one custom collector, ``RingtraderCollector``, evaluated at scrape time:

Ring counters come straight from the shared-memory headers (the collector
attaches every ring as a read-only ``monitor``), so they are exact at the
moment of the scrape and cost the workers nothing:

=======================================  =========  ===========================================
``ringtrader_ring_published_total``      counter    {ring} records published
``ringtrader_ring_consumed_total``       counter    {ring,consumer} the consumer's cursor
``ringtrader_ring_lag``                  gauge      {ring,consumer} published - consumed
``ringtrader_ring_stalls_total``         counter    {ring} publishes that found the ring full
``ringtrader_ring_lost_total``           counter    {ring,consumer} records a lapped consumer lost
``ringtrader_ring_lapped_total``         counter    {ring,consumer} times the consumer was lapped
``ringtrader_ring_capacity``             gauge      {ring} slots
=======================================  =========  ===========================================

Process and latency figures come from ``view()``, a dict the supervisor
rebuilds from its heartbeats twice a second (replaced whole, so the scrape
thread never sees a half-built one):

==============================================  =======  ==============================================
``ringtrader_process_up``                       gauge    {process} 1 while running and heartbeating
``ringtrader_process_restarts_total``           counter  {process} (its stages restart with it)
``ringtrader_process_restarts_via_spare_total`` counter  {process} restarts served by the warm spare
``ringtrader_process_heartbeat_age_seconds``    gauge    {process} since its last heartbeat
``ringtrader_process_recovery_seconds``         gauge    {process} last crash detected -> replacement ready
``ringtrader_process_idle_ratio``               gauge    {process} share of its time in its idle strategy
``ringtrader_stage_process``                    gauge    {stage,process} 1: the placement
``ringtrader_spare_started_total``              counter  spare processes started
``ringtrader_spare_used_total``                 counter  spares that became a process
``ringtrader_spare_ready``                      gauge    1 while a warmed spare is waiting
``ringtrader_hop_latency_us``                   gauge    {hop,quantile} cumulative since start (0.5 ... 0.999; 1 = max)
``ringtrader_hop_latency_samples_total``        counter  {hop}
``ringtrader_signals_total``                    counter  {strategy,reason} signals emitted (signal stage)
``ringtrader_signal_suppressed_total``          counter  {strategy,reason} decisions suppressed: book_invalid,
                                                         stale, warmup, model_budget, bad_score
``ringtrader_venue_clock_offset_ms``            gauge    venue clock - host clock (sim/live execution), ms
==============================================  =======  ==============================================
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core import records
from core.config import RINGS
from ringbuffers.ring import Ring, segment_name

PREFIX = "ringtrader_"
_QUANTILES = (("0.5", "p50_us"), ("0.9", "p90_us"), ("0.99", "p99_us"), ("0.999", "p999_us"), ("1", "max_us"))


class RingtraderCollector(Collector):
    """Reads ring headers and the supervisor's worker view at every scrape (see the module docstring)."""

    def __init__(self, instance: str, view: Callable[[], dict]):
        self._view = view
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
        yield from self._worker_metrics(self._view() or {})

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

    @staticmethod
    def _worker_metrics(view: dict):
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
        yield CounterMetricFamily(PREFIX + "spare_started", "Spare worker processes started",
                                  value=sp.get("started", 0))
        yield CounterMetricFamily(PREFIX + "spare_used", "Spare processes that replaced a crashed worker",
                                  value=sp.get("used", 0))
        yield GaugeMetricFamily(PREFIX + "spare_ready", "1 while a warmed spare waits for a crash",
                                value=sp.get("ready", 0))

        lat = GaugeMetricFamily(PREFIX + "hop_latency_us", "Per-hop latency percentiles since start, microseconds "
                                                          "(quantile 1 = max)", labels=["hop", "quantile"])
        samples = CounterMetricFamily(PREFIX + "hop_latency_samples", "Latency samples per hop", labels=["hop"])
        for hop, s in (view.get("latency") or {}).items():
            if not s.get("count"):
                continue
            samples.add_metric([hop], s["count"])
            for q, key in _QUANTILES:
                lat.add_metric([hop, q], s[key])
        yield lat
        yield samples

        sig = CounterMetricFamily(PREFIX + "signals", "Signals emitted by the signal stage, by strategy and reason "
                                                      "(since the hosting process started)",
                                  labels=["strategy", "reason"])
        sup = CounterMetricFamily(PREFIX + "signal_suppressed", "Strategy decisions suppressed, by strategy and "
                                                                "reason", labels=["strategy", "reason"])
        for key, v in (view.get("signal") or {}).items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] in ("signals", "suppressed"):
                (sig if parts[0] == "signals" else sup).add_metric([parts[1], parts[2]], v)
        yield sig
        yield sup
        ex = view.get("execution") or {}
        if "clock_offset_ms" in ex:
            clk = GaugeMetricFamily(PREFIX + "venue_clock_offset_ms", "Venue clock minus this host's (NTP-style "
                                                                      "midpoint of /api/v3/time), ms")
            clk.add_metric([], ex["clock_offset_ms"])
            yield clk


class MetricsServer:
    """The endpoint: ``/metrics`` on ``host:port`` (port 0 = any free port, see ``.port``).

    Raises ``OSError`` when it cannot listen (port in use, bad address); the
    supervisor turns that into one warning and runs on without metrics.
    """

    def __init__(self, instance: str, view: Callable[[], dict], host: str, port: int):
        self.collector = RingtraderCollector(instance, view)
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

"""The metrics collector's families, from a crafted supervisor view (no worker process).

What a scraper sees: the exposition text (``generate_latest``) parsed back,
every family with its type, labels and values; the latency histograms against
a brute-force count over the samples recorded with ``core.latency``; and
``promtool check metrics`` (Debian's ``prometheus`` package; CI installs it)
on the whole endpoint, rings included.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core import records
from core.config import RINGS
from core.latency import I_COUNT, LatencyHistogram, LatencySet, bucket_uppers, cumulative_counts
from core.risk_kernels import DENY_NAMES, STATE_NAMES, TRIP_NAMES
from processes.metrics import LATENCY_BUCKETS_NS, RingtraderCollector, ViewCollector, window_label
from processes.supervisor.state import Proc
from processes.supervisor.summary import build_view
from ringbuffers.ring import Ring, segment_name

LE = [b / 1e9 for b in LATENCY_BUCKETS_NS] + [float("inf")]


def ref_upper(v: int) -> int:
    """The log-linear layout written out: values below 64 ns exact, above that 32 buckets per power of two;
    the largest value of the bucket that holds ``v`` (negative values are recorded as 0)."""
    v = max(v, 0)
    if v < 64:
        return v
    width = 1 << (v.bit_length() - 1 - 5)
    return (v // width + 1) * width - 1


def samples_ns() -> np.ndarray:
    """Log-uniform values from 1 ns to ~3 s, every value within 40 ns of each bound, a bucket's width around
    each bound, 0 and negatives (a clock that went backwards)."""
    rng = np.random.default_rng(7)
    vals = [(10 ** rng.uniform(0, 9.5, 20_000)).astype(np.int64), np.array([-5, -1, 0, 1, 63, 64], np.int64)]
    for b in LATENCY_BUCKETS_NS:
        vals.append(np.arange(b - 40, b + 41, dtype=np.int64))
        vals.append(np.array([b * 31 // 32, b * 33 // 32, b - b // 32, b + b // 32], np.int64))
    return np.concatenate(vals)


def hist_of(values: np.ndarray) -> np.ndarray:
    h = LatencyHistogram()
    h.record_many(values)
    return h.h


def summary_of(h: np.ndarray) -> dict:
    return LatencyHistogram(h).summary()


RISK = {"state": 1, "trip": 5, "signals": 40, "approved": 30, "denied": 10, "exits": 2, "cancel_all": 1,
        "fills": 12, "rejects": 1, "denied.max_position": 7, "denied.rate_1s": 3,
        "position.BTCUSDT": 150_000, "realized.BTCUSDT": -12_345_000_000, "realized_net.BTCUSDT": -12_500_000_000,
        "unrealized.BTCUSDT": 250_000_000, "avg_entry.BTCUSDT": 6_000_000_000_000,
        "position.ETHUSDT": -2_000_000, "realized.ETHUSDT": 0, "realized_net.ETHUSDT": 0, "unrealized.ETHUSDT": 0,
        "avg_entry.ETHUSDT": 0}
VENUE = {"venue_sent": 33, "venue_acked": 31, "venue_fills": 12, "venue_rejects": 2, "venue_unknown_outcomes": 1,
         "venue_connected": 1, "clock_offset_ms": -4.5, "reconciled": 1,
         "weight_used.60000": 44, "weight_limit.60000": 6000, "orders_used.10000": 3, "orders_limit.10000": 100,
         "orders_used.86400000": 33, "orders_limit.86400000": 200_000}
PAPER = {"paper_requests": 20, "paper_accepted": 17, "paper_rejected_filter": 2, "paper_rejected_no_book": 1,
         "paper_taker_fills": 9, "paper_maker_fills": 4, "paper_canceled": 3, "paper_expired": 1, "reconciled": 1}


def make_view(**over) -> dict:
    hists = {"feed": hist_of(np.array([900, 1500, 2500], np.int64)), "end_to_end": hist_of(samples_ns()),
             "tick_to_order": hist_of(np.array([40_000, 60_000], np.int64)), "ack_rtt": hist_of(np.array([], np.int64))}
    view = {"processes": {"pipeline": {"up": True, "restarts": 2, "last_hb": time.monotonic(), "recovery_ms": 120.0,
                                       "via_spare": 1, "stages": ["feed", "book", "signal"], "idle_fraction": 0.25},
                          "trading": {"up": False, "restarts": 0, "last_hb": 0.0, "recovery_ms": None,
                                      "via_spare": 0, "stages": ["risk", "execution"], "idle_fraction": None}},
            "latency": {hop: summary_of(h) for hop, h in hists.items()}, "latency_hists": hists,
            "signal": {"read": 9, "signals.mean_reversion.rsi_oversold": 4, "suppressed.mean_reversion.warmup": 6},
            "risk": dict(RISK), "execution": dict(VENUE), "feed": {"rest_used_weight_1m": 21, "md": 5},
            "pnl_method": "fifo", "spares": {"started": 2, "used": 1, "failed": 0, "ready": 1}}
    view.update(over)
    return view


def exposition(collector) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return generate_latest(reg).decode()


def scrape(view: dict, legacy_names: bool = False) -> dict:
    """``{family name: (type, {(sample name, ((label, value), ...)): value})}`` as a scraper parses it."""
    out = {}
    for fam in text_string_to_metric_families(exposition(ViewCollector(lambda: view, legacy_names=legacy_names))):
        out[fam.name] = (fam.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples})
    return out


def values(fams: dict, family: str, sample: str | None = None) -> dict:
    """``{labels dict as a sorted tuple of values: value}`` of one family's samples (``sample``: its name)."""
    typ, smp = fams[family]
    name = sample or family + ("_total" if typ == "counter" else "")
    return {tuple(v for _, v in labels): val for (n, labels), val in smp.items() if n == name}


def label_names(fams: dict, family: str) -> set:
    return {k for (_n, labels) in fams[family][1] for k, _ in labels} - {"le", "quantile"}


# --- every family -------------------------------------------------------------------------------------------------
FAMILIES = {  # name as parsed (counters without _total) -> (type, label names)
    "ringtrader_process_up": ("gauge", {"process"}),
    "ringtrader_process_restarts": ("counter", {"process"}),
    "ringtrader_process_restarts_via_spare": ("counter", {"process"}),
    "ringtrader_process_heartbeat_age_seconds": ("gauge", {"process"}),
    "ringtrader_process_recovery_seconds": ("gauge", {"process"}),
    "ringtrader_process_idle_ratio": ("gauge", {"process"}),
    "ringtrader_stage_process": ("gauge", {"stage", "process"}),
    "ringtrader_spare_started": ("counter", set()),
    "ringtrader_spare_used": ("counter", set()),
    "ringtrader_spare_ready": ("gauge", set()),
    "ringtrader_hop_latency_seconds": ("histogram", {"hop"}),
    "ringtrader_hop_latency_quantiles_seconds": ("summary", {"hop"}),
    "ringtrader_hop_latency_samples": ("counter", {"hop"}),
    "ringtrader_signals": ("counter", {"strategy", "reason"}),
    "ringtrader_signal_suppressed": ("counter", {"strategy", "reason"}),
    "ringtrader_risk_signals": ("counter", set()),
    "ringtrader_risk_decisions": ("counter", {"outcome"}),
    "ringtrader_risk_denials": ("counter", {"reason"}),
    "ringtrader_risk_stop_exits": ("counter", set()),
    "ringtrader_risk_cancel_all": ("counter", set()),
    "ringtrader_risk_state": ("gauge", {"state"}),
    "ringtrader_risk_state_code": ("gauge", set()),
    "ringtrader_risk_breaker_tripped": ("gauge", {"reason"}),
    "ringtrader_position_base": ("gauge", {"symbol"}),
    "ringtrader_pnl_realized_quote": ("gauge", {"symbol", "method"}),
    "ringtrader_pnl_realized_net_quote": ("gauge", {"symbol", "method"}),
    "ringtrader_pnl_unrealized_quote": ("gauge", {"symbol", "method"}),
    "ringtrader_orders_sent": ("counter", set()),
    "ringtrader_fills": ("counter", set()),
    "ringtrader_order_rejects": ("counter", set()),
    "ringtrader_unknown_outcomes": ("counter", set()),
    "ringtrader_venue_connected": ("gauge", set()),
    "ringtrader_venue_rate_limited": ("counter", {"status"}),
    "ringtrader_venue_clock_offset_seconds": ("gauge", set()),
    "ringtrader_venue_weight_used": ("gauge", {"client", "window"}),
    "ringtrader_venue_weight_limit": ("gauge", {"client", "window"}),
    "ringtrader_venue_orders_used": ("gauge", {"window"}),
    "ringtrader_venue_orders_limit": ("gauge", {"window"}),
}


def test_a_venue_view_exports_every_family_with_its_type_and_labels_and_nothing_else():
    fams = scrape(make_view())
    assert {n: (t, label_names(fams, n)) for n, (t, _) in fams.items()} == FAMILIES


def test_process_and_spare_families_carry_the_view_values():
    fams = scrape(make_view())
    assert values(fams, "ringtrader_process_up") == {("pipeline",): 1, ("trading",): 0}
    assert values(fams, "ringtrader_process_restarts") == {("pipeline",): 2, ("trading",): 0}
    assert values(fams, "ringtrader_process_recovery_seconds") == {("pipeline",): 0.12}
    assert values(fams, "ringtrader_process_idle_ratio") == {("pipeline",): 0.25}  # per process: no per-stage idle
    assert 0 <= values(fams, "ringtrader_process_heartbeat_age_seconds")[("pipeline",)] < 5
    assert set(values(fams, "ringtrader_stage_process")) == {
        ("pipeline", "feed"), ("pipeline", "book"), ("pipeline", "signal"), ("trading", "risk"),
        ("trading", "execution")}
    assert values(fams, "ringtrader_spare_used") == {(): 1} and values(fams, "ringtrader_spare_ready") == {(): 1}


def test_signal_families_are_by_strategy_and_reason():
    fams = scrape(make_view())
    assert values(fams, "ringtrader_signals") == {("rsi_oversold", "mean_reversion"): 4}
    assert values(fams, "ringtrader_signal_suppressed") == {("warmup", "mean_reversion"): 6}


# --- latency --------------------------------------------------------------------------------------------------------
def test_hop_histogram_buckets_match_a_brute_force_count_over_the_recorded_samples():
    vals = samples_ns()
    fams = scrape(make_view())
    typ, smp = fams["ringtrader_hop_latency_seconds"]
    assert typ == "histogram"
    buckets = sorted(((float(dict(lb)["le"]), v) for (n, lb), v in smp.items()
                      if n.endswith("_bucket") and dict(lb)["hop"] == "end_to_end"))
    assert [le for le, _ in buckets] == LE
    counts = [v for _, v in buckets]
    assert all(b >= a for a, b in zip(counts, counts[1:])), "cumulative buckets must not decrease"
    uppers = np.array([ref_upper(int(v)) for v in vals])
    clamped = np.maximum(vals, 0)
    for bound, got in zip(LATENCY_BUCKETS_NS, counts):
        # the rule: a value counts under a bound when its whole source bucket lies at or below it
        assert got == int(np.sum(uppers <= bound)), f"le={bound} ns"
        # so never more than the values at or below the bound, never fewer than those 1/32 below it
        assert int(np.sum(clamped <= bound * 31 // 32)) <= got <= int(np.sum(clamped <= bound))
    assert counts[-1] == len(vals)
    assert smp[("ringtrader_hop_latency_seconds_count", (("hop", "end_to_end"),))] == len(vals)
    assert smp[("ringtrader_hop_latency_seconds_sum", (("hop", "end_to_end"),))] == int(clamped.sum()) / 1e9


def test_a_source_bucket_that_straddles_a_bound_counts_under_the_next_bound():
    # 1 us = 1000 ns lies inside the source bucket 992..1007 ns (16 ns wide between 512 and 1023 ns)
    assert ref_upper(995) == 1007 and ref_upper(991) == 991
    fams = scrape(make_view(latency_hists={"feed": hist_of(np.array([991, 995, 1000, 1007, 1008], np.int64))},
                            latency={}))
    smp = fams["ringtrader_hop_latency_seconds"][1]
    at = {float(dict(lb)["le"]): v for (n, lb), v in smp.items() if n.endswith("_bucket")}
    assert at[1e-06] == 1  # 991 only: 995 and 1000 ns are <= 1 us but share a bucket reaching 1007 ns
    assert at[2e-06] == 5


def test_cumulative_counts_is_exact_on_bucket_edges_and_rejects_unsorted_bounds():
    up = bucket_uppers()
    top = int(np.argmax(up))  # the bucket that holds INT64_MAX: the ones past it are unreachable, capped
    assert top == 1887 and np.all(np.diff(up[:top + 1]) > 0) and np.all(up[top:] == np.iinfo(np.int64).max)
    assert up[0] == 0 and up[63] == 63 and up[64] == 65 and up[65] == 67
    h = hist_of(np.array([65, 66, 67], np.int64))  # buckets 64..65 and 66..67
    assert cumulative_counts(h, [64, 65, 66, 67]).tolist() == [0, 1, 1, 3]
    with pytest.raises(ValueError, match="strictly ascending"):
        cumulative_counts(h, [2000, 1000])


def test_hops_without_samples_are_left_out_and_the_venue_hops_are_exported():
    fams = scrape(make_view())
    hops = {dict(lb)["hop"] for (n, lb) in fams["ringtrader_hop_latency_seconds"][1]}
    assert hops == {"feed", "end_to_end", "tick_to_order"}  # ack_rtt has no sample
    assert values(fams, "ringtrader_hop_latency_samples") == {("end_to_end",): len(samples_ns()), ("feed",): 3,
                                                              ("tick_to_order",): 2}


def test_quantile_summary_is_in_seconds_beside_the_histogram():
    view = make_view()
    fams = scrape(view)
    q = values(fams, "ringtrader_hop_latency_quantiles_seconds")
    s = view["latency"]["end_to_end"]
    assert q[("end_to_end", "0.5")] == pytest.approx(s["p50_us"] / 1e6, abs=1e-9)
    assert q[("end_to_end", "1")] == pytest.approx(s["max_us"] / 1e6, abs=1e-9)
    cnt = values(fams, "ringtrader_hop_latency_quantiles_seconds", "ringtrader_hop_latency_quantiles_seconds_count")
    assert cnt[("end_to_end",)] == s["count"]


def test_legacy_names_add_the_us_and_ms_families_with_their_old_values():
    view = make_view()
    old = scrape(view, legacy_names=True)
    assert set(old) - set(scrape(view)) == {"ringtrader_hop_latency_us", "ringtrader_venue_clock_offset_ms"}
    us = values(old, "ringtrader_hop_latency_us")
    assert us[("end_to_end", "0.99")] == view["latency"]["end_to_end"]["p99_us"]
    assert values(old, "ringtrader_venue_clock_offset_ms") == {(): -4.5}


# --- risk -------------------------------------------------------------------------------------------------------------
def test_risk_denials_cover_every_reason_and_decisions_split_by_outcome():
    fams = scrape(make_view())
    den = values(fams, "ringtrader_risk_denials")
    assert set(den) == {(n,) for n in DENY_NAMES[1:]}
    assert den[("max_position",)] == 7 and den[("rate_1s",)] == 3 and sum(den.values()) == 10
    assert values(fams, "ringtrader_risk_decisions") == {("approved",): 30, ("denied",): 10}
    assert values(fams, "ringtrader_risk_signals") == {(): 40}
    assert values(fams, "ringtrader_risk_stop_exits") == {(): 2}


def test_trading_state_and_breaker_are_one_hot_and_trips_need_risk_to_report_them():
    fams = scrape(make_view())
    assert values(fams, "ringtrader_risk_state") == {(n,): int(n == "REDUCE_ONLY") for n in STATE_NAMES}
    assert values(fams, "ringtrader_risk_state_code") == {(): 1}
    assert values(fams, "ringtrader_risk_breaker_tripped") == {(n,): int(n == "feed_stale") for n in TRIP_NAMES[1:]}
    assert "ringtrader_risk_breaker_trips" not in fams  # RiskStage.counters() does not report trips.<reason> yet
    fams = scrape(make_view(risk=dict(RISK, **{"trips.feed_stale": 2, "trips.daily_loss": 1})))
    assert values(fams, "ringtrader_risk_breaker_trips") == {
        (n,): {"feed_stale": 2, "daily_loss": 1}.get(n, 0) for n in TRIP_NAMES[1:]}


def test_positions_are_base_units_and_pnl_is_quote_labelled_with_the_configured_method():
    fams = scrape(make_view())
    assert values(fams, "ringtrader_position_base") == {("BTCUSDT",): 0.0015, ("ETHUSDT",): -0.02}
    assert values(fams, "ringtrader_pnl_realized_quote") == {("fifo", "BTCUSDT"): -123.45, ("fifo", "ETHUSDT"): 0}
    assert values(fams, "ringtrader_pnl_realized_net_quote")[("fifo", "BTCUSDT")] == -125.0
    assert values(fams, "ringtrader_pnl_unrealized_quote")[("fifo", "BTCUSDT")] == 2.5
    assert "ringtrader_exposure_quote" not in fams  # risk reports no mark (mid) yet


def test_every_method_and_exposure_once_risk_reports_them():
    risk = dict(RISK, **{"mark.BTCUSDT": 6_100_000_000_000, "mark.ETHUSDT": 300_000_000_000, "mark.SOLUSDT": 0,
                         "position.SOLUSDT": 0})
    for m, r in (("fifo", -100), ("lifo", -90), ("average", -95)):
        risk.update({f"pnl.{m}.realized.BTCUSDT": r * 10**8, f"pnl.{m}.realized_net.BTCUSDT": (r - 1) * 10**8,
                     f"pnl.{m}.unrealized.BTCUSDT": 10**8})
    fams = scrape(make_view(risk=risk))
    assert values(fams, "ringtrader_pnl_realized_quote") == {("fifo", "BTCUSDT"): -100, ("lifo", "BTCUSDT"): -90,
                                                             ("average", "BTCUSDT"): -95}
    assert values(fams, "ringtrader_pnl_realized_net_quote")[("lifo", "BTCUSDT")] == -91
    assert values(fams, "ringtrader_exposure_quote") == {("BTCUSDT",): pytest.approx(0.0015 * 61_000),
                                                         ("ETHUSDT",): pytest.approx(-0.02 * 3000)}  # SOL: no mid


def test_no_risk_family_before_risk_reports():
    fams = scrape(make_view(risk={}))
    assert not [n for n in fams if n.startswith(("ringtrader_risk_", "ringtrader_position", "ringtrader_pnl"))]


# --- execution ----------------------------------------------------------------------------------------------------
def test_venue_execution_orders_clock_and_rate_limits():
    fams = scrape(make_view())
    assert values(fams, "ringtrader_orders_sent") == {(): 33}
    assert values(fams, "ringtrader_fills") == {(): 12}
    assert values(fams, "ringtrader_order_rejects") == {(): 2}
    assert values(fams, "ringtrader_unknown_outcomes") == {(): 1}
    assert "ringtrader_order_cancels" not in fams  # the executor does not count canceled orders yet
    assert values(fams, "ringtrader_venue_clock_offset_seconds") == {(): -0.0045}
    assert values(fams, "ringtrader_venue_weight_used") == {("feed", "1m"): 21, ("execution", "1m"): 44}
    assert values(fams, "ringtrader_venue_weight_limit") == {("execution", "1m"): 6000}
    assert values(fams, "ringtrader_venue_orders_used") == {("10s",): 3, ("1d",): 33}
    assert values(fams, "ringtrader_venue_orders_limit") == {("10s",): 100, ("1d",): 200_000}
    fams = scrape(make_view(execution=dict(VENUE, venue_canceled=4)))
    assert values(fams, "ringtrader_order_cancels") == {(): 4}


def test_paper_execution_counts_requests_fills_rejects_and_cancels():
    fams = scrape(make_view(execution=dict(PAPER), feed={}))
    assert values(fams, "ringtrader_orders_sent") == {(): 20}
    assert values(fams, "ringtrader_fills") == {(): 13}
    assert values(fams, "ringtrader_order_rejects") == {(): 3}
    assert values(fams, "ringtrader_order_cancels") == {(): 3}
    assert values(fams, "ringtrader_unknown_outcomes") == {(): 0}
    assert not [n for n in fams if n.startswith("ringtrader_venue_")]


def test_pass_through_execution_has_no_order_families():
    fams = scrape(make_view(execution={"reconciled": 1}))
    assert not {"ringtrader_orders_sent", "ringtrader_fills", "ringtrader_order_rejects"} & set(fams)


def test_window_labels_read_as_binance_names_them():
    assert [window_label(ms) for ms in (1000, 10_000, 60_000, 3_600_000, 86_400_000, 1500)] == [
        "1s", "10s", "1m", "1h", "1d", "1500ms"]


# --- the view the supervisor builds ---------------------------------------------------------------------------------
def test_build_view_gives_the_collector_merged_histograms_stage_counters_and_the_pnl_method():
    done, live = LatencySet(), LatencySet()
    done.hop("end_to_end").record_many(np.array([1500, 2500], np.int64))
    live.hop("end_to_end").record_many(np.array([700], np.int64))
    p = Proc(name="trading", stages=("risk", "execution"), proc=SimpleNamespace(exitcode=None), state="running",
             last_hb=time.monotonic(), lat_done=done, lat_wire=live.to_wire(),
             stage_stats={"risk": dict(RISK), "execution": dict(VENUE)})
    sup = SimpleNamespace(procs={"trading": p}, spare=None, spare_stats={"started": 0, "used": 0, "failed": 0},
                          cfg=SimpleNamespace(risk=SimpleNamespace(pnl_method="lifo")))
    view = build_view(sup)
    assert view["latency_hists"]["end_to_end"][I_COUNT] == 3
    assert view["latency_hists"]["end_to_end"] is not done.hists["end_to_end"].h  # a copy: the view is never mutated
    fams = scrape(view)
    at = {float(dict(lb)["le"]): v for (n, lb), v in fams["ringtrader_hop_latency_seconds"][1].items()
          if n.endswith("_bucket")}
    assert at[1e-06] == 1 and at[2e-06] == 2 and at[5e-06] == 3
    assert values(fams, "ringtrader_pnl_realized_quote")[("lifo", "BTCUSDT")] == -123.45
    assert values(fams, "ringtrader_orders_sent") == {(): 33}


# --- promtool -------------------------------------------------------------------------------------------------------
def promtool_check(text: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus; "
                    ".ci/run installs it) to check the exposition")
    return subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


@pytest.fixture
def rings():
    """Every ring of ``RINGS`` in shared memory under a unique instance (the collector attaches them)."""
    inst = f"mf-{uuid.uuid4().hex[:10]}"
    made = []
    try:
        for ring, (dtype_name, _producer, consumers) in RINGS.items():
            made.append(Ring.create(segment_name(inst, ring), records.ALL_DTYPES[dtype_name], 64, len(consumers)))
        yield inst
    finally:
        for r in made:
            r.close()
            r.unlink()


def test_promtool_finds_no_problem_in_the_whole_endpoint(rings):
    col = RingtraderCollector(rings, make_view, legacy_names=False)
    try:
        text = exposition(col)
    finally:
        col.close()
    assert "ringtrader_ring_published_total" in text and "ringtrader_hop_latency_seconds_bucket" in text
    r = promtool_check(text)
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool_check(exposition(ViewCollector(dict, legacy_names=False)))  # before the first heartbeat
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_flags_only_the_deprecated_names():
    r = promtool_check(exposition(ViewCollector(make_view, legacy_names=True)))
    flagged = {line.split()[0] for line in (r.stdout + r.stderr).splitlines() if line.strip()}
    assert r.returncode != 0 and flagged == {"ringtrader_hop_latency_us", "ringtrader_venue_clock_offset_ms"}


def test_book_health_and_the_venues_429_418_answers():
    fams = scrape({"book": {"books": 2, "books_valid": 1}, "execution": {"venue_connected": 1, "venue_retries_429": 3,
                                                                         "venue_halts": 1}})
    assert values(fams, "ringtrader_books") == {(): 2} and values(fams, "ringtrader_books_valid") == {(): 1}
    assert values(fams, "ringtrader_venue_rate_limited") == {("429",): 3, ("418",): 1}
    assert "ringtrader_books" not in scrape({})  # no book stage reported yet: no family

"""Pictures of a ``scripts/latency_profile.py`` result: per-hop latency CDFs and a placement comparison.

One PNG, two panels, drawn from the result dict that ``latency_profile.py
--json`` prints (so a saved result redraws without a rerun):

1. every hop of the first measured placement (``feed``, ``md->book``, ...,
   ``end_to_end``, and ``tick_to_order``/``order_to_wire``/``ack_rtt`` when
   the run traded), one CDF each;
2. ``end_to_end`` per placement, the idle strategies of its processes in
   the legend, with the measured cost of one wake-up as a reference line.

x: latency in microseconds, log scale. y: fraction of samples at or below x
on a logit scale, so 50 %, 90 %, 99 % and 99.9 % are evenly spaced and the
tail is as readable as the median.

Where the points come from: a placement row's ``latency_hists`` (per hop, the
sparse bucket counts of ``core.latency``'s wire form) gives the whole CDF,
one point per bucket (upper edge, within 1/32 of the value). Without it, the
line joins the summary's percentiles (p50, p90, p99, p99.9): the markers
are measured, the segments between them are not; the figure says which.

Deterministic given the data: fixed colours per hop and per placement, no
timestamps but the result's own. Drawn on a bare ``Figure`` (Agg, no pyplot
state, no display needed); matplotlib is imported only when drawing.
"""

from __future__ import annotations

from pathlib import Path

from core.latency import bucket_upper
from core.topology import HOPS, VENUE_HOPS

HOP_ORDER = HOPS + VENUE_HOPS
PERCENTILES = (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99), ("p999_us", 0.999))
PLACEMENT_COLOURS = {"small": "tab:blue", "split": "tab:orange", "dedicated": "tab:green"}
OTHER_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
Y_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
Y_TOP = 0.9999  # logit axis: 1.0 is infinitely far; the largest sample is drawn at 1 - 0.5/n
DPI = 100
# below each panel, in two columns: the lines climb from lower left to upper right and any corner may hold one
LEGEND = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.13), "ncols": 2, "fontsize": 7.5, "title_fontsize": 8}


# ---------------------------------------------------------------------------
# data: CDF points from a result (no matplotlib)
# ---------------------------------------------------------------------------
def hop_cdf(summary: dict, wire: dict | None = None) -> tuple[list[float], list[float], bool]:
    """CDF points of one hop: ``(x_us, fraction_at_or_below, from_buckets)``.

    ``wire``: the hop's histogram in ``LatencyHistogram.to_wire`` form; when
    given, one point per non-empty bucket at its upper edge (capped at the
    exact max), the last one at ``1 - 0.5/n``. Otherwise the summary's
    percentiles. Points at 0 us (clamped negative clock deltas) have no place
    on a log axis and are left out (their samples still count).
    """
    if wire and wire.get("n"):
        n = int(wire["n"])
        xs, ys, cum = [], [], 0
        for b, c in sorted(zip(wire["b"], wire["c"])):
            cum += int(c)
            # py_func: the plain-Python body of the njit function, one definition and no compile to draw
            x_us = min(int(bucket_upper.py_func(int(b))), int(wire["hi"])) / 1000.0
            if x_us > 0:
                xs.append(x_us)
                ys.append(min(cum / n, 1.0 - 0.5 / n))
        return xs, ys, True
    pts = [(float(summary[k]), q) for k, q in PERCENTILES if summary.get(k)]
    return [x for x, _ in pts], [q for _, q in pts], False


def measured_placements(result: dict) -> list[tuple[str, dict]]:
    """(name, row) of the placements that ran, in run order."""
    return [(n, row) for n, row in result.get("placements", {}).items() if "skipped" not in row]


def idle_label(result: dict, row: dict) -> str:
    """The processes and their idle strategies: ``2 procs: feed backoff, engine futex`` / ``5 procs, futex``."""
    procs = row.get("processes") or {}
    idle = row.get("idle")
    if not idle:  # a result from before rows carried the idle per process: the engine's, which split shares
        st = (result.get("engine_idle") or {}).get("strategy", "?")
        return f"{len(procs)} procs, engine {st}"
    idle = {n: s for n, s in idle.items() if n in procs}
    if len(set(idle.values())) == 1:
        return f"{len(idle)} procs, {next(iter(idle.values()))}"
    return f"{len(idle)} procs: " + ", ".join(f"{n} {s}" for n, s in idle.items())


def fmt_us(v: float) -> str:
    """A latency in microseconds, in the unit that reads best: ``2.4 µs``, ``117 µs``, ``1.38 ms``, ``1.71 s``."""
    if v < 100:
        return f"{v:.1f} µs"
    if v < 1000:
        return f"{v:.0f} µs"
    if v < 1e6:
        return f"{v / 1e3:.3g} ms"
    return f"{v / 1e6:.3g} s"


def title(result: dict) -> str:
    m = result.get("machine") or {}
    load = [f"{x[0]:.1f} at {when}" for x, when in ((m.get("load_avg_at_start"), "start"),
                                                    (result.get("load_avg_at_end"), "end")) if x]
    host = (f"{m.get('cpu_model', '?')}, {len(m.get('allowed_cpus') or [])} of {m.get('logical_cpus', '?')} CPUs"
            + (f", 1-min load {', '.join(load)}" if load else ""))
    run = (f"source {result.get('source')} at {result.get('rate_per_s', 0):g} events/s, "
           f"{result.get('seconds', 0):g} s per placement")
    if result.get("order_every"):
        run += f", an order every {result['order_every']} top changes over {result.get('transport')}"
    when = result.get("created_utc")
    return f"ringtrader latency: {host}\n{run}" + (f"; {when}" if when else "")


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------
def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise SystemExit("matplotlib is not installed: scripts/test.sh installs the test extra with it "
                         "(or: .venv/bin/pip install -e '.[test]')") from exc
    return Figure


def require_matplotlib() -> None:
    """Fail before a long run, not after it, when the picture cannot be drawn."""
    _figure_class()


def _hop_colour(hop: str):
    from matplotlib import colormaps

    if hop == "end_to_end":
        return "black"
    i = HOP_ORDER.index(hop) if hop in HOP_ORDER else len(HOP_ORDER)
    return colormaps["tab20"]((2 * i) % 20 + (2 * i) // 20)  # the dark shades first, one fixed colour per hop


def _style_axes(ax, y_bottom: float) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_yscale("logit")
    ax.set_ylim(y_bottom, Y_TOP)
    ax.yaxis.set_major_locator(FixedLocator([t for t in Y_TICKS if y_bottom <= t <= Y_TOP]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g} %"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_us(v).replace(".0 ", " ")))
    ax.set_xlabel("latency (log scale)")
    ax.set_ylabel("samples at or below (logit scale)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.12)


def _draw(ax, xs, ys, from_buckets: bool, **kw) -> None:
    if from_buckets:
        ax.plot(xs, ys, drawstyle="steps-post", **kw)
    else:
        ax.plot(xs, ys, marker="o", markersize=3.5, **kw)


def plot_result(result: dict, path: str | Path) -> Path:
    """Draw ``result`` (a ``latency_profile.py`` result dict) into the PNG at ``path``; returns the path."""
    Figure = _figure_class()
    placements = measured_placements(result)
    if not placements:
        raise SystemExit("nothing to plot: no placement of this result was measured")
    fig = Figure(figsize=(13, 6.6), dpi=DPI, layout="constrained")
    ax_hops, ax_pl = fig.subplots(1, 2)
    any_buckets = any(row.get("latency_hists") for _, row in placements)
    y_bottom = 0.01 if any_buckets else 0.3

    first, row = placements[0]
    hists = row.get("latency_hists") or {}
    hops = sorted(row.get("latency", {}), key=lambda h: HOP_ORDER.index(h) if h in HOP_ORDER else len(HOP_ORDER))
    for hop in hops:
        s = row["latency"][hop]
        xs, ys, fb = hop_cdf(s, hists.get(hop))
        if not xs:
            continue
        e2e = hop == "end_to_end"
        _draw(ax_hops, xs, ys, fb, color=_hop_colour(hop), linewidth=2.2 if e2e else 1.3, zorder=3 if e2e else 2,
              label=f"{hop}  p50 {fmt_us(s['p50_us'])}  p99 {fmt_us(s['p99_us'])}  (n={s['count']:,})")
    _style_axes(ax_hops, y_bottom)
    ax_hops.set_title(f"per hop, placement {first} ({idle_label(result, row)})", fontsize=10)
    ax_hops.legend(title="hop", **LEGEND)

    others = iter(OTHER_COLOURS)
    for name, row in placements:
        s = row["latency"].get("end_to_end")
        if not s:
            continue
        xs, ys, fb = hop_cdf(s, (row.get("latency_hists") or {}).get("end_to_end"))
        colour = PLACEMENT_COLOURS.get(name) or next(others, "tab:gray")
        _draw(ax_pl, xs, ys, fb, color=colour, linewidth=2.0,
              label=f"{name} ({idle_label(result, row)})\n  p50 {fmt_us(s['p50_us'])}  p99 {fmt_us(s['p99_us'])}  "
                    f"p99.9 {fmt_us(s['p999_us'])}")
    for name, row in result.get("placements", {}).items():
        if "skipped" in row:
            ax_pl.plot([], [], " ", label=f"{name}: skipped ({row['skipped']})")
    w = result.get("wake_us") or {}
    if w.get("p50_us"):
        ax_pl.axvline(w["p50_us"], color="gray", linestyle="--", linewidth=1.0,
                      label=f"one wake-up p50 {fmt_us(w['p50_us'])} ({w.get('strategy')}, bench_wake)")
    _style_axes(ax_pl, y_bottom)
    ax_pl.set_title("end_to_end per placement (processes, idle strategy)", fontsize=10)
    ax_pl.legend(title="placement", **LEGEND)

    fig.suptitle(title(result), fontsize=10)
    how = []
    if any_buckets:
        how.append("steps: the histograms' buckets (upper edges, within 1/32)")
    if not all(row.get("latency_hists") for _, row in placements):
        how.append("markers: the summary's p50 / p90 / p99 / p99.9; the segments between them are interpolated")
    how = "; ".join(how)
    fig.supxlabel(f"scripts/latency_profile.py --plot; {how}", x=0.01, ha="left", fontsize=7, color="dimgray")
    path = Path(path)
    fig.savefig(path, format="png", dpi=DPI)
    return path

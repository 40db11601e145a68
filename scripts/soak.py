#!/usr/bin/env python
"""Soak test: run the real system for minutes and watch every process's memory, fds and /dev/shm.

Runs ``python -m processes.supervisor --config CONFIG --duration S`` and, every
``--sample-s`` seconds, records for the supervisor and each process it started
VmRSS and RssAnon (``/proc/<pid>/status``), open fds (``/proc/<pid>/fd``) and
the total size of this instance's shared-memory segments
(``/dev/shm/ringtrader.<instance>.*``). At the end it prints one row per
process: RSS after warm-up (first sample ``--warmup-s`` after the log's
"all processes ready", or after launch if it never says so), RSS at
the end, growth %, slope in MB/min (least squares over the post-warm-up
samples) and the largest fd count; ``--json`` adds every sample.

Processes are named from the supervisor's JSON log lines (any event that
carries a ``pid``: ``spawned <name>``, ``<name> ready``, ``spare N ready``...;
the ``worker`` field when present), so the script knows nothing of the
supervisor's internals beyond its CLI and its log stream. Children the log
never names (multiprocessing's resource tracker, a renamed stage host...) are
found by walking ``/proc`` for descendants of the supervisor and named from
their command line. A restarted worker is a new row (``name#pid``).

  scripts/soak.py                                  # 30 min, config/system.json (simulator)
  scripts/soak.py --minutes 10 --synthetic --rate 20000 --json soak.json
  scripts/soak.py --minutes 10 --rate 20000 --sim-port 9110   # simulator at 20k events/s on its own port
  RINGTRADER__PLACEMENT__ENGINE__IDLE__MAX_SLEEP_US=200 scripts/soak.py --minutes 5   # overrides pass through
  scripts/soak.py --minutes 60 --rate 20000 --sim-port 9180 --check --json soak.json --plot docs/soak.png
  scripts/soak.py --plot-from soak.json --check --plot docs/soak.png        # analyse + redraw, no run

Latency: the run's metrics endpoint (on a free port unless ``--metrics-port``
says which) is scraped at every sample; the per-hop histogram
``ringtrader_hop_latency_seconds`` is cumulative, so the difference of two
scrapes is the window's own histogram, and its p50/p99 are read from it the
way PromQL's ``histogram_quantile`` does (linear within a 1-2-5 bucket: a
window figure is exact to its bucket, which is enough to see a drift). At the
end ``latency_drift`` compares, per hop, the median window p50/p99 of the
first and the last third of the samples after warm-up.

Verdict (``--check``, exit 3 when it fails): every process of the system (the
supervisor, its workers and the spare; not the simulator, a test exchange that
keeps every order, nor multiprocessing's resource tracker) grows less
than ``--max-growth-pct`` (1 %) from warm-up to the end, and no hop's window
p50 or p99 in the last third exceeds the first third's by more than
``--max-drift`` (x1.5: these shared hosts are noisy). ``--plot PNG`` draws RSS
per process and the per-window latency of the hops over time (``--plot-from
JSON`` redraws a saved ``--json`` result).

``--rate`` sets both ``market_data.synthetic.rate_per_s`` and
``simulator.rate`` (whichever source the config uses); ``--synthetic`` switches
the feed to the synthetic source and disables the simulator. The instance is
``soak-<pid>`` unless ``--instance`` says otherwise and the metrics port is a
free one (``--no-latency``: metrics off, no latency samples), so a soak never
collides with another run.
``--max-slope MB/min`` makes the exit code 3 when any process grows faster.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXIT_SLOPE = 3  # also --check failing
LAT_FAMILY = "ringtrader_hop_latency_seconds"


# ---------------------------------------------------------------------------
# /proc readers (each returns None when the process is gone)
# ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict | None:
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM in kB."""
    try:
        out = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                    out[key] = int(rest.split()[0])
        return out
    except (OSError, ValueError, IndexError):
        return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return int(data[data.rindex(")") + 2:].split()[1])  # comm may hold spaces/parens
    except (OSError, ValueError, IndexError):
        return None


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            pp = ppid_of(int(d))
            if pp is not None:
                children.setdefault(pp, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def name_from_cmdline(cmd: str) -> str:
    if "resource_tracker" in cmd:
        return "resource_tracker"
    if "forkserver" in cmd:
        return "forkserver"
    m = re.search(r"-m (\S+)", cmd)
    if m:
        return m.group(1)
    return "child"


def shm_bytes(instance: str) -> tuple[int, int, int]:
    """(segments, apparent bytes, allocated bytes) of /dev/shm/ringtrader.<instance>.*"""
    n = size = alloc = 0
    for p in glob.glob(f"/dev/shm/ringtrader.{glob.escape(instance)}.*"):
        try:
            st = os.stat(p)
        except OSError:
            continue
        n += 1
        size += st.st_size
        alloc += st.st_blocks * 512
    return n, size, alloc


# ---------------------------------------------------------------------------
# Names from the log stream
# ---------------------------------------------------------------------------

_NAME_PATTERNS = (
    re.compile(r"^spawned (\S+)"),
    re.compile(r"^(\S+) ready\b"),
    re.compile(r"^(\S+) (?:started|listening)\b"),
)


def name_of_event(ev: dict) -> str | None:
    """The process an event with a ``pid`` talks about, or None."""
    msg = str(ev.get("msg", ""))
    m = re.match(r"^spare (\d+) ready", msg)
    if m or "spare" in ev and not ev.get("worker"):
        return f"spare{ev.get('spare', m.group(1) if m else '')}"
    if isinstance(ev.get("worker"), str) and ev["worker"]:
        return ev["worker"]
    for pat in _NAME_PATTERNS:
        m = pat.match(msg)
        if m and m.group(1) not in ("all",):
            return m.group(1)
    return None


class Tracker:
    """pid -> name, fed by the log reader thread and the /proc walk."""

    def __init__(self):
        self.lock = threading.Lock()
        self.names: dict[int, str] = {}  # latest name of each pid
        self.from_log: set[int] = set()
        self.events = 0
        self.warnings: list[str] = []
        self.tail: list[str] = []
        self.ready_t: float | None = None  # monotonic time of the first "all ... ready" line

    def feed_line(self, line: str) -> None:
        self.tail = (self.tail + [line.rstrip()])[-40:]
        if not line.startswith("{"):
            return
        try:
            ev = json.loads(line)
        except ValueError:
            return
        self.events += 1
        if self.ready_t is None and re.match(r"^all\b.*\bready\b", str(ev.get("msg", ""))):
            self.ready_t = time.monotonic()
        if ev.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            self.warnings.append(f"{ev.get('proc')}: {ev.get('msg')}")
        pid = ev.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return
        name = name_of_event(ev)
        if name:
            with self.lock:
                self.names[pid] = name  # a spare that becomes a worker takes the worker's name
                self.from_log.add(pid)

    def name(self, pid: int, sup_pid: int) -> str:
        with self.lock:
            n = self.names.get(pid)
        if n:
            return n
        if pid == sup_pid:
            return "supervisor"
        n = name_from_cmdline(cmdline(pid))
        with self.lock:
            self.names.setdefault(pid, n)
        return n



# ---------------------------------------------------------------------------
# Latency: windows of the cumulative Prometheus histograms
# ---------------------------------------------------------------------------


def parse_hop_buckets(text: str) -> dict[str, list[tuple[float, float]]]:
    """``{hop: [(le_seconds, cumulative count)]}`` (sorted, +Inf last) of a metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != LAT_FAMILY:
            continue
        for smp in fam.samples:
            if smp.name == LAT_FAMILY + "_bucket" and "hop" in smp.labels:
                out.setdefault(smp.labels["hop"], []).append((float(smp.labels["le"]), float(smp.value)))
    return {h: sorted(b) for h, b in out.items()}


def window_quantile(prev: list[tuple[float, float]] | None, cur: list[tuple[float, float]], q: float):
    """(quantile in us, samples) of the window ``cur - prev``, as PromQL's ``histogram_quantile`` reads it.

    Linear interpolation inside the bucket holding the rank (from 0 in the first bucket); a rank in the
    +Inf bucket gives the largest finite bound. ``(None, n)`` for an empty window or mismatched buckets
    (a restarted endpoint: counters reset, the window is skipped rather than read negative).
    """
    base = dict(prev or ())
    les = [le for le, _ in cur]
    cum = [c - base.get(le, 0.0) for le, c in cur]
    if not cum or any(b < a for a, b in zip(cum, cum[1:])) or cum[0] < 0:
        return None, 0
    n = cum[-1]
    if n <= 0:
        return None, 0
    rank = q * n
    lo_le, lo_c = 0.0, 0.0
    for le, c in zip(les, cum):
        if c >= rank:
            if le == float("inf"):
                return round(lo_le * 1e6, 3), int(n)
            frac = (rank - lo_c) / (c - lo_c) if c > lo_c else 1.0
            return round((lo_le + (le - lo_le) * frac) * 1e6, 3), int(n)
        lo_le, lo_c = le, c
    return None, int(n)


def scrape(port: int, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:  # noqa: S310 - loopback
            return r.read().decode()
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency_drift(samples: list[dict], warmup_s: float, min_samples: int = 200) -> dict:
    """Per hop: p50/p99 (us) of the first and the last third after warm-up, each third's windows pooled.

    Pooling (the cumulative histogram at the third's end minus at its start) weighs every sample once, so a
    hop with a few samples per window (``ack_rtt``: one per order) is not read from medians of 2-sample
    windows. ``checked`` is False for a hop with fewer than ``min_samples`` in either third: reported, not
    judged.
    """
    post = [s for s in samples if s["t"] >= warmup_s and s.get("lat_cum")]
    if len(post) < 4:
        return {}
    k = max(1, (len(post) - 1) // 3)
    first = (post[0], post[k])
    last = (post[-1 - k], post[-1])
    out = {}
    for hop in sorted(post[-1]["lat_cum"]):
        row = {"windows": len(post) - 1}
        for tag, (a, b) in (("first", first), ("last", last)):
            prev, cur = a["lat_cum"].get(hop), b["lat_cum"].get(hop)
            if cur is None:
                break
            p50, n = window_quantile(prev, cur, 0.5)
            p99, _ = window_quantile(prev, cur, 0.99)
            row[tag] = {"n": n, "p50_us": p50, "p99_us": p99}
        else:
            f, l_ = row["first"], row["last"]
            row["checked"] = f["n"] >= min_samples and l_["n"] >= min_samples
            for q in ("p50_us", "p99_us"):
                row[q] = {"first": f[q], "last": l_[q],
                          "ratio": round(l_[q] / f[q], 3) if f[q] and l_[q] is not None else None}
            out[hop] = row
    return out

# ---------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t_s, kB) in MB/min; None with fewer than 2 points."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return None
    num = sum((t - mt) * (v - mv) for t, v in points)
    return num / den * 60 / 1024


def analyse(samples: list[dict], warmup_s: float, own_warmup_s: float = 0.0) -> list[dict]:
    """One row per process (``name#pid``): RSS from its warm-up to the end, growth, slopes, fds.

    A process's warm-up ends ``warmup_s`` into the run, or ``own_warmup_s`` after it first appears under its
    name when that is later (a restarted worker, a spare that took a crashed worker's place): loading a stage
    is not growth.
    """
    rows: dict[str, dict] = {}
    for s in samples:
        for key, p in s["procs"].items():
            r = rows.setdefault(key, {"process": key, "name": p["name"], "pid": p["pid"], "pts": [], "anon": [],
                                      "first_t": s["t"], "max_fds": 0})
            r["name"] = p["name"]
            r["last_t"] = s["t"]
            r["pts"].append((s["t"], p["rss_kb"]))
            r["anon"].append((s["t"], p["rss_anon_kb"]))
            r["max_fds"] = max(r["max_fds"], p["fds"] or 0)
    out = []
    for key, r in rows.items():
        warm = max(warmup_s, r["first_t"] + own_warmup_s) if r["first_t"] > samples[0]["t"] else warmup_s
        post = [(t, v) for t, v in r["pts"] if t >= warm]
        post_anon = [(t, v) for t, v in r["anon"] if t >= warm]
        start = post[0][1] if post else None
        end = post[-1][1] if post else r["pts"][-1][1]
        out.append({
            "process": key, "name": r["name"], "pid": r["pid"], "samples": len(r["pts"]),
            "samples_after_warmup": len(post), "warm_from_s": warm,
            "rss_warm_mb": round(start / 1024, 1) if start is not None else None,
            "rss_end_mb": round(end / 1024, 1),
            "growth_pct": round((end - start) / start * 100, 2) if start else None,
            "slope_mb_min": _r(slope_mb_per_min(post)),
            "anon_slope_mb_min": _r(slope_mb_per_min(post_anon)),
            "max_fds": r["max_fds"],
        })
    out.sort(key=lambda x: (x["name"] == "supervisor", x["process"]))
    return out


def _r(v):
    return None if v is None else round(v, 3)


def table(rows: list[dict], shm: list[tuple[float, int]], warmup_s: float) -> str:
    hdr = ("process", "pid", "RSS warm MB", "RSS end MB", "growth %", "slope MB/min", "anon MB/min", "max fds")
    lines = [" | ".join(hdr), " | ".join("---" for _ in hdr)]
    f = lambda v: "-" if v is None else str(v)  # noqa: E731
    for r in rows:
        lines.append(" | ".join(f(v) for v in (r["process"], r["pid"], r["rss_warm_mb"], r["rss_end_mb"],
                                                 r["growth_pct"], r["slope_mb_min"], r["anon_slope_mb_min"],
                                                 r["max_fds"])))
    post = [b for t, b in shm if t >= warmup_s] or [b for _, b in shm]
    if post:
        lines.append(f"/dev/shm (this instance): {post[0] / 2**20:.1f} MB after warm-up -> {post[-1] / 2**20:.1f} MB "
                     f"at end (max {max(post) / 2**20:.1f} MB)")
    return "\n".join(lines)


def drift_table(drift: dict) -> str:
    lines = ["hop | samples first / last third | p50 first -> last us (x) | p99 first -> last us (x) | judged",
             "--- | --- | --- | --- | ---"]
    for hop, r in drift.items():
        lines.append(f"{hop} | {r['first']['n']} / {r['last']['n']} | {r['p50_us']['first']} -> {r['p50_us']['last']} "
                     f"({r['p50_us']['ratio']}) | {r['p99_us']['first']} -> {r['p99_us']['last']} "
                     f"({r['p99_us']['ratio']}) | {'yes' if r['checked'] else 'no (< 200 samples)'}")
    return "\n".join(lines)


#: processes reported but not judged: the test exchange (it keeps every order and trade, as Binance's history
#: does) and multiprocessing's resource tracker
NOT_JUDGED = ("simulator", "resource_tracker")


def check(rows: list[dict], drift: dict, args) -> list[str]:
    """What fails ``--check``: RSS growth of a process of the system from warm-up to the end, latency drift."""
    bad = []
    for r in rows:
        if r["name"] in NOT_JUDGED:
            continue
        if r["growth_pct"] is not None and r["samples_after_warmup"] >= 3 and r["growth_pct"] >= args.max_growth_pct:
            bad.append(f"{r['process']} RSS +{r['growth_pct']} %")
    for hop, r in drift.items():
        for q in ("p50_us", "p99_us"):
            x = r[q]["ratio"] if r["checked"] else None
            if x is not None and x > args.max_drift:
                bad.append(f"{hop} {q[:3]} x{x}")
    return bad


def draw(doc: dict, path: str) -> None:
    """Two panels over minutes: RSS per process (MB), and per-window p50/p99 of the pipeline's hops (log us)."""
    from matplotlib.figure import Figure

    samples = doc.get("samples") or []
    fig = Figure(figsize=(10, 7.5), dpi=100)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    series: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for key, p in s["procs"].items():
            series.setdefault(key, []).append((s["t"] / 60, p["rss_kb"] / 1024))
    for key, pts in sorted(series.items()):
        if len(pts) >= 2:
            ax1.plot([t for t, _ in pts], [v for _, v in pts], label=key, lw=1.2)
    warm = (doc.get("ready_s") or 0) + (doc.get("warmup_s") or 0)
    for ax in (ax1, ax2):
        ax.axvline(warm / 60, color="grey", ls=":", lw=1)
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.04))
    ax1.grid(alpha=0.3)
    hops = ("md->book", "end_to_end", "tick_to_order")
    colours = {"md->book": "tab:blue", "end_to_end": "tab:green", "tick_to_order": "tab:red"}
    for hop in hops:
        for q, ls in (("p50_us", "-"), ("p99_us", "--")):
            pts = [(s["t"] / 60, s["latency"][hop][q]) for s in samples
                   if (s.get("latency") or {}).get(hop, {}).get(q)]
            if pts:
                ax2.plot([t for t, _ in pts], [v for _, v in pts], ls, color=colours[hop], lw=1.1,
                         label=f"{hop} {q[:3]}")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency per 10 s window (us)")
    ax2.set_xlabel("minutes (dotted: end of warm-up)")
    ax2.legend(fontsize=7, ncols=3)
    ax2.grid(alpha=0.3, which="both")
    load = doc.get("load_avg_at_end")
    fig.suptitle(f"soak: {Path(str(doc.get('config', ''))).name}, {doc.get('minutes')} min, rate {doc.get('rate')}"
                 + (f", load avg at end {load[0]:.2f}" if load else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def build_env(args) -> dict:
    env = dict(os.environ)
    env["RINGTRADER__INSTANCE"] = args.instance
    if args.metrics_port:  # main() picks a free one unless --no-latency
        env["RINGTRADER__METRICS__PORT"] = str(args.metrics_port)
        env["RINGTRADER__METRICS__ENABLED"] = "true"
    else:
        env["RINGTRADER__METRICS__ENABLED"] = "false"
    if args.synthetic:
        env["RINGTRADER__MARKET_DATA__SOURCE"] = "synthetic"
        try:  # the section that places processes ("placement", formerly "processes") decides where "enabled" lives
            cfg = json.loads(Path(args.config).read_text())
        except (OSError, ValueError):
            cfg = {}
        for section in ("placement", "processes"):
            if isinstance(cfg.get(section), dict) and "simulator" in cfg[section]:
                env[f"RINGTRADER__{section.upper()}__SIMULATOR__ENABLED"] = "false"
                break
    if args.rate is not None:
        env["RINGTRADER__MARKET_DATA__SYNTHETIC__RATE_PER_S"] = str(int(args.rate))
        if not args.synthetic:
            env["RINGTRADER__SIMULATOR__RATE"] = str(args.rate)
    if args.sim_port:
        base = f"127.0.0.1:{args.sim_port}"
        env["RINGTRADER__SIMULATOR__PORT"] = str(args.sim_port)
        env["RINGTRADER__MARKET_DATA__WS_URL"] = f"ws://{base}"
        env["RINGTRADER__MARKET_DATA__REST_URL"] = f"http://{base}"
        env["RINGTRADER__EXECUTION__REST_URL"] = f"http://{base}"
        env["RINGTRADER__EXECUTION__USER_STREAM_URL"] = f"ws://{base}"
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "system.json"))
    ap.add_argument("--minutes", type=float, default=30.0, help="run length (default 30)")
    ap.add_argument("--sample-s", type=float, default=10.0, help="sampling period (default 10 s)")
    ap.add_argument("--warmup-s", type=float, default=60.0,
                    help="growth and slope are measured from the first sample at or after this (default 60 s)")
    ap.add_argument("--rate", type=int, default=None, help="events/s of the synthetic source and the simulator")
    ap.add_argument("--synthetic", action="store_true", help="feed from the synthetic source, no simulator")
    ap.add_argument("--sim-port", type=int, default=None, help="move the simulator (and the URLs using it) here")
    ap.add_argument("--instance", default=f"soak-{os.getpid()}")
    ap.add_argument("--metrics-port", type=int, default=None,
                    help="metrics endpoint on this port (default: a free one; scraped for the latency windows)")
    ap.add_argument("--no-latency", action="store_true", help="metrics off: no latency windows")
    ap.add_argument("--check", action="store_true",
                    help="exit 3 unless RSS growth < --max-growth-pct and latency drift < --max-drift")
    ap.add_argument("--max-growth-pct", type=float, default=1.0, help="--check: RSS growth bound (default 1 %%)")
    ap.add_argument("--max-drift", type=float, default=1.5,
                    help="--check: bound on last/first third window p50 and p99 per hop (default 1.5)")
    ap.add_argument("--plot", default=None, metavar="PNG", help="draw RSS and window latency over time")
    ap.add_argument("--plot-from", default=None, metavar="JSON",
                    help="no run: analyse a saved --json result again (tables, verdict; --plot draws it)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the run")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="write the rows and every sample as JSON to PATH (stdout without PATH)")
    ap.add_argument("--log-file", default=None, help="keep the supervisor's log stream here")
    ap.add_argument("--max-slope", type=float, default=None,
                    help="exit 3 if any process's RSS slope after warm-up exceeds this many MB/min")
    ap.add_argument("--quiet", action="store_true", help="no per-sample progress lines on stderr")
    args = ap.parse_args(argv)
    if args.plot_from:  # a saved run: its tables and verdict again (this version's analysis), and the picture
        doc = json.loads(Path(args.plot_from).read_text())
        warm_from = (doc.get("ready_s") or 0) + doc["warmup_s"]
        rows = analyse(doc["samples"], warm_from, doc["warmup_s"])
        drift = latency_drift(doc["samples"], warm_from)
        print(table(rows, [(x["t"], x["shm_bytes"]) for x in doc["samples"]], warm_from))
        if drift:
            print(drift_table(drift))
        verdict = check(rows, drift, args)
        print("soak check: " + ("ok" if not verdict else "FAILED: " + "; ".join(verdict)))
        if args.plot:
            draw(doc, args.plot)
            print(f"soak: drew {args.plot} from {args.plot_from}")
        return EXIT_SLOPE if args.check and verdict else 0
    if args.no_latency:
        args.metrics_port = None
    elif not args.metrics_port:
        args.metrics_port = free_port()

    duration = args.minutes * 60
    env = build_env(args)
    cmd = [sys.executable, "-m", "processes.supervisor", "--config", str(args.config), "--duration", str(duration),
           "--quiet-summary"]
    if args.log_file:
        cmd += ["--log-file", args.log_file]
    sup = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    tracker = Tracker()

    def reader():
        for line in sup.stdout:
            tracker.feed_line(line)

    threading.Thread(target=reader, daemon=True).start()

    stop = threading.Event()

    def on_signal(signum, _frame):
        if sup.poll() is None:
            sup.send_signal(signal.SIGINT)  # the supervisor shuts down in order; we report what we have
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    t0 = time.monotonic()
    samples: list[dict] = []
    shm_series: list[tuple[float, int]] = []
    prev_buckets: dict = {}
    next_t = t0
    while sup.poll() is None:
        now = time.monotonic()
        if now < next_t:
            if stop.wait(min(0.2, next_t - now)) and sup.poll() is not None:
                break
            continue
        next_t += args.sample_s
        t = round(now - t0, 2)
        procs = {}
        pids = {sup.pid} | descendants(sup.pid)
        for pid in sorted(pids):
            st = proc_status(pid)
            if st is None or "VmRSS" not in st:
                continue
            name = tracker.name(pid, sup.pid)
            key = name if name in ("supervisor",) else f"{name}#{pid}"
            procs[key] = {"name": name, "pid": pid, "rss_kb": st["VmRSS"], "rss_anon_kb": st.get("RssAnon"),
                          "rss_file_kb": st.get("RssFile"), "rss_shmem_kb": st.get("RssShmem"),
                          "hwm_kb": st.get("VmHWM"), "threads": st.get("Threads"), "fds": fd_count(pid)}
        nseg, size, alloc = shm_bytes(args.instance)
        lat = {}
        text = scrape(args.metrics_port) if args.metrics_port else None
        if text is not None:
            cur = parse_hop_buckets(text)
            for hop, buckets in cur.items():
                p50, n = window_quantile(prev_buckets.get(hop), buckets, 0.5)
                p99, _ = window_quantile(prev_buckets.get(hop), buckets, 0.99)
                if n:
                    lat[hop] = {"n": n, "p50_us": p50, "p99_us": p99}
            prev_buckets = cur
        samples.append({"t": t, "procs": procs, "shm_segments": nseg, "shm_bytes": size, "shm_alloc_bytes": alloc,
                        "latency": lat, "lat_cum": prev_buckets})
        shm_series.append((t, size))
        if not args.quiet:
            brief = " ".join(f"{k.split('#')[0]}={p['rss_kb'] / 1024:.1f}" for k, p in procs.items())
            e2e = lat.get("end_to_end") or {}
            lat_txt = f" e2e p50/p99 {e2e['p50_us']}/{e2e['p99_us']} us" if e2e else ""
            print(f"[soak t={t:7.1f}s] RSS MB: {brief} shm={size / 2**20:.1f}MB{lat_txt}", file=sys.stderr, flush=True)
    rc = sup.wait()
    # warm-up counts from "all workers ready" when the log says so (a slow start is not growth)
    ready_s = round(tracker.ready_t - t0, 2) if tracker.ready_t is not None else 0.0
    warm_from = ready_s + args.warmup_s
    rows = analyse(samples, warm_from, args.warmup_s)
    print(f"soak: {args.config} instance={args.instance} {args.minutes} min, sample {args.sample_s} s, "
          f"warm-up {args.warmup_s} s after ready at {ready_s} s, supervisor exit {rc}, {tracker.events} log events, "
          f"{len(tracker.warnings)} warnings")
    print(table(rows, shm_series, warm_from))
    drift = latency_drift(samples, warm_from)
    if drift:
        print(drift_table(drift))
    verdict = check(rows, drift, args)
    print("soak check: " + ("ok" if not verdict else "FAILED: " + "; ".join(verdict)))
    if rc != 0:
        print("supervisor log tail:\n  " + "\n  ".join(tracker.tail[-15:]), file=sys.stderr)
    for w in tracker.warnings[:10]:
        print(f"warning: {w}", file=sys.stderr)
    worst = max((r["slope_mb_min"] for r in rows if r["slope_mb_min"] is not None and r["samples_after_warmup"] >= 3),
                default=None)
    if args.json:
        doc = {"config": str(args.config), "instance": args.instance, "minutes": args.minutes,
               "sample_s": args.sample_s, "warmup_s": args.warmup_s, "ready_s": ready_s, "rate": args.rate, "synthetic": args.synthetic,
               "supervisor_exit": rc, "rows": rows, "latency_drift": drift, "check": verdict,
               "max_growth_pct": args.max_growth_pct, "max_drift": args.max_drift,
               "load_avg_at_end": list(os.getloadavg()), "samples": samples, "warnings": tracker.warnings}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.plot:
        draw(doc if args.json else {"config": str(args.config), "minutes": args.minutes, "rate": args.rate,
                                    "ready_s": ready_s, "warmup_s": args.warmup_s, "rows": rows,
                                    "samples": samples, "load_avg_at_end": list(os.getloadavg())}, args.plot)
    if args.check and verdict:
        return EXIT_SLOPE
    if args.max_slope is not None and worst is not None and worst > args.max_slope:
        print(f"soak: RSS slope {worst} MB/min exceeds --max-slope {args.max_slope}", file=sys.stderr)
        return EXIT_SLOPE
    return rc


if __name__ == "__main__":
    sys.exit(main())

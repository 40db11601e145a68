#!/usr/bin/env python3
"""Replay a recording through the real decoder and book/bar kernels, and check the book.

    .venv/bin/python scripts/replay_check.py --recording ../shared/data/hftbacktest/btcusdt_20240808.gz \\
        --recording ../shared/data/hftbacktest/btcusdt_20240809.gz [--symbol BTCUSDT] [--json]

Several ``--recording`` files form one continuous session (in the order
given). A directory is read as one cryptofeed recording folder (its http and
ws files merged by receive time; ``--venue`` picks BINANCE or BINANCE_US).

Per symbol it prints: diffs applied, chain breaks, resyncs, crossed books,
book tops that match / do not match the recorded bookTicker stream (each
applied diff's top against the latest bookTicker whose ``u <= diff.u``), and
rebuilt bars that match / do not match the recorded klines whose trades the
recording fully covers. A recording without a snapshot never yields a valid
book. Exit status 1 if any chain break went unnoticed or a book crossed.

Hostile input in a recording (``core.hostile``) changes none of those
figures: a line that is no recording line is counted by the reader
(``skipped lines``), a frame the decoder refuses by kind (``decode errors``),
and both are printed below the table when there are any (on stderr with
``--json``, whose stdout stays the figures alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

import orjson  # noqa: E402

from core.book_replay import FIGURES, check_session, load_session  # noqa: E402
from core.recordings import ReaderStats, iter_frames, iter_recording_dir  # noqa: E402


def _frames(paths: list[str], venue: str, stats: ReaderStats):
    for p in paths:
        path = Path(p)
        if path.is_dir():
            yield from iter_recording_dir(path, venue, stats)
        else:
            yield from iter_frames(path, stats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recording", action="append", required=True, metavar="PATH",
                    help="recording file or cryptofeed folder; repeat for one continuous session")
    ap.add_argument("--symbol", action="append", help="only report this symbol (repeatable)")
    ap.add_argument("--venue", default="BINANCE", help="cryptofeed folder venue prefix (default BINANCE)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    for p in args.recording:
        if not Path(p).exists():
            ap.error(f"--recording {p}: no such file or folder")
    stats = ReaderStats()
    session = load_session(_frames(args.recording, args.venue, stats))
    if not session.symbols:
        print("no market data found in the recording", file=sys.stderr)
        return 2
    result = check_session(session)
    wanted = {s.upper() for s in args.symbol} if args.symbol else None
    if wanted:
        missing = wanted - set(result)
        if missing:
            print(f"symbol(s) not in the recording: {sorted(missing)}; found {session.symbols}", file=sys.stderr)
            return 2
        result = {k: v for k, v in result.items() if k in wanted}

    figures = {sym: {k: fig[k] for k in FIGURES} for sym, fig in result.items()}
    if args.json:
        sys.stdout.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        cols = ("symbol",) + FIGURES + ("valid_at_end",)
        rows = [[sym] + [str(fig[k]) for k in FIGURES] + ["yes" if result[sym]["valid_at_end"] else "NO"]
                for sym, fig in figures.items()]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    drops = sys.stderr if args.json else sys.stdout
    if stats.skipped:
        print(f"skipped lines: {dict(sorted(stats.reasons.items()))}", file=drops)
    if session.decode_errors:
        print(f"decode errors: {dict(sorted(session.decode_errors.items()))}", file=drops)
    if not args.json:
        for sym, fig in result.items():
            if fig["applied"] == 0 and fig["snapshots_applied"] == 0:
                print(f"{sym}: no depth snapshot in the recording: the book was never valid (as it must be)")
    bad = any(f["chain_breaks"] < f["raw_chain_breaks"] or f["crossed"] for f in result.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

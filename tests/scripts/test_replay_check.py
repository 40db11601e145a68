"""scripts/replay_check.py on a recording with hostile lines spliced in prints the clean recording's figures.

The recording is a real one (hftbacktest BTCUSDT 2024, its first lines: the snapshot, diffs, trades,
bookTicker) copied to tmp_path with one hostile frame of every class of ``core.hostile`` spliced in after
every few real lines; the command line is run on both files. What a user reads must be equal: the table
of figures (and the JSON figures), the exit status; the hostile lines show up only as the counts of
skipped lines and decode errors below the table, one per line spliced in.
"""

from __future__ import annotations

import ast
import gzip
import random
import subprocess
import sys
from pathlib import Path

from core.hostile import CLASSES, hostile_frame

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "replay_check.py"
LINES = 3000


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300)


def _counts(line: str) -> dict:
    return ast.literal_eval(line.split(": ", 1)[1])


def test_replay_check_prints_the_same_figures_for_a_hostile_recording(shared_data, tmp_path):
    with gzip.open(shared_data / "hftbacktest" / "btcusdt_20240808.gz", "rb") as f:
        real = [f.readline().rstrip(b"\n") for _ in range(LINES)]
    # the file name gives the snapshot its symbol, as in the original
    clean = tmp_path / "btcusdt_clean.txt"
    clean.write_bytes(b"\n".join(real) + b"\n")
    rng = random.Random(2024)
    spliced, inserted = [], 0
    for i, line in enumerate(real):
        spliced.append(line)
        if i >= 10 and i % 25 == 0:  # after the snapshot; "backwards" is then against the frames before it
            recv, _, payload = line.partition(b" ")
            base = real[rng.randrange(max(8, i - 50), i + 1)].partition(b" ")[2]
            if base.startswith(b'{"lastUpdateId"'):
                base = payload
            _, bad = hostile_frame(rng, base, CLASSES[inserted % len(CLASSES)])
            spliced.append(recv + b" " + bad)
            inserted += 1
    hostile = tmp_path / "btcusdt_hostile.txt"
    hostile.write_bytes(b"\n".join(spliced) + b"\n")
    assert inserted >= 10 * len(CLASSES)

    a, b = _run("--recording", str(clean)), _run("--recording", str(hostile))
    assert a.returncode == b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    assert "Traceback" not in b.stderr
    table_a = [ln for ln in a.stdout.splitlines() if ln.strip()]
    table_b = [ln for ln in b.stdout.splitlines() if not ln.startswith(("skipped lines:", "decode errors:"))]
    assert [ln for ln in table_b if ln.strip()] == table_a
    assert "BTCUSDT" in a.stdout and "decode errors" not in a.stdout and "skipped lines" not in a.stdout
    drops = {ln.split(":", 1)[0]: _counts(ln) for ln in b.stdout.splitlines()
             if ln.startswith(("skipped lines:", "decode errors:"))}
    # every hostile line is counted once: by the recording reader (not a JSON object) or by the decoder
    assert sum(sum(d.values()) for d in drops.values()) == inserted, drops
    assert drops["decode errors"]["unknown_symbol"] == inserted // len(CLASSES) + (inserted % len(CLASSES) > 0)

    ja, jb = _run("--recording", str(clean), "--json"), _run("--recording", str(hostile), "--json")
    assert ja.stdout == jb.stdout and ja.returncode == jb.returncode == 0
    assert "decode errors" in jb.stderr  # the counts go to stderr with --json

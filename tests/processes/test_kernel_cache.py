"""A second start loads every numba kernel from the disk cache: nothing is compiled again.

The warm spare and the sub-second restarts depend on it, and so does a
cold start being "first run only". A kernel built on a jitclass or a
structref, or one whose cache key changes every run, would miss here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, sys
from core import numba_cache
numba_cache.configure()
from numba.core.registry import CPUDispatcher
from core.config import load_config
from processes.runtime import warm_all
cfg = load_config(sys.argv[1], env={}, host_cpus=None)
servable, problems = warm_all(cfg)
import processes.simulator.market_kernels  # the simulator's kernels (warmed by its own start)
stats = {}
for name, mod in list(sys.modules.items()):
    if not name.split(".")[0] in ("core", "processes", "ringbuffers"):
        continue
    for attr, obj in vars(mod).items():
        if isinstance(obj, CPUDispatcher) and obj.signatures:
            st = obj.stats
            stats[f"{obj.py_func.__module__}.{obj.py_func.__name__}"] = (sum(st.cache_hits.values()),
                                                                         sum(st.cache_misses.values()))
print(json.dumps({"servable": servable, "problems": problems, "stats": stats, "cache": numba_cache.cache_dir().name}))
"""


def _probe(tmp_path: Path) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, str(script), str(ROOT / "config" / "system.json")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_second_start_loads_every_kernel_from_the_cache(tmp_path):
    first = _probe(tmp_path)  # compiles whatever the cache lacks (nothing, when earlier tests warmed it)
    assert set(first["servable"]) == {"feed", "engine"} and first["problems"] == {}
    second = _probe(tmp_path)
    assert second["cache"] == first["cache"]  # the same keyed dir: nothing changed in between
    compiled = {k: v for k, v in second["stats"].items() if v[1]}
    assert compiled == {}, f"kernels compiled again on the second start: {sorted(compiled)}"
    loaded = {k for k, (hits, _misses) in second["stats"].items() if hits}
    # every stage's entry kernels came from the disk
    for kernel in ("processes.signal.signal_step", "processes.risk.risk_step", "processes.execution.execution_step",
                   "core.book_worker_kernels.process_md_batch", "core.decode_kernels.nb_decode_publish"):
        assert kernel in loaded, (kernel, sorted(loaded))


def test_the_warm_up_covers_the_pnl_kernel_as_the_journal_and_a_restarted_risk_call_it_from_python():
    """``Journal.positions`` (execution's position check at shutdown) and a restarted risk stage's rebuild call
    ``core.pnl.pnl_apply`` from Python with plain ints: the stages' warm-up must compile that signature, or the
    first shutdown (or restart) after an install compiles it in the worker (~4 s, seen by scripts/chaos.py)."""
    from core.config import load_config
    from core.pnl import COMM_QUOTE, PnlBook, alloc_pnl_state, pnl_apply
    from core.records import SIDE_SELL
    from processes import execution, risk

    cfg = load_config(ROOT / "config" / "system.json", env={}, host_cpus=None)
    for stage in (execution, risk):
        stage.warm(cfg)
        warmed = set(pnl_apply.signatures)
        PnlBook(2, lot_capacity=4, n_fee_assets=1).apply_fill(1, SIDE_SELL, 3 * 10**12, 10**5, 42, COMM_QUOTE)
        pnl_apply(alloc_pnl_state(2, 4, 1), 1, SIDE_SELL, 3 * 10**12, 10**5, 42, COMM_QUOTE, 0)  # risk's rebuild
        assert set(pnl_apply.signatures) == warmed, f"{stage.__name__}.warm left a signature to compile"

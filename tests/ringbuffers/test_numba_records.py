"""Record types get the same compiled-symbol names in every process, and different ones per layout.

numba names a record type in symbols by a per-process creation counter;
cached kernels compiled in different processes could then define one symbol
for two record layouts, and the linker would bind a kernel to the wrong
machine code (ringbuffers/numba_records.py). The names must depend on the
layout only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import numpy as np
import core.records as R
from numba import typeof
from numba.core.itanium_mangler import mangle_type
order = sys.argv[1].split(",")
names = {}
for n in order:  # create the record types in the order given: numba's own counter follows it
    names[n] = mangle_type(typeof(np.zeros(1, getattr(R, n))).dtype)
print(json.dumps(names))
"""


def _names(order: str) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, order], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_record_symbol_names_are_stable_across_processes_and_distinct_per_layout():
    a = _names("SIGNAL,EXEC_REPORT,ORDER_REQUEST,BOOK_EVENT")
    b = _names("BOOK_EVENT,ORDER_REQUEST,EXEC_REPORT,SIGNAL")
    assert a == b  # the creation order does not matter
    assert len(set(a.values())) == 4  # SIGNAL, EXEC_REPORT and ORDER_REQUEST are all 128 bytes: still distinct

"""Deterministic symbol names for numba record types: a work-around for a disk-cache hazard.

numba mangles a record type into compiled symbol names by ``Record._code``,
a per-process counter of type creation order (numba 0.6x,
``numba/core/types/npytypes.py``). A cached kernel's library holds its
callees under those names, so two libraries compiled in different processes
(or one loaded from the cache and one compiled now) can each define the
symbol of, say, ``nb_out_publish`` specialised for *different* record types
under the *same* name; the JIT linker then binds one caller to the other's
machine code, and records are read and written with another dtype's field
offsets (seen here: intermittently, after a cold start, every other report
with ``recv_ns = 0``; numba issues 10128 and 10486 describe the same family).

The fix here: mangle a record by a hash of its full layout (``Record.name``
spells every field's type and offset, the size and the alignment), which is
the same in every process and different for every layout. Applied on import;
``ringbuffers.atomics`` and ``core.records`` import it, so every process
that compiles or loads a project kernel has it before its first compile.
"""

from __future__ import annotations

import hashlib

from numba.core.types import npytypes


def _stable_mangling_args(self):
    digest = hashlib.sha1(self.name.encode()).hexdigest()[:20]
    return self.__class__.__name__, (f"h{digest}",)


if not getattr(npytypes.Record, "_ringtrader_stable_mangling", False):
    npytypes.Record.mangling_args = property(_stable_mangling_args)
    npytypes.Record._ringtrader_stable_mangling = True

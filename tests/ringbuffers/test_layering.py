"""The rings are a generic transport: they import nothing of the application,
and the application's error tree re-exports their very classes."""

from __future__ import annotations

import subprocess
import sys

import core.errors
import ringbuffers.errors


def test_ringbuffers_import_no_core_module():
    code = (
        "import sys, ringbuffers.ring, ringbuffers.idle, ringbuffers.control, ringbuffers.clock, ringbuffers.futex\n"
        "print(sorted(m for m in sys.modules if m == 'core' or m.startswith('core.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_errors_ring_classes_are_the_rings_own():
    for name in ("RingError", "RingMismatchError", "RingNotFoundError", "RingExistsError"):
        assert getattr(core.errors, name) is getattr(ringbuffers.errors, name)
    try:
        raise ringbuffers.errors.RingMismatchError("x")
    except core.errors.RingError as exc:  # what callers of core.errors write
        assert isinstance(exc, core.errors.RingMismatchError)


def test_importing_the_error_tree_does_not_load_the_ring():
    code = "import sys, core.errors\nprint('ringbuffers.ring' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"

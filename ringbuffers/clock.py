"""Clocks callable from numba ``@njit`` code.

``time.monotonic_ns()`` / ``time.perf_counter_ns()`` are not available inside
``@njit``, yet a worker kernel stamps ``pub_ns`` on the records it publishes
and a consumer kernel measures hop latency. This module gives kernels the
same clock the Python side uses, plus the raw cycle counter.

``nb_monotonic_ns()``
    ``clock_gettime(CLOCK_MONOTONIC)`` in nanoseconds: the very clock of
    ``time.monotonic_ns()`` (and of ``time.perf_counter_ns()`` on Linux), so
    stamps taken in a kernel and stamps taken in plain Python compare
    directly, across processes on one host. It is emitted as a direct call to
    libc's ``clock_gettime``, which glibc serves from the vDSO without a
    syscall when the kernel clocksource is ``tsc`` (about 20-40 ns; check
    ``/sys/devices/system/clocksource/clocksource0/current_clocksource``).

``nb_rdtsc()``
    The CPU time-stamp counter (``llvm.readcyclecounter``, ``RDTSC`` on
    x86-64, after an ``LFENCE`` so that it reads the time after the loads
    before it have completed): cheaper (~10-15 ns), in ticks, not nanoseconds.
    Differences of two readings taken on different cores are meaningful
    only with an invariant TSC (``constant_tsc`` and ``nonstop_tsc`` in
    ``/proc/cpuinfo``; see ``tsc_is_invariant``). ``calibrate_tsc`` measures
    the tick rate against CLOCK_MONOTONIC so ``nb_tsc_to_ns`` can convert.

Both are ``@intrinsic``s, so kernels using them compile with ``cache=True``.
The generated code refers to ``clock_gettime`` by name; importing this module
registers libc's address with llvmlite so the JIT linker resolves it (also
when loading a cached kernel).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from dataclasses import dataclass

import llvmlite.binding as llvm
import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

CLOCK_MONOTONIC = 1  # <linux/time.h>; time.CLOCK_MONOTONIC, kept literal for the intrinsic
NS_PER_S = 1_000_000_000


def _register_clock_gettime() -> None:
    # The JIT usually finds libc symbols in the process, but registering the
    # address explicitly makes that independent of how Python was linked.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    addr = ctypes.cast(libc.clock_gettime, ctypes.c_void_p).value
    llvm.add_symbol("clock_gettime", addr)


_register_clock_gettime()


@intrinsic
def _clock_gettime_ns(typingctx, clock_id):
    if not isinstance(clock_id, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])  # struct timespec on LP64: tv_sec, tv_nsec
        ts = cgutils.alloca_once(builder, timespec)  # in the entry block: no stack growth in loops
        fnty = ir.FunctionType(i32, [i32, timespec.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        cid = context.cast(builder, args[0], sig.args[0], types.int32)
        builder.call(fn, [cid, ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, NS_PER_S)), nsec)

    return types.int64(clock_id), codegen


@intrinsic
def nb_rdtsc(typingctx):
    """Raw time-stamp counter ticks (``LFENCE; RDTSC``), from ``@njit`` code only."""

    def codegen(context, builder, sig, args):
        # LFENCE first: RDTSC alone may execute before earlier loads complete
        # (e.g. the poll that saw a record), reading a time before the event.
        lfence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.lfence")
        builder.call(lfence, [])
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@nb.njit(cache=True, inline="always")
def nb_monotonic_ns():
    """CLOCK_MONOTONIC in ns (same clock as ``time.monotonic_ns()``), from ``@njit`` code."""
    return _clock_gettime_ns(CLOCK_MONOTONIC)


@nb.njit(cache=True)
def _sample_pair():
    # A TSC reading bracketed by two monotonic reads; the bracket width bounds its error.
    a = nb_monotonic_ns()
    t = nb_rdtsc()
    b = nb_monotonic_ns()
    return a, t, b


@nb.njit(cache=True, inline="always")
def nb_tsc_to_ns(tsc, tsc0, ns0, ns_per_tick):
    """Convert a TSC reading to CLOCK_MONOTONIC ns with a ``TscCalibration``'s fields."""
    return ns0 + np.int64((tsc - tsc0) * ns_per_tick)


@dataclass(frozen=True)
class TscCalibration:
    """A linear map from TSC ticks to CLOCK_MONOTONIC ns, measured by ``calibrate_tsc``."""

    tsc0: int  # a TSC reading ...
    ns0: int  # ... and the CLOCK_MONOTONIC ns it was taken at
    ns_per_tick: float  # 1e9 / TSC frequency
    error_ns: int  # widest bracket of the two anchor samples: the anchors' uncertainty

    @property
    def ghz(self) -> float:
        return 1.0 / self.ns_per_tick

    def to_ns(self, tsc: int) -> int:
        return self.ns0 + int((tsc - self.tsc0) * self.ns_per_tick)


def _best_pair(tries: int) -> tuple[int, int, int]:
    best = None
    for _ in range(tries):
        a, t, b = _sample_pair()
        if best is None or b - a < best[2]:
            best = ((a + b) // 2, t, b - a)
    return best


def calibrate_tsc(duration_s: float = 0.05, tries: int = 200) -> TscCalibration:
    """Measure the TSC rate against CLOCK_MONOTONIC over ``duration_s`` (sleeping, not spinning).

    The relative error is about ``2 * error_ns / duration``: 50 ms with
    ~50 ns anchors gives ~2 ppm, i.e. 2 ns per ms of measured interval.
    Processes that compare converted stamps should share one calibration
    (pass its fields to the children) rather than each measure their own.
    """
    if duration_s <= 0:
        raise ValueError(f"calibrate_tsc: duration_s must be > 0, got {duration_s}")
    ns_a, tsc_a, err_a = _best_pair(tries)
    time.sleep(duration_s)
    ns_b, tsc_b, err_b = _best_pair(tries)
    if tsc_b <= tsc_a:
        raise RuntimeError(f"calibrate_tsc: TSC did not advance ({tsc_a} -> {tsc_b}); it is not usable as a clock")
    return TscCalibration(tsc0=tsc_b, ns0=ns_b, ns_per_tick=(ns_b - ns_a) / (tsc_b - tsc_a), error_ns=max(err_a, err_b))


def tsc_is_invariant(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises a constant-rate TSC that keeps running in idle states."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"constant_tsc", "nonstop_tsc"} <= flags
    except OSError:
        return False
    return False

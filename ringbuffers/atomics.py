"""Acquire/release atomics and a CPU pause hint for numba kernels.

How the ordering is obtained
----------------------------
Inside ``@njit`` code these are LLVM atomic instructions emitted with llvmlite
(``load atomic ... acquire``, ``store atomic ... release``, ``fence``). LLVM
lowers them correctly for every target it supports: on x86-64 they are plain
``MOV``s (x86-64 is TSO: loads are not reordered with loads, stores not with
stores) and the atomic marking only stops the compiler from hoisting a
polling load out of a loop or sinking a record store past the cursor store;
on AArch64 they become ``LDAR``/``STLR``/``DMB``.

From plain Python, cursors are read and written with aligned 8-byte numpy
scalar loads/stores. Each is a single ``MOV`` of an aligned quadword (atomic
on x86-64), and CPython executes them in program order through opaque C
calls, which the C compiler cannot reorder across. Their *hardware* ordering
relies on x86-64 TSO, so the Python path is correct on x86-64 only;
``ringbuffers`` refuses to import on any other CPU (see ``check_cpu``).

The pause hint is ``llvm.x86.sse2.pause`` (the ``PAUSE`` instruction), which
tells the core it is in a spin-wait loop (saves power, frees the sibling
hyper-thread, avoids a memory-order mis-speculation flush on loop exit).
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

import ringbuffers.numba_records  # noqa: F401  (record types mangle deterministically: see that module)

SUPPORTED_MACHINES = ("x86_64", "AMD64", "amd64")


def check_cpu(machine: str | None = None) -> None:
    """Refuse to run the rings on a CPU whose memory model we have not proven."""
    machine = machine or platform.machine()
    if machine not in SUPPORTED_MACHINES:
        raise ImportError(
            f"ringbuffers: CPU architecture {machine!r} is not supported. The plain-Python ring path "
            "relies on x86-64 TSO store/load ordering; on a weakly ordered CPU it could publish a "
            "cursor before the record it covers. Refusing to run rather than corrupt data."
        )


def _element_ptr(context, builder, arr_type, arr, idx):
    ary = context.make_array(arr_type)(context, builder, arr)
    return builder.gep(ary.data, [idx])


@intrinsic
def load_acquire(typingctx, arr, idx):
    """``arr[idx]`` (int64 array) loaded with acquire ordering."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)

    return types.int64(arr, idx), codegen


@intrinsic
def load_relaxed(typingctx, arr, idx):
    """``arr[idx]`` (int64 array) as an atomic load with no ordering (never hoisted)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="monotonic", align=8)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """``arr[idx] = val`` (int64 array) stored with release ordering."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, ptr, ordering="release", align=8)
        return context.get_dummy_value()

    return types.void(arr, idx, val), codegen


@intrinsic
def fence_acquire(typingctx):
    """Prior loads are ordered before any later load or store."""

    def codegen(context, builder, sig, args):
        builder.fence("acquire")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def fence_release(typingctx):
    """Prior loads and stores are ordered before any later store."""

    def codegen(context, builder, sig, args):
        builder.fence("release")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def fence_seq_cst(typingctx):
    """Full barrier: prior loads *and stores* are ordered before later loads (``MFENCE`` on x86-64).

    The only ordering x86-64 TSO does not give for free (store -> load), needed
    where each side stores its own flag and then loads the other's (Dekker):
    the producer's publish store -> waiter load, see ``ring.nb_notify``.
    """

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def exchange(typingctx, arr, idx, val):
    """Atomically ``old = arr[idx]; arr[idx] = val; return old`` (int64 array), sequentially consistent.

    ``XCHG`` on x86-64, which is also a full barrier.
    """
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1])
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("xchg", ptr, value, "seq_cst")

    return types.int64(arr, idx, val), codegen


@intrinsic
def cpu_pause(typingctx):
    """The x86 ``PAUSE`` spin-wait hint."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen

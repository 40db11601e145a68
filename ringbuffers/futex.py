"""Linux futex wait/wake on a 32-bit word in shared memory, from Python and from numba.

A consumer with nothing to read sleeps in the kernel (``FUTEX_WAIT``) on the
low 32 bits of a ring's ``publish`` cursor (x86-64 is little-endian, so they
are the first 4 bytes of the int64 word); the producer, after publishing,
wakes it (``FUTEX_WAKE``). The protocol around these calls (who announces
what, and the fences that prevent a lost wake-up) is in ``ringbuffers.ring``.

The operations are the shared (not ``FUTEX_PRIVATE_FLAG``) ones: the word
lives in a ``MAP_SHARED`` segment mapped by several processes, and the kernel
keys a shared futex by the page's inode and offset, not by the virtual address.

From Python the syscall goes through ``ctypes`` (which releases the GIL while
the caller sleeps, and lets signal handlers run when EINTR returns). From
``@njit`` code ``nb_futex_wake`` emits a direct call to libc's ``syscall`` by
name (its address is registered with llvmlite at import, as
``ringbuffers.clock`` does for ``clock_gettime``), so kernels that use it
still compile with ``cache=True``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

SYS_futex = 202  # x86-64 <asm/unistd_64.h>; ringbuffers runs on x86-64 only (atomics.check_cpu)
FUTEX_WAIT = 0
FUTEX_WAKE = 1
WAKE_ALL = 0x7FFFFFFF  # INT_MAX: wake every waiter
NS_PER_S = 1_000_000_000

# Outcomes of futex_wait (0 or an errno):
WOKEN = 0  # a FUTEX_WAKE (or, rarely, a spurious wake-up): re-check the data
CHANGED = errno.EAGAIN  # the word no longer held the expected value: data arrived before we slept
TIMED_OUT = errno.ETIMEDOUT
INTERRUPTED = errno.EINTR  # a signal; its Python handler runs when we return

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# syscall() is variadic; glibc's x86-64 implementation only moves registers, so a
# fixed prototype of the futex arguments is sound there.
_syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint,
                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(addr: int, expected: int, timeout_ns: int) -> int:
    """Sleep while the u32 at ``addr`` equals ``expected & 0xffffffff``, at most ``timeout_ns``.

    Returns ``WOKEN`` (0), ``CHANGED``, ``TIMED_OUT`` or ``INTERRUPTED``; the
    caller re-checks its data in every case. ``timeout_ns`` <= 0 never sleeps.
    """
    if timeout_ns <= 0:
        return TIMED_OUT
    ts = _Timespec(timeout_ns // NS_PER_S, timeout_ns % NS_PER_S)  # relative (CLOCK_MONOTONIC) for FUTEX_WAIT
    if _syscall(SYS_futex, addr, FUTEX_WAIT, expected & 0xFFFFFFFF, ctypes.byref(ts), None, 0) == 0:
        return WOKEN
    err = ctypes.get_errno()
    if err in (CHANGED, TIMED_OUT, INTERRUPTED):
        return err
    raise OSError(err, f"futex(FUTEX_WAIT, {addr:#x}): {os.strerror(err)}")


def futex_wake(addr: int, n: int = WAKE_ALL) -> int:
    """Wake up to ``n`` waiters on the word at ``addr``. Returns how many were woken."""
    woken = _syscall(SYS_futex, addr, FUTEX_WAKE, n, None, None, 0)
    if woken < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex(FUTEX_WAKE, {addr:#x}): {os.strerror(err)}")
    return woken


def _register_syscall() -> None:
    llvm.add_symbol("syscall", ctypes.cast(_libc.syscall, ctypes.c_void_p).value)


_register_syscall()


@intrinsic
def nb_futex_wake(typingctx, arr, idx):
    """``FUTEX_WAKE`` every waiter on the low 32 bits of ``arr[idx]`` (int64 array); returns the syscall result."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        fnty = ir.FunctionType(i64, [i64], var_arg=True)  # long syscall(long number, ...)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        zero = ir.Constant(i64, 0)
        return builder.call(fn, [ir.Constant(i64, SYS_futex), builder.ptrtoint(ptr, i64), ir.Constant(i32, FUTEX_WAKE),
                                 ir.Constant(i32, WAKE_ALL), zero, zero, zero])

    return types.int64(arr, idx), codegen

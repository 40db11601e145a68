"""Single-producer, multi-consumer broadcast ring over POSIX shared memory.

Concurrency contract
--------------------
One producer process publishes records of one fixed dtype; each of
``consumers`` consumer processes reads every record through its own cursor
(broadcast, not work-sharing). Anyone may attach as a read-only *monitor* to
read counters. Cursors are monotonically increasing int64 sequence numbers;
slot = ``seq & (capacity - 1)``.

Segment layout (``CACHE_LINE = 64``; every block below starts on a 128-byte
line pair so that adjacent-line prefetch never shares a written line)::

    offset                      contents                                 written by
    0           HEADER  (LINE_PAIR bytes)
                  +0  magic         "RTRING01" as u64                    create()
                  +8  version       LAYOUT_VERSION                       create()
                  +16 capacity      power of two                         create()
                  +24 itemsize      record bytes                         create()
                  +32 fingerprint   ringbuffers.dtypes.dtype_fingerprint create()
                  +40 consumers     number of consumer cursors           create()
                  +48 policy        0 = block, 1 = overwrite             create()
                  +56 owner_pid     pid of the creating process          create()
                  +64 created_ns    CLOCK_REALTIME ns                    create()
                  +72 records_off   byte offset of the record area       create()
    128         PRODUCER (LINE_PAIR bytes)
                  +0  publish       seq one past the last published      producer (release)
                  +8  claim         seq one past the last being written  producer (relaxed, then release fence)
                  +16 stalls        times a publish found the ring full  producer
                  +24 producer_pid  pid of the attached producer         producer
                  +32 gate_cache    last seen slowest consumer cursor     producer
                  +40 wakes         FUTEX_WAKE syscalls made             producer
    256         WAITERS (LINE_PAIR bytes)
                  +0  waiting       1: a consumer may sleep in FUTEX_WAIT consumers (xchg 1), producer (xchg 0)
    384+128*i   CONSUMER i (LINE_PAIR bytes)
                  +0  cursor        seq of the next record to read       consumer i (release)
                  +8  lapped        times it was overrun (overwrite)     consumer i
                  +16 lost          records it lost to overruns          consumer i
                  +24 consumer_pid  pid of the attached consumer         consumer i
                  +32 waits         FUTEX_WAITs it entered               consumer i
    records_off RECORDS  capacity * itemsize, starts on a line pair

The futex word is the low 32 bits of ``publish`` (bytes +0..+3 of the
PRODUCER block: x86-64 is little-endian). ``waiting`` has a line pair of its
own: the producer loads it after every publish and it stays in the producer's
cache, unchanged, until a consumer goes to sleep.

Publish protocol: write the record(s) into their slots, then store
``publish`` with release semantics. Read protocol: load ``publish`` with
acquire semantics, then read slots below it, then store the own ``cursor``
with release semantics (the producer under ``block`` loads consumer cursors
with acquire semantics before reusing a slot).

Policies
--------
``block``: the producer never overwrites a slot that some consumer has not
read. A publish that does not fit returns ``FULL`` (or waits with an idle
strategy in ``publish_wait``) and counts a stall. Consumers get zero-copy
views of the slots.

``overwrite``: the producer never waits. Before writing slots it stores
``claim`` (then a release fence), so a reader can tell afterwards whether a
slot it copied might have been overwritten while it copied it (the seqlock
pattern, as in Aeron's broadcast buffer). A consumer copies records out, then
(after an acquire fence) loads ``claim``; every copied record whose seq is
below ``claim - capacity`` is discarded and reported as lost. A lapped
consumer therefore gets an explicit lost count equal to exactly the records
it did not see, and never a torn or mixed record.

Sleeping consumers (futex)
--------------------------
A consumer that found nothing may sleep in the kernel until the producer
publishes (``Ring.wait``, used by ``ringbuffers.idle.Futex``):

1. ``waiting = 1`` with an atomic exchange (``XCHG``: a full barrier);
2. re-load ``publish``; if records arrived, return;
3. ``FUTEX_WAIT`` on the low half of ``publish`` with the value it loaded
   and a time-out (the kernel sleeps only if the word still holds it);
4. re-check on return (woken, word changed, timed out or a signal).

The producer, after its release store of ``publish`` (every Python producer
path: ``publish``, ``publish_batch``, ``commit``, ``publish_wait``), runs
``notify``: a full barrier, then a load of ``waiting``; only if it is set,
``waiting = 0`` (exchange) and ``FUTEX_WAKE`` of all waiters. With nobody
asleep this costs a fence and a load, no syscall. The two barriers are what
prevent the classic lost wake-up: x86-64 TSO lets a store be passed by a
later load of another address, so without them the producer could read
``waiting == 0`` while the consumer reads the old ``publish`` and sleeps.
With them, either the consumer sees the new ``publish`` (step 2) or the
producer sees ``waiting == 1`` and wakes it; the kernel's value check in
step 3 covers a wake that arrives before the consumer is queued. The
producer (not the consumer) clears ``waiting``, so with several consumers
none can clear another's announcement, and a burst of publishes after a
wake-up makes one syscall, not one per record. A consumer that timed out
leaves ``waiting`` set: at most one needless wake syscall per time-out.

Numba producers (``nb_publish_end``, ``nb_publish_copy`` inside a worker's
own kernel) do not notify: call ``nb_notify(ctrl)`` in the kernel after the
publishes of a batch, or ``Ring.notify()`` from Python after the kernel
returns. A publisher that does neither leaves a sleeping consumer asleep
until its time-out (latency, never a hang or lost data).

Memory ordering is documented in ``ringbuffers.atomics``: LLVM atomics in
numba (any CPU LLVM supports), numpy aligned stores ordered by x86-64 TSO in
plain Python (x86-64 only; import refuses elsewhere).

Numba use
---------
``Ring.ctrl`` (int64 view of header and cursors) and ``Ring.slots`` (the
structured record array) are plain numpy arrays; pass them to the ``nb_*``
kernels below from inside your own ``@njit`` loop.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import NamedTuple
from multiprocessing import resource_tracker, shared_memory

import numba as nb
import numpy as np

from ringbuffers.atomics import (
    check_cpu,
    cpu_pause,
    exchange,
    fence_acquire,
    fence_release,
    fence_seq_cst,
    load_acquire,
    load_relaxed,
    store_release,
)
from ringbuffers.dtypes import describe_dtype, dtype_fingerprint
from ringbuffers.errors import RingError, RingExistsError, RingMismatchError, RingNotFoundError
from ringbuffers.futex import futex_wait, nb_futex_wake

check_cpu()

CACHE_LINE = 64  # bytes; record itemsizes must be multiples of it
LINE_PAIR = 2 * CACHE_LINE
WORD = 8
MAGIC = int.from_bytes(b"RTRING01", "little")
LAYOUT_VERSION = 3  # 2: producer gate cache; 3: futex waiters block, wakes/waits counters

POLICY_BLOCK = 0
POLICY_OVERWRITE = 1
POLICIES = {"block": POLICY_BLOCK, "overwrite": POLICY_OVERWRITE}

FULL = -1  # publish/claim sentinel: the ring is full (block policy)

# header words (index into ctrl = byte offset // WORD)
H_MAGIC = 0
H_VERSION = 1
H_CAPACITY = 2
H_ITEMSIZE = 3
H_FINGERPRINT = 4
H_CONSUMERS = 5
H_POLICY = 6
H_OWNER_PID = 7
H_CREATED_NS = 8
H_RECORDS_OFF = 9

PRODUCER_OFF = LINE_PAIR
P_PUBLISH = PRODUCER_OFF // WORD + 0
P_CLAIM = PRODUCER_OFF // WORD + 1
P_STALLS = PRODUCER_OFF // WORD + 2
P_PID = PRODUCER_OFF // WORD + 3
P_GATE = PRODUCER_OFF // WORD + 4  # cached min consumer cursor (a lower bound: cursors only grow)
P_WAKES = PRODUCER_OFF // WORD + 5  # FUTEX_WAKE syscalls the producer made

WAITERS_OFF = 2 * LINE_PAIR
W_WAITING = WAITERS_OFF // WORD + 0  # 1 while a consumer may be asleep in FUTEX_WAIT on publish

CONSUMERS_OFF = 3 * LINE_PAIR
C_STRIDE = LINE_PAIR // WORD  # words between consumer blocks
C_CURSOR = 0
C_LAPPED = 1
C_LOST = 2
C_PID = 3
C_WAITS = 4

MAX_CONSUMERS = 64
SEGMENT_PREFIX = "ringtrader."
SHM_DIR = "/dev/shm"


def consumer_word(i: int, field: int) -> int:
    """ctrl index of field ``field`` of consumer ``i``."""
    return CONSUMERS_OFF // WORD + i * C_STRIDE + field


def records_offset(consumers: int) -> int:
    return CONSUMERS_OFF + consumers * LINE_PAIR


def segment_size(dtype: np.dtype, capacity: int, consumers: int) -> int:
    return records_offset(consumers) + capacity * dtype.itemsize


# ---------------------------------------------------------------------------
# numba kernels: the protocol, usable inside a worker's own @njit loop.
# ---------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _cword(i, field):
    return (CONSUMERS_OFF // WORD) + i * C_STRIDE + field


@nb.njit(cache=True)
def nb_min_consumer_cursor(ctrl):
    """Smallest consumer cursor (acquire loads): the oldest unread seq."""
    n = ctrl[H_CONSUMERS]
    lowest = load_acquire(ctrl, _cword(0, C_CURSOR))
    for i in range(1, n):
        c = load_acquire(ctrl, _cword(i, C_CURSOR))
        if c < lowest:
            lowest = c
    return lowest


@nb.njit(cache=True)
def nb_publish_begin(ctrl, n):
    """Reserve ``n`` slots for the producer. Returns the first seq, or FULL.

    Under ``block`` the reservation fails (and counts a stall) unless every
    consumer has read far enough; under ``overwrite`` it always succeeds and
    marks the slots as being written (claim + release fence) before any slot
    store the caller makes next.
    """
    seq = ctrl[P_PUBLISH]  # producer-owned: plain load
    cap = ctrl[H_CAPACITY]
    if n > cap:
        return FULL
    if ctrl[H_POLICY] == POLICY_BLOCK:
        # Disruptor-style gating: re-read the consumer cursors (cross-core cache
        # misses) only when the cached slowest cursor says the ring is full.
        if seq + n - ctrl[P_GATE] > cap:
            ctrl[P_GATE] = nb_min_consumer_cursor(ctrl)
            if seq + n - ctrl[P_GATE] > cap:
                ctrl[P_STALLS] += 1
                return FULL
    else:
        store_release(ctrl, P_CLAIM, seq + n)
        fence_release()
    return seq


@nb.njit(cache=True)
def nb_publish_end(ctrl, end_seq):
    """Make every slot below ``end_seq`` visible to consumers (release store)."""
    if ctrl[H_POLICY] == POLICY_BLOCK:
        ctrl[P_CLAIM] = end_seq
    store_release(ctrl, P_PUBLISH, end_seq)


@nb.njit(cache=True)
def nb_publish_copy(ctrl, slots, records):
    """Publish ``records`` (same dtype as ``slots``). Returns count or FULL."""
    n = records.shape[0]
    seq = nb_publish_begin(ctrl, n)
    if seq == FULL:
        return FULL
    mask = ctrl[H_CAPACITY] - 1
    for i in range(n):
        slots[(seq + i) & mask] = records[i]
    nb_publish_end(ctrl, seq + n)
    return n


@nb.njit(cache=True)
def nb_notify(ctrl):
    """Producer: wake consumers asleep on ``publish`` (see "Sleeping consumers"). Returns 1 if it woke.

    Call after ``nb_publish_end``/``nb_publish_copy`` (once per batch is
    enough); a numba publisher that does not call it (or ``Ring.notify``
    after its kernel) leaves a futex-waiting consumer asleep until its
    time-out. With nobody asleep: one fence and one load.
    """
    fence_seq_cst()  # our publish store before the load of ``waiting`` (store -> load)
    if load_relaxed(ctrl, W_WAITING) == 0:
        return 0
    if exchange(ctrl, W_WAITING, 0) == 0:
        return 0  # another notify took it
    ctrl[P_WAKES] += 1
    nb_futex_wake(ctrl, P_PUBLISH)
    return 1


@nb.njit(cache=True)
def nb_fence_seq_cst():
    """A full barrier callable from Python (a no-argument call: the cheapest numba dispatch)."""
    fence_seq_cst()


@nb.njit(cache=True)
def nb_announce_waiter(ctrl):
    """Consumer: set ``waiting`` (an exchange: a full barrier before the caller re-loads ``publish``)."""
    exchange(ctrl, W_WAITING, 1)


_warm = False


def warm_notify_kernels() -> None:
    """Load (compile or read from cache) the notify/wait kernels now, on a scratch header.

    Run once per process when a producer or a futex-waiting consumer is set
    up, so the first publish of a live loop does not pay for it.
    """
    global _warm
    if _warm:
        return
    scratch = np.zeros(CONSUMERS_OFF // WORD, np.int64)  # waiting == 0: nb_notify makes no syscall
    nb_fence_seq_cst()
    nb_notify(scratch)
    nb_announce_waiter(scratch)
    _warm = True


@nb.njit(cache=True)
def nb_available(ctrl, ci):
    """Records consumer ``ci`` may read now (may exceed capacity if lapped)."""
    return load_acquire(ctrl, P_PUBLISH) - ctrl[_cword(ci, C_CURSOR)]


@nb.njit(cache=True)
def nb_poll_view(ctrl, ci, max_n):
    """Block policy: (first seq, count) of records consumer ``ci`` may read in place.

    Read ``slots[(seq + k) & mask]`` for k < count, then ``nb_poll_end``.
    """
    cursor = ctrl[_cword(ci, C_CURSOR)]
    avail = load_acquire(ctrl, P_PUBLISH) - cursor
    n = avail if avail < max_n else max_n
    return cursor, n


@nb.njit(cache=True)
def nb_poll_end(ctrl, ci, new_cursor):
    """Consumer ``ci`` has finished with every record below ``new_cursor``."""
    store_release(ctrl, _cword(ci, C_CURSOR), new_cursor)


@nb.njit(cache=True)
def nb_poll_copy(ctrl, slots, ci, out):
    """Copy up to ``len(out)`` records for consumer ``ci`` into ``out`` and advance.

    Safe under both policies. Returns ``(count, lost)``: ``out[:count]`` are
    whole records in order; ``lost`` records (overwrite policy only) were
    overrun before they could be read and are skipped; the lapped counters in
    the consumer block are updated.
    """
    cap = ctrl[H_CAPACITY]
    mask = cap - 1
    cursor = ctrl[_cword(ci, C_CURSOR)]
    published = load_acquire(ctrl, P_PUBLISH)
    lost = 0
    if published - cursor > cap:
        lost = published - cap - cursor
        cursor = published - cap
    n = published - cursor
    if n > out.shape[0]:
        n = out.shape[0]
    for k in range(n):
        out[k] = slots[(cursor + k) & mask]
    if ctrl[H_POLICY] == POLICY_OVERWRITE:
        fence_acquire()
        oldest_intact = load_relaxed(ctrl, P_CLAIM) - cap
        if oldest_intact > cursor:
            drop = oldest_intact - cursor
            if drop > n:
                drop = n
            lost += drop
            for k in range(n - drop):
                out[k] = out[k + drop]
            cursor += drop
            n -= drop
    if lost > 0:
        ctrl[_cword(ci, C_LAPPED)] += 1
        ctrl[_cword(ci, C_LOST)] += lost
    store_release(ctrl, _cword(ci, C_CURSOR), cursor + n)
    return n, lost


@nb.njit(cache=True)
def nb_spin_for_data(ctrl, ci, spins):
    """Busy-poll (with PAUSE) up to ``spins`` times; returns records available."""
    cursor = ctrl[_cword(ci, C_CURSOR)]
    for _ in range(spins):
        avail = load_acquire(ctrl, P_PUBLISH) - cursor
        if avail > 0:
            return avail
        cpu_pause()
    return 0


@nb.njit(cache=True)
def nb_pause():
    cpu_pause()


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------


class Poll(NamedTuple):
    """Result of ``Ring.poll``: ``records`` to read, ``lost`` records skipped before them."""

    records: np.ndarray
    lost: int

    @property
    def lapped(self) -> bool:
        return self.lost > 0


@dataclass(frozen=True)
class RingStats:
    name: str
    capacity: int
    policy: str
    published: int
    stalls: int
    consumed: tuple[int, ...]  # per consumer: its cursor
    lapped: tuple[int, ...]
    lost: tuple[int, ...]

    def as_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "policy": self.policy,
            "published": self.published,
            "stalls": self.stalls,
            "consumed": list(self.consumed),
            "lapped": list(self.lapped),
            "lost": list(self.lost),
            "lag": [self.published - c for c in self.consumed],
        }


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python < 3.13 registers every attached segment with the resource tracker,
    # which unlinks it when *any* attaching process exits. The supervisor owns
    # the segments' lifetime (and cleans up after a killed run), so opt out.
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
    except Exception:  # the tracker may not have it registered; nothing to undo
        pass


class Ring:
    """A handle on one ring segment: the owner, the producer, a consumer or a monitor.

    Build with ``Ring.create`` (owner; may also produce) or ``Ring.attach``.
    """

    def __init__(self, shm: shared_memory.SharedMemory, dtype: np.dtype, role, owner: bool):
        self._shm = shm
        self.name = shm.name.lstrip("/")
        self.dtype = dtype
        self.owner = owner
        buf = shm.buf
        head = np.ndarray((H_RECORDS_OFF + 1,), np.int64, buf, 0)
        consumers = int(head[H_CONSUMERS])
        self.capacity = int(head[H_CAPACITY])
        self.consumers = consumers
        self.mask = self.capacity - 1
        roff = int(head[H_RECORDS_OFF])
        self.ctrl = np.ndarray((roff // WORD,), np.int64, buf, 0)
        # The same header words as Python ints: the plain-Python hot paths use
        # this view (an aligned 8-byte load/store each, ~5x cheaper than numpy
        # scalar indexing); numba kernels and counters use ``ctrl``.
        self._w = buf[:roff].cast("q")
        self.slots = np.ndarray((self.capacity,), dtype, buf, roff)
        self.policy = int(self.ctrl[H_POLICY])
        self.role = role
        self.consumer_index = role if isinstance(role, int) else -1
        self._cursor_word = consumer_word(self.consumer_index, C_CURSOR) if self.consumer_index >= 0 else -1
        self._claimed = 0
        self._claim_seq = 0
        self._pending = 0  # records handed out by poll() and not yet released
        self._copy_buf: np.ndarray | None = None
        # The futex word: low 32 bits of ``publish`` (little-endian), by address (no buffer export).
        self._publish_addr = self.ctrl.ctypes.data + P_PUBLISH * WORD
        if role == "producer":
            self.ctrl[P_PID] = os.getpid()
            warm_notify_kernels()
        elif self.consumer_index >= 0:
            self.ctrl[consumer_word(self.consumer_index, C_PID)] = os.getpid()

    # -- construction -------------------------------------------------------

    @classmethod
    def create(cls, name: str, dtype: np.dtype, capacity: int, consumers: int, policy: str = "block") -> "Ring":
        """Create and initialise a segment ``/dev/shm/<name>`` (mode 0600); the caller owns it."""
        if capacity < 2 or capacity & (capacity - 1):
            raise RingError(f"ring {name}: capacity must be a power of two >= 2, got {capacity}")
        if not 1 <= consumers <= MAX_CONSUMERS:
            raise RingError(f"ring {name}: consumers must be in 1..{MAX_CONSUMERS}, got {consumers}")
        if policy not in POLICIES:
            raise RingError(f"ring {name}: policy must be one of {sorted(POLICIES)}, got {policy!r}")
        if dtype.itemsize % CACHE_LINE:
            raise RingError(f"ring {name}: record itemsize must be a multiple of {CACHE_LINE}, got {dtype.itemsize}")
        size = segment_size(dtype, capacity, consumers)
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError as exc:
            raise RingExistsError(f"ring {name}: a segment of that name exists (remove_stale() cleans dead owners')") from exc
        _untrack(shm)
        os.fchmod(shm._fd, 0o600)  # noqa: SLF001 - CPython already creates 0600; make it explicit
        head = np.ndarray((records_offset(consumers) // WORD,), np.int64, shm.buf, 0)
        head[:] = 0
        head[H_VERSION] = LAYOUT_VERSION
        head[H_CAPACITY] = capacity
        head[H_ITEMSIZE] = dtype.itemsize
        head[H_FINGERPRINT] = dtype_fingerprint(dtype)
        head[H_CONSUMERS] = consumers
        head[H_POLICY] = POLICIES[policy]
        head[H_OWNER_PID] = os.getpid()
        head[H_CREATED_NS] = time.time_ns()
        head[H_RECORDS_OFF] = records_offset(consumers)
        head[H_MAGIC] = np.int64(MAGIC)  # last: a half-initialised segment has no magic
        del head
        return cls(shm, dtype, "producer", owner=True)

    @classmethod
    def attach(cls, name: str, dtype: np.dtype, role) -> "Ring":
        """Attach to an existing ring as ``"producer"``, ``"monitor"`` or consumer index ``int``.

        Raises ``RingNotFoundError`` if the segment is missing and
        ``RingMismatchError`` (naming both sides) if its layout is not ``dtype``.
        """
        try:
            shm = shared_memory.SharedMemory(name=name, create=False)
        except FileNotFoundError as exc:
            raise RingNotFoundError(f"ring {name}: no segment /dev/shm/{name} (is the supervisor running?)") from exc
        _untrack(shm)
        try:
            head = np.ndarray((H_RECORDS_OFF + 1,), np.int64, shm.buf, 0)
            problems = []
            if int(head[H_MAGIC]) != MAGIC:
                problems.append(f"magic {int(head[H_MAGIC]):#x} != {MAGIC:#x} (not a ring, or not initialised)")
            else:
                if int(head[H_VERSION]) != LAYOUT_VERSION:
                    problems.append(f"layout version: segment {int(head[H_VERSION])}, this code {LAYOUT_VERSION}")
                want_fp = dtype_fingerprint(dtype)
                if int(head[H_FINGERPRINT]) != want_fp or int(head[H_ITEMSIZE]) != dtype.itemsize:
                    problems.append(
                        f"record dtype: segment itemsize {int(head[H_ITEMSIZE])} fingerprint "
                        f"{int(head[H_FINGERPRINT]):#x}, caller {describe_dtype(dtype)} itemsize {dtype.itemsize} "
                        f"fingerprint {want_fp:#x}"
                    )
                consumers = int(head[H_CONSUMERS])
                expected = segment_size(dtype, int(head[H_CAPACITY]), consumers)
                if shm.size < expected:
                    problems.append(f"segment size {shm.size} < {expected} required by its header")
                if isinstance(role, bool) or not (role in ("producer", "monitor") or isinstance(role, int)):
                    raise RingError(f"ring {name}: role must be 'producer', 'monitor' or a consumer index, got {role!r}")
                if isinstance(role, int) and not 0 <= role < consumers:
                    problems.append(f"consumer index {role} not in 0..{consumers - 1}")
            del head
            if problems:
                raise RingMismatchError(f"ring {name}: " + "; ".join(problems))
        except BaseException:
            shm.close()
            raise
        return cls(shm, dtype, role, owner=False)

    def prefault(self) -> int:
        """Map every page of the segment into this process now (reads one byte per page); returns the pages.

        A process that attaches maps the shared pages lazily, on first touch:
        without this, the first lap of a slow ring takes a page fault on the
        hot path every 4 KiB, and RSS creeps up until the ring has wrapped
        once (which a soak cannot tell from a leak). Reading never changes the
        ring; a process starting to read a ring that is in use is safe.
        """
        view = memoryview(self._shm.buf).cast("B")
        total = 0
        page = mmap.PAGESIZE
        for off in range(0, len(view), page):
            total += view[off]
        del view
        return (self._shm.size + page - 1) // page

    def expect_capacity(self, capacity: int) -> None:
        """Raise ``RingMismatchError`` unless the segment has ``capacity`` slots."""
        if capacity != self.capacity:
            raise RingMismatchError(f"ring {self.name}: capacity: segment {self.capacity}, caller {capacity}")

    # -- producer -----------------------------------------------------------

    def _reserve(self, n: int) -> int:
        w = self._w
        seq = w[P_PUBLISH]
        if n > self.capacity:
            raise RingError(f"ring {self.name}: batch of {n} exceeds capacity {self.capacity}")
        if self.policy == POLICY_BLOCK:
            if seq + n - w[P_GATE] > self.capacity:  # cached slowest cursor, as nb_publish_begin
                w[P_GATE] = self._min_cursor()
                if seq + n - w[P_GATE] > self.capacity:
                    w[P_STALLS] += 1
                    return FULL
        else:
            w[P_CLAIM] = seq + n  # x86-64 TSO: visible before the slot stores that follow
        return seq

    def _min_cursor(self) -> int:
        ctrl = self.ctrl
        base = CONSUMERS_OFF // WORD
        return int(ctrl[base: base + self.consumers * C_STRIDE: C_STRIDE].min())

    def _finish(self, end_seq: int) -> None:
        w = self._w
        if self.policy == POLICY_BLOCK:
            w[P_CLAIM] = end_seq
        w[P_PUBLISH] = end_seq  # after the slot stores (TSO)
        nb_fence_seq_cst()  # the publish store before the load of ``waiting`` (see notify)
        if w[W_WAITING]:
            nb_notify(self.ctrl)

    def notify(self) -> bool:
        """Wake consumers asleep in ``wait`` (``FUTEX_WAKE``) if any announced itself. Returns whether it woke.

        The Python producer methods do this themselves. A numba producer
        (``nb_publish_end``/``nb_publish_copy`` inside a worker's kernel)
        must call ``nb_notify(ctrl)`` in the kernel or this method after the
        kernel returns, or a futex-waiting consumer sleeps until its time-out.
        With nobody asleep it costs a fence and a load, no syscall.
        """
        nb_fence_seq_cst()
        if self._w[W_WAITING]:
            return bool(nb_notify(self.ctrl))
        return False

    def publish(self, record) -> int:
        """Publish one record (a ``np.void`` of the ring's dtype or a tuple). Returns seq or ``FULL``."""
        seq = self._reserve(1)
        if seq == FULL:
            return FULL
        self.slots[seq & self.mask] = record
        self._finish(seq + 1)
        return seq

    def publish_batch(self, records: np.ndarray) -> int:
        """Publish as many of ``records`` as fit, in order. Returns how many (0 when full)."""
        total = len(records)
        done = 0
        while done < total:
            free = self.free_slots(total - done)
            n = min(total - done, free if self.policy == POLICY_BLOCK else self.capacity)
            if n <= 0:
                self.ctrl[P_STALLS] += 1
                break
            seq = self._reserve(n)
            if seq == FULL:
                break
            start = seq & self.mask
            first = min(n, self.capacity - start)
            self.slots[start:start + first] = records[done:done + first]
            if first < n:
                self.slots[: n - first] = records[done + first:done + n]
            self._finish(seq + n)
            done += n
        return done

    def publish_wait(self, record, idle, timeout_s: float | None = None) -> int:
        """Publish one record, waiting with ``idle`` while the ring is full. Returns seq or ``FULL`` on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            seq = self.publish(record)
            if seq != FULL:
                idle.idle(1)
                return seq
            if deadline is not None and time.monotonic() > deadline:
                return FULL
            idle.idle(0)

    def free_slots(self, want: int | None = None) -> int:
        """Slots the producer may write now; with ``want``, the consumer cursors are
        re-read only if the cached slowest cursor shows fewer than ``want`` free."""
        if self.policy == POLICY_OVERWRITE:
            return self.capacity
        ctrl = self.ctrl
        free = self.capacity - (int(ctrl[P_PUBLISH]) - int(ctrl[P_GATE]))
        if want is None or free < want:
            ctrl[P_GATE] = self._min_cursor()
            free = self.capacity - (int(ctrl[P_PUBLISH]) - int(ctrl[P_GATE]))
        return free

    def claim(self, n: int) -> np.ndarray | None:
        """Reserve up to ``n`` contiguous slots and return them to write in place; ``None`` when full.

        Fewer than ``n`` slots come back at the wrap point. Write the fields,
        then ``commit()``; nothing is visible to consumers before that.
        """
        if self._claimed:
            raise RingError(f"ring {self.name}: claim() while {self._claimed} slots are claimed and not committed")
        seq = int(self.ctrl[P_PUBLISH])
        n = min(n, self.capacity - (seq & self.mask))
        if self.policy == POLICY_BLOCK:
            n = min(n, self.free_slots(n))
            if n <= 0:
                self.ctrl[P_STALLS] += 1
                return None
        seq = self._reserve(n)
        if seq == FULL:
            return None
        self._claimed = n
        self._claim_seq = seq
        start = seq & self.mask
        return self.slots[start:start + n]

    def commit(self, n: int | None = None) -> None:
        """Publish the first ``n`` (default: all) claimed slots."""
        if not self._claimed:
            raise RingError(f"ring {self.name}: commit() without claim()")
        n = self._claimed if n is None else n
        if not 0 <= n <= self._claimed:
            raise RingError(f"ring {self.name}: commit({n}) but {self._claimed} slots are claimed")
        self._claimed = 0
        self._finish(self._claim_seq + n)

    # -- consumer -----------------------------------------------------------

    def _require_consumer(self) -> int:
        if self.consumer_index < 0:
            raise RingError(f"ring {self.name}: poll() needs a consumer handle, this one is {self.role!r}")
        return self._cursor_word

    def poll(self, max_n: int = 256) -> Poll:
        """Up to ``max_n`` records for this consumer, oldest first.

        ``block``: a zero-copy view of the slots, valid until ``release()``.
        ``overwrite``: a validated private copy; ``lost`` says how many records
        were overrun before they could be read (the consumer was lapped).
        Call ``release()`` (or use ``consume``) after handling the records.
        """
        cw = self._require_consumer()
        if self._pending:
            raise RingError(f"ring {self.name}: poll() before release() of the previous {self._pending} records")
        w = self._w
        cursor = w[cw]
        published = w[P_PUBLISH]
        if self.policy == POLICY_BLOCK:
            start = cursor & self.mask
            n = min(published - cursor, max_n, self.capacity - start)
            self._pending = n
            return Poll(self.slots[start:start + n], 0)
        lost = 0
        if published - cursor > self.capacity:
            lost = published - self.capacity - cursor
            cursor = published - self.capacity
        n = min(published - cursor, max_n)
        if self._copy_buf is None or len(self._copy_buf) < max_n:
            self._copy_buf = np.empty(max(max_n, 1), self.dtype)
        out = self._copy_buf
        start = cursor & self.mask
        first = min(n, self.capacity - start)
        out[:first] = self.slots[start:start + first]
        if first < n:
            out[first:n] = self.slots[: n - first]
        # seqlock validation: a copied slot is intact only if the producer had
        # not begun rewriting it (claim - capacity <= seq) after we copied it.
        oldest_intact = w[P_CLAIM] - self.capacity
        drop = 0
        if oldest_intact > cursor:
            drop = min(oldest_intact - cursor, n)
            lost += drop
        if lost:
            w[consumer_word(self.consumer_index, C_LAPPED)] += 1
            w[consumer_word(self.consumer_index, C_LOST)] += lost
        w[cw] = cursor + drop  # skipped records are gone; handled ones are released below
        self._pending = n - drop
        return Poll(out[drop:n], lost)

    def release(self, n: int | None = None) -> None:
        """Mark the first ``n`` (default: all) records of the last poll as read."""
        n = self._pending if n is None else min(n, self._pending)
        self._pending = 0
        if n:
            self._w[self._cursor_word] += n  # single writer; TSO orders it after our reads

    def consume(self, handler, max_n: int = 256) -> int:
        """Poll, call ``handler(records, lost)``, and release even if it raises. Returns records handled."""
        p = self.poll(max_n)
        try:
            if len(p.records) or p.lost:
                handler(p.records, p.lost)
        finally:
            self.release()
        return len(p.records)

    def wait(self, timeout_ns: int) -> int:
        """Consumer: sleep in the kernel until the producer publishes or ``timeout_ns`` passes.

        Returns the records available to this consumer now (0 after a
        time-out, a signal or a spurious wake-up: callers just poll again).
        Returns at once if records are already available or ``timeout_ns``
        <= 0. The protocol (and why it cannot miss a wake-up) is in the
        module docstring, "Sleeping consumers".
        """
        cw = self._require_consumer()
        w = self._w
        avail = w[P_PUBLISH] - w[cw]
        if avail > 0 or timeout_ns <= 0:
            return avail
        nb_announce_waiter(self.ctrl)  # waiting = 1, full barrier
        seen = w[P_PUBLISH]
        avail = seen - w[cw]
        if avail > 0:
            return avail
        w[consumer_word(self.consumer_index, C_WAITS)] += 1
        futex_wait(self._publish_addr, seen, timeout_ns)
        return w[P_PUBLISH] - w[cw]

    @property
    def wakes(self) -> int:
        """FUTEX_WAKE syscalls the producer of this ring made (any process)."""
        return int(self.ctrl[P_WAKES])

    @property
    def waits(self) -> int:
        """FUTEX_WAITs this consumer entered."""
        self._require_consumer()
        return int(self.ctrl[consumer_word(self.consumer_index, C_WAITS)])

    def peek(self, max_n: int = 256) -> tuple[np.ndarray, int]:
        """``block`` rings: a private copy of up to ``max_n`` unread records (across the wrap) WITHOUT moving
        this consumer's cursor, and the seq just past them. The slots stay protected until ``release_to``
        moves the cursor there, so a consumer that dies after peeking loses nothing (the journal releases
        only what it has committed)."""
        cw = self._require_consumer()
        if self.policy != POLICY_BLOCK:
            raise RingError(f"ring {self.name}: peek() needs a block ring (an overwrite ring may tear the copy)")
        if self._pending:
            raise RingError(f"ring {self.name}: peek() before release() of the previous {self._pending} records")
        w = self._w
        cursor = w[cw]
        n = min(w[P_PUBLISH] - cursor, max_n)
        if n <= 0:
            return np.empty(0, self.dtype), cursor
        start = cursor & self.mask
        first = min(n, self.capacity - start)
        out = np.empty(n, self.dtype)
        out[:first] = self.slots[start:start + first]
        if first < n:
            out[first:] = self.slots[: n - first]
        return out, cursor + n

    def release_to(self, seq: int) -> None:
        """Move this consumer's cursor forward to ``seq`` (every record below it is handled)."""
        cw = self._require_consumer()
        if seq > self._w[cw]:
            self._w[cw] = seq

    @property
    def token(self) -> str:
        """This segment's identity across runs: creation time and creating pid (a recreated ring differs)."""
        return f"{int(self.ctrl[H_CREATED_NS])}:{int(self.ctrl[H_OWNER_PID])}"

    def lag(self) -> int:
        """Records published and not yet read by this consumer."""
        return self._w[P_PUBLISH] - self._w[self._require_consumer()]

    @property
    def cursor(self) -> int:
        return int(self.ctrl[self._require_consumer()])

    # -- counters -----------------------------------------------------------

    @property
    def published(self) -> int:
        return int(self.ctrl[P_PUBLISH])

    def stats(self) -> RingStats:
        c = self.ctrl
        idx = range(self.consumers)
        return RingStats(
            name=self.name,
            capacity=self.capacity,
            policy="block" if self.policy == POLICY_BLOCK else "overwrite",
            published=int(c[P_PUBLISH]),
            stalls=int(c[P_STALLS]),
            consumed=tuple(int(c[consumer_word(i, C_CURSOR)]) for i in idx),
            lapped=tuple(int(c[consumer_word(i, C_LAPPED)]) for i in idx),
            lost=tuple(int(c[consumer_word(i, C_LOST)]) for i in idx),
        )

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Drop this process's mapping (views into it become invalid)."""
        if self._shm is None:
            return
        self.ctrl = None
        self.slots = None
        self._copy_buf = None
        self._w.release()
        self._w = None
        try:
            self._shm.close()
        except BufferError:
            # a caller still holds a view (e.g. a Poll); the mapping goes with the process
            pass
        self._shm = None

    def unlink(self) -> None:
        """Remove the segment name (mappings stay valid until closed)."""
        try:
            shared_memory.SharedMemory(name=self.name, create=False).unlink()
        except FileNotFoundError:
            pass

    def __del__(self):
        # Unmap in a safe order (our int64 view first) when a handle is dropped unclosed.
        if getattr(self, "_shm", None) is not None:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        if self.owner:
            self.unlink()


def segment_name(instance: str, ring: str) -> str:
    """``ringtrader.<instance>.<ring>``: how an operator finds our segments in /dev/shm."""
    return f"{SEGMENT_PREFIX}{instance}.{ring}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_segments(instance: str | None = None) -> list[str]:
    """Names of our segments in /dev/shm (all instances, or one)."""
    prefix = SEGMENT_PREFIX + (f"{instance}." if instance else "")
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def segment_owner(name: str) -> int:
    """Owner pid recorded in a segment header (0 if unreadable)."""
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as f:
            head = f.read((H_OWNER_PID + 1) * WORD)
    except OSError:
        return 0
    if len(head) < (H_OWNER_PID + 1) * WORD or int.from_bytes(head[:8], "little") != MAGIC:
        return 0
    return int.from_bytes(head[H_OWNER_PID * WORD:(H_OWNER_PID + 1) * WORD], "little", signed=True)


def remove_stale(instance: str | None = None) -> list[str]:
    """Unlink our segments whose owner process is gone. Returns the names removed.

    Segments of a live owner are left alone (another instance may be running).
    """
    removed = []
    for name in list_segments(instance):
        if _pid_alive(segment_owner(name)):
            continue
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


# The module-level spelling of the two constructors.
create = Ring.create
attach = Ring.attach

"""Signal stage: features and strategies over the ``book`` ring, decisions out on ``signals``.

Every BOOK_EVENT goes through the feature kernel (``core.features``); closed
bars and top-of-book changes trigger the configured strategies
(``core.strategies``: the rule strategy, the ML strategy and its model, the
trace probe). One kernel call per duty cycle (``signal_step``): poll a batch,
run features and strategies, stamp and publish the signals, record the
``book->signal`` hop. A pickle model (opt-in) is scored in Python right after
the kernel, within its time budget, and its signals are published then.

Nothing here decides from an invalid book or a stale top: those decisions
are suppressed and counted per strategy and reason (``suppressed.*``
counters); emitted signals are counted per strategy and reason
(``signals.*``). Settings are validated before the pipeline starts
(``validate``: exit 2 on a bad strategy, model file or feature contract).
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from core.features import C_BAD_BARS, C_BAD_SYMBOL, C_BARS, FeatureState, new_feature_state
from core.latency import nb_record
from core.models import MODEL_PICKLE
from core.records import BK_BAR, BK_TOP, BOOK_EVENT, SIGNAL
from core.strategies import (
    SignalSettings,
    StrategyState,
    counter_names,
    model_arrays,
    new_strategy_state,
    resolve_pending,
    sig_process,
)
from core.topology import ring_hop
from processes.stage import KernelStage, RingWriter, ring_in, ring_out
from processes.stage_kernels import (
    nb_cursor,
    nb_out_publish,
    nb_out_reserve,
    nb_peek_copy,
    nb_trace_bad,
    scratch_publish,
    scratch_ring,
)
from ringbuffers.clock import nb_monotonic_ns
from ringbuffers.ring import FULL, H_CAPACITY, H_POLICY, POLICY_BLOCK, nb_available, nb_poll_copy, nb_poll_end

# counters (state.counters)
K_SIGNALS = 0
K_TRACE_BAD = 1
K_LOST = 2  # book records overrun before they were read (overwrite policy)
K_OUT_FULL = 3  # cycles that found the signals ring full (the stage then waits with the process's idle)
K_READ = 4  # book records read
K_N = 5


class SignalState(NamedTuple):
    counters: np.ndarray  # int64[K_N]
    scratch: np.ndarray  # BOOK_EVENT[batch]: the records of one cycle
    hop: np.ndarray  # latency histogram of book->signal (core.latency)
    fs: FeatureState  # features of every symbol
    st: StrategyState  # strategies: parameters, intents, counters
    model: tuple  # core.models.ModelArrays of the ml strategy (empty without one)


def new_state(settings: SignalSettings, batch: int = 256, hop: np.ndarray | None = None) -> SignalState:
    from core.latency import new_hist

    return SignalState(counters=np.zeros(K_N, np.int64), scratch=np.zeros(batch, BOOK_EVENT),
                       hop=new_hist() if hop is None else hop,
                       fs=new_feature_state(settings.features, settings.n_symbols),
                       st=new_strategy_state(settings, pend_capacity=batch), model=model_arrays(settings))


@nb.njit(cache=True, nogil=True)
def signal_step(state, book, signals):
    """One duty cycle: book records in, signals out. Returns records consumed, or FULL."""
    in_ctrl, in_slots, ci = book
    out_ctrl, out_slots = signals
    avail = nb_available(in_ctrl, ci)
    if avail == 0:
        return 0
    ns = state.st.types.shape[0]
    want = avail if avail < state.scratch.shape[0] else state.scratch.shape[0]
    # room for every signal the batch can make (one per strategy per record), before anything is read
    seq, room = nb_out_reserve(out_ctrl, want * ns)
    if seq == FULL or room < ns:
        state.counters[K_OUT_FULL] += 1
        return FULL
    m = room // ns
    if m < want:
        want = m
    src = state.scratch
    block = in_ctrl[H_POLICY] == POLICY_BLOCK
    if block:  # the book cursor moves only after the signals are published: risk reads it as a watermark
        first, n = nb_peek_copy(in_ctrl, in_slots, ci, src[:want])
    else:  # overwrite (a lapped ring loses records anyway): plain poll
        first = nb_cursor(in_ctrl, ci)
        n, lost = nb_poll_copy(in_ctrl, in_slots, ci, src[:want])
        state.counters[K_LOST] += lost
        first += lost
    mask = out_ctrl[H_CAPACITY] - 1
    now = nb_monotonic_ns()
    k = sig_process(state.st, state.fs, state.model, src, n, now, out_slots, seq, mask, first)
    if k > 0:
        now = nb_out_publish(out_ctrl, out_slots, seq, k)
    if block:
        nb_poll_end(in_ctrl, ci, first + n)
    for i in range(n):
        nb_record(state.hop, now - src[i].pub_ns)
    state.counters[K_TRACE_BAD] += nb_trace_bad(src, n, now)
    state.counters[K_SIGNALS] += k
    state.counters[K_READ] += n
    return n


def validate(config) -> SignalSettings:
    """Check ``signal`` (strategies, features, model file and its feature contract); ConfigError -> exit 2."""
    return SignalSettings.build(config)


class SignalStage(KernelStage):
    COUNTERS = {"signals": K_SIGNALS, "read": K_READ, "trace_violations": K_TRACE_BAD, "book_lost": K_LOST,
                "signals_full": K_OUT_FULL}

    def __init__(self, config, ctx):
        self.ctx = ctx
        self.settings = validate(config)
        self.book = ring_in(ctx.inputs["book"])
        self.writer = RingWriter(ctx.outputs["signals"], ctx, scratch=max(1, ctx.process.batch))
        self.signals = ring_out(ctx.outputs["signals"])
        self.state = new_state(self.settings, ctx.process.batch, ctx.latency.hop(ring_hop("book", "signal")).h)
        self._named = counter_names(self.settings)
        self._pickle = self.settings.model is not None and self.settings.model.kind == MODEL_PICKLE

    def step(self) -> int:
        n = signal_step(self.state, self.book, self.signals)
        if self._pickle and self.state.st.pend_n[0]:
            recs = resolve_pending(self.state.st, self.settings.model)
            if len(recs):
                self.writer.publish(recs)
                self.state.counters[K_SIGNALS] += len(recs)
        return n

    def counters(self) -> dict:
        out = super().counters()
        st, fs = self.state.st, self.state.fs
        for name, (arr, row, col) in self._named.items():
            out[name] = int(getattr(st, arr)[row, col])
        out["bars"] = int(fs.counters[C_BARS])
        out["bad_bars"] = int(fs.counters[C_BAD_BARS])
        out["bad_symbol"] = int(fs.counters[C_BAD_SYMBOL])
        if self._pickle:
            out["model_overruns"] = int(getattr(self.settings.model, "overruns", 0))
        return out


def make_stage(config, ctx) -> SignalStage:
    return SignalStage(config, ctx)


def warm(config) -> None:
    """Load the kernels from the disk cache on a scratch ring pair (no pipeline ring)."""
    settings = validate(config)
    book, signals = scratch_ring(BOOK_EVENT, capacity=8, consumer=True), scratch_ring(SIGNAL, capacity=64)
    slots = book[1]
    slots["kind"][:3] = (BK_TOP, BK_BAR, BK_TOP)
    slots["bar_interval_ms"][1] = settings.features.bar_interval_ms
    slots["bar_close"][1] = slots["bar_high"][1] = slots["bar_low"][1] = 100 * 10**8
    scratch_publish(book, 3)
    signal_step(new_state(settings, 4), book, signals)

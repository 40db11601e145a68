"""Hostile input between real recorded frames changes no figure of scripts/replay_check.py.

Every class of ``core.hostile`` is made from the real frames of a recording
and spliced in at random places (hypothesis draws the classes, the frames
and the places); the spliced session then goes through exactly what
``replay_check.py`` runs (``load_session`` and ``check_session``). Asserted:

* every figure (``check_session``'s whole result, per symbol) equals the
  clean run's;
* the decoded md stream and the klines are identical to the clean run's, so
  every later stage does exactly the clean run's work: the run's cost is the
  clean run's plus the decoder's look at each hostile frame (bounded by its
  size; an oversized one is never parsed);
* the drop counters equal the frames inserted, in total and per group of
  classes whose kinds are the decoder's to tell apart.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.book_replay import RECORDING_SKEW_MS, check_session, load_session
from core.decode import Decoder
from core.hostile import CLASSES, GENERATORS, event_type, hostile_frame
from core.recordings import KIND_WS, Frame, _ws_symbol, iter_frames, iter_recording_dir

# which decoder kinds each group of classes may be counted as
GROUPS = {
    ("unknown_symbol",): {"unknown_symbol"},
    ("ts_far_future",): {"time_ahead"},
    ("ts_far_past", "ts_backwards"): {"time_behind"},
    ("absurd_price", "absurd_qty"): {"negative_price", "negative_qty", "bad_number", "out_of_range", "absurd_value"},
    ("truncated", "non_utf8"): {"malformed_json"},
    ("oversized",): {"oversized", "too_many_levels"},
    ("wrong_types", "valid_json_not_binance"): {"bad_field_type", "not_object", "unknown_stream", "missing_field"},
}
assert sorted(c for g in GROUPS for c in g) == sorted(CLASSES)


@pytest.fixture(scope="module")
def sessions(shared_data):
    """(name, frames, clean session, clean figures) of the recordings the test splices into.

    hftbacktest BTCUSDT 2024 (its first 4000 lines: the snapshot, diffs, trades, bookTicker) and
    cryptofeed 2021-04-17 (10 symbols, connect URL, snapshots, aggTrades, klines that rebuild bars).
    """
    out = []
    for name, frames in (
        ("hftbacktest", list(itertools.islice(iter_frames(shared_data / "hftbacktest" / "btcusdt_20240808.gz"), 4000))),
        ("cryptofeed", list(iter_recording_dir(shared_data / "cryptofeed" / "2021-04-17_be4e5c8"))),
    ):
        clean = load_session(frames)
        out.append((name, frames, clean, check_session(clean)))
    return out


def splice(frames: list[Frame], plan, seed: int) -> tuple[list[Frame], Counter]:
    """``frames`` with one hostile frame per ``(class, frame pick, place pick)`` of ``plan`` inserted.

    Each is made from a real WebSocket frame and gets the receive time of the frame before its place (the
    recorder's clock goes on). A ``ts_backwards`` frame goes after the frame it was made from: "backwards" is
    against the stream at that point.
    """
    rng = random.Random(seed)
    ws = [i for i, f in enumerate(frames) if f.kind == KIND_WS]
    at: dict[int, list[Frame]] = {}
    counts: Counter = Counter()
    for cls, pick, place in plan:
        i = ws[pick % len(ws)]
        _, payload = hostile_frame(rng, frames[i].payload, cls)
        lo = i + 1 if cls == "ts_backwards" else 0
        pos = lo + place % (len(frames) + 1 - lo)
        recv = frames[max(pos - 1, 0)].recv_ns
        # the symbol a recording reader gives it (stream name or "s"), as iter_frames would
        at.setdefault(pos, []).append(Frame(recv, KIND_WS, payload, _ws_symbol(payload)))
        counts[cls] += 1
    out: list[Frame] = []
    for pos, f in enumerate(frames):
        out.extend(at.get(pos, ()))
        out.append(f)
    out.extend(at.get(len(frames), ()))
    return out, counts


def assert_counted(errors: dict, counts: Counter) -> None:
    assert sum(errors.values()) == sum(counts.values()), (errors, counts)
    for classes, kinds in GROUPS.items():
        assert sum(errors.get(k, 0) for k in kinds) == sum(counts[c] for c in classes), (classes, errors, counts)


plans = st.lists(st.tuples(st.sampled_from(CLASSES), st.integers(0, 2**31), st.integers(0, 2**31)),
                 min_size=1, max_size=25)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])
@given(plan=plans, seed=st.integers(0, 2**32 - 1), which=st.sampled_from([0, 1]))
def test_hostile_frames_between_real_ones_change_no_figure_and_are_all_counted(sessions, plan, seed, which):
    name, frames, clean, clean_figures = sessions[which]
    spliced, counts = splice(frames, plan, seed)
    s = load_session(spliced)
    assert s.symbols == clean.symbols, name
    assert check_session(s) == clean_figures, name  # every figure replay_check prints, and the rest
    # the same work downstream: byte-identical md records and klines, the clean run's events
    assert np.array_equal(s.md, clean.md) and s.klines == clean.klines
    assert_counted(s.decode_errors, counts)


def test_every_class_at_every_kind_of_frame_on_the_aggtrade_kline_recording(shared_data):
    """One fixed run over the recording with 51 rebuilt bars: each class made from each kind of frame."""
    frames = list(iter_recording_dir(shared_data / "cryptofeed" / "2021-04-04_2997020"))
    clean = load_session(frames)
    want = check_session(clean)
    rng = random.Random(7)
    by_type: dict[str, list[int]] = {}
    for i, f in enumerate(frames):
        if f.kind == KIND_WS:
            from core.hostile import _split

            by_type.setdefault(event_type(_split(f.payload)[1]) or "other", []).append(i)
    assert {"depthUpdate", "aggTrade", "kline"} <= set(by_type)
    plan = []
    for kind, idx in sorted(by_type.items()):
        for cls in CLASSES:
            j = rng.choice(idx)
            plan.append((cls, [k for k, i in enumerate(i for i, f in enumerate(frames) if f.kind == KIND_WS)
                               if i == j][0], rng.randrange(2**31)))
    spliced, counts = splice(frames, plan, 11)
    s = load_session(spliced)
    assert check_session(s) == want
    assert sum(f["bars_match"] for f in want.values()) == 51
    assert np.array_equal(s.md, clean.md) and s.klines == clean.klines
    assert_counted(s.decode_errors, counts)


# ---------------------------------------------------------------------------
# the generators themselves
# ---------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(CLASSES), st.integers(0, 2**32 - 1))
def test_generators_never_raise_and_never_break_a_line(junk, cls, seed):
    junk = junk.replace(b"\n", b"").replace(b"\r", b"")
    out = GENERATORS[cls](junk, random.Random(seed))
    assert isinstance(out, bytes) and b"\n" not in out and b"\r" not in out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cls=st.sampled_from(CLASSES), pick=st.integers(0, 2**31), seed=st.integers(0, 2**32 - 1))
def test_both_decoder_paths_drop_each_hostile_frame_alike(sessions, cls, pick, seed):
    """The numba fast path and the orjson reference path agree on every hostile frame (count, kind, gate)."""
    _, frames, clean, _ = sessions[pick % 2]
    ws = [f for f in frames if f.kind == KIND_WS and b'"e":"kline"' not in f.payload]  # (klines: decode_kline)
    base = ws[pick % len(ws)]
    _, bad = hostile_frame(random.Random(seed), base.payload, cls)
    # as load_session makes it: the receive clock is the recorder's epoch clock
    kw = dict(recv_wall_offset_ns=0, wall_ahead_ms=RECORDING_SKEW_MS, wall_behind_ms=RECORDING_SKEW_MS)
    fast, ref = Decoder(clean.symbols, **kw), Decoder(clean.symbols, **kw)
    out_f, out_r = Decoder.new_out(), Decoder.new_out()
    recv = base.recv_ns
    assert fast.decode(base.payload, recv, out_f) == ref.decode_reference(base.payload, recv, out_r)
    later = recv + 1_000_000  # after its real frame: a ts_backwards one is behind the stream
    n, m = fast.decode(bad, later, out_f), ref.decode_reference(bad, later, out_r)
    assert n == m == 0
    assert fast.errors == ref.errors and sum(fast.errors.values()) == 1
    # and both still take the real frame afterwards
    assert fast.decode(base.payload, later, out_f) == ref.decode_reference(base.payload, later, out_r)

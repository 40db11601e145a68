"""Frame decoder: the numba fast path equals the orjson reference path on every
recorded frame, each stream type decodes to hand-checked fields, and bad input
is counted by kind and skipped."""

from __future__ import annotations

import gzip
import time
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.decode import (
    CONTROL_ERROR,
    CONTROL_REPLY,
    CONTROL_SHUTDOWN,
    ERROR_KINDS,
    MAX_RECORDS_PER_FRAME,
    Decoder,
)
from core.decode_kernels import MAX_FAST_WHOLE, MAX_INT_DIGITS, MAX_PRICE
from core.errors import ConfigError, RingError
from core.recordings import KIND_SNAPSHOT, KIND_WS, Frame, iter_frames, iter_recording_dir, iter_session
from core.records import (
    FLAG_BEGIN,
    FLAG_BUYER_MAKER,
    FLAG_END,
    MD_AGG_TRADE,
    MD_DEPTH_ASK,
    MD_DEPTH_BID,
    MD_DEPTH_NONE,
    MD_EVENT,
    MD_SNAP_ASK,
    MD_SNAP_BEGIN,
    MD_SNAP_BID,
    MD_SNAP_END,
    MD_TICKER_ASK,
    MD_TICKER_BID,
    MD_TRADE,
)

E8 = 10**8


def fx(text: str) -> int:
    """Hand-written fixed point: "61837.63" -> 6183763000000 (no parser involved)."""
    whole, _, frac = text.partition(".")
    return int(whole) * E8 + int(frac.ljust(8, "0") or 0)


def no_errors(dec: Decoder) -> bool:
    return not any(dec.errors.values())


def hft_line(path, index: int) -> tuple[int, bytes]:
    with gzip.open(path, "rb") as f:
        line = f.read().split(b"\n")[index]
    ts, _, payload = line.partition(b" ")
    return int(ts), payload


@pytest.fixture
def dec() -> Decoder:
    return Decoder(["ETHUSDT", "BTCUSDT", "DOTUSDT"])


@pytest.fixture
def out() -> np.ndarray:
    return Decoder.new_out()


# ---------------------------------------------------------------------------
# hand-checked real messages
# ---------------------------------------------------------------------------
def test_depth_diff_decodes_to_levels_bids_first(shared_data, dec, out):
    recv, payload = hft_line(shared_data / "hftbacktest" / "btcusdt_20240808.gz", 0)
    n = dec.decode(payload, recv, out)
    r = out[:n]
    assert n == 3 + 9
    assert (r["kind"][:3] == MD_DEPTH_BID).all() and (r["kind"][3:] == MD_DEPTH_ASK).all()
    assert (r["symbol"] == 1).all() and (r["recv_ns"] == recv).all() and (r["pub_ns"] == 0).all()
    assert (r["exch_ms"] == 1723161255208).all()
    assert (r["first_id"] == 50093239189).all() and (r["last_id"] == 50093239202).all()
    assert list(r["price"][:3]) == [fx("61737.63"), fx("61730.17"), fx("56854.58")]
    assert list(r["qty"][:3]) == [0, 0, 0]
    assert (r["price"][3], r["qty"][3]) == (fx("61837.64"), fx("1.54698"))
    assert (r["price"][-1], r["qty"][-1]) == (fx("61937.64"), fx("0.02"))
    assert list(r["flags"]) == [FLAG_BEGIN] + [0] * 10 + [FLAG_END]
    assert (r["aux"] == 0).all()
    assert dec.fast == 1 and no_errors(dec)


def test_trade_decodes(shared_data, dec, out):
    recv, payload = hft_line(shared_data / "hftbacktest" / "btcusdt_20240808.gz", 3)
    assert b'"t":3735683259' in payload
    assert dec.decode(payload, recv, out) == 1
    t = out[0]
    assert (t["kind"], t["symbol"], t["recv_ns"]) == (MD_TRADE, 1, recv)
    assert (t["first_id"], t["last_id"], t["exch_ms"]) == (3735683259, 3735683259, 1723161255342)
    assert (t["price"], t["qty"]) == (fx("61837.63"), fx("0.02"))
    assert t["flags"] == FLAG_BEGIN | FLAG_END | FLAG_BUYER_MAKER  # "m":true: the aggressor sold


def test_old_format_trade_with_order_ids_decodes(shared_data, dec, out):
    recv, payload = hft_line(shared_data / "hftbacktest" / "btcusdt_20230405.dat.gz", 0)
    assert dec.decode(payload, recv, out) == 1
    t = out[0]
    assert (t["kind"], t["first_id"], t["exch_ms"]) == (MD_TRADE, 3071245454, 1680652799999)
    assert (t["price"], t["qty"]) == (fx("28165.47"), fx("0.00056"))
    assert recv == 1680652800004107  # this file's recorder used microseconds
    assert dec.fast == 1


def test_agg_trade_decodes(shared_data, dec, out):
    frames = iter_recording_dir(shared_data / "cryptofeed" / "2021-04-04_2997020")
    agg = next(f for f in frames if f.kind == KIND_WS and b"aggTrade" in f.payload)
    assert dec.decode(agg.payload, agg.recv_ns, out) == 1
    a = out[0]
    assert (a["kind"], a["symbol"]) == (MD_AGG_TRADE, 1)
    assert (a["first_id"], a["last_id"], a["exch_ms"]) == (745522877, 745522877, 1617566591314)
    assert (a["price"], a["qty"]) == (fx("58001.03"), fx("0.086205"))
    assert a["aux"] == 665076760  # aggregate id "a" (fits in 32 bits here)
    assert a["flags"] == FLAG_BEGIN | FLAG_END | FLAG_BUYER_MAKER


def test_book_ticker_decodes_to_bid_then_ask(shared_data, dec, out):
    recv, payload = hft_line(shared_data / "hftbacktest" / "btcusdt_20240808.gz", 2)
    assert dec.decode(payload, recv, out) == 2
    b, a = out[0], out[1]
    assert (b["kind"], a["kind"]) == (MD_TICKER_BID, MD_TICKER_ASK)
    assert (b["price"], b["qty"]) == (fx("61837.63"), fx("3.78826"))
    assert (a["price"], a["qty"]) == (fx("61837.64"), fx("1.54698"))
    assert b["last_id"] == a["last_id"] == 50093239212 == b["first_id"]
    assert b["exch_ms"] == 0  # this bookTicker has no E
    assert (b["flags"], a["flags"]) == (FLAG_BEGIN, FLAG_END)


def test_snapshot_decodes_begin_levels_end(shared_data, dec, out):
    recv, payload = hft_line(shared_data / "hftbacktest" / "btcusdt_20240808.gz", 7)
    n = dec.decode_snapshot(payload, 1, recv, out)
    r = out[:n]
    assert n == 2002
    assert r[0]["kind"] == MD_SNAP_BEGIN and r[0]["aux"] == 2000 and r[0]["flags"] == FLAG_BEGIN
    assert r[-1]["kind"] == MD_SNAP_END and r[-1]["aux"] == 2000 and r[-1]["flags"] == FLAG_END
    assert (r["kind"][1:1001] == MD_SNAP_BID).all() and (r["kind"][1001:2001] == MD_SNAP_ASK).all()
    assert (r["last_id"] == 50093239218).all() and (r["first_id"] == 50093239218).all()
    assert (r[1]["price"], r[1]["qty"]) == (fx("61837.63"), fx("3.78826"))
    assert (r[1001]["price"], r[1001]["qty"]) == (fx("61837.64"), fx("1.54698"))
    assert (r[2000]["price"], r[2000]["qty"]) == (fx("62053.18"), fx("0.0001"))
    assert (r["flags"][1:-1] == 0).all() and (r["symbol"] == 1).all() and (r["exch_ms"] == 0).all()
    assert dec.fast == 1


def test_depth_diff_with_no_levels_keeps_the_id_chain(dec, out):
    frame = (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":10,"u":12,'
             b'"b":[],"a":[]}}')
    assert dec.decode(frame, 7, out) == 1
    assert out[0]["kind"] == MD_DEPTH_NONE and (out[0]["first_id"], out[0]["last_id"]) == (10, 12)
    assert out[0]["flags"] == FLAG_BEGIN | FLAG_END
    assert dec.fast == 1


# ---------------------------------------------------------------------------
# fast path == reference path on every recorded frame
# ---------------------------------------------------------------------------
def _compare(frames, syms) -> tuple[Decoder, int]:
    fast, ref = Decoder(syms), Decoder(syms)
    out_f, out_r = Decoder.new_out(), Decoder.new_out()
    checked = 0
    for f in frames:
        if f.kind == KIND_WS:
            n = fast.decode(f.payload, f.recv_ns, out_f)
            m = ref.decode_reference(f.payload, f.recv_ns, out_r)
        elif f.kind == KIND_SNAPSHOT:
            sid = syms.index(f.symbol)
            n = fast.decode_snapshot(f.payload, sid, f.recv_ns, out_f)
            m = ref.decode_snapshot_reference(f.payload, sid, f.recv_ns, out_r)
        else:
            continue
        assert n == m, f.payload[:200]
        if not np.array_equal(out_f[:n], out_r[:m]):
            pytest.fail(f"fast and reference records differ for {f.payload[:200]!r}")
        checked += 1
    assert fast.errors == ref.errors and no_errors(fast)
    return fast, checked


def test_fast_path_equals_reference_on_hftbacktest_eth_2024_and_btc_2023(shared_data):
    d = shared_data / "hftbacktest"
    # two sessions, two decoders: one decoder fed 2024 then 2023 would (rightly) see its clock go back a year
    eth = list(iter_session([d / "ethusdt_20240808.gz", d / "ethusdt_20240809.gz"]))
    btc = list(iter_frames(d / "btcusdt_20230405.dat.gz"))
    dec_eth, checked_eth = _compare(eth, ["ETHUSDT", "BTCUSDT"])
    dec_btc, checked_btc = _compare(btc, ["ETHUSDT", "BTCUSDT"])
    assert checked_eth + checked_btc == len(eth) + len(btc) == 33618 + 46126 + 15088
    assert dec_eth.slow == dec_btc.slow == 0, "every recorded hftbacktest frame is one the fast path handles"


@pytest.mark.parametrize("folder, venue", [
    ("2021-04-04_2997020", "BINANCE"), ("2021-04-05_7136ce8", "BINANCE"), ("2021-04-05_7136ce8", "BINANCE_US"),
    ("2021-04-17_be4e5c8", "BINANCE"), ("2021-04-17_be4e5c8", "BINANCE_US"), ("2021-08-14_cb63e8d", "BINANCE"),
    ("2021-08-14_cb63e8d", "BINANCE_US"), ("2021-10-12_ce58c2a", "BINANCE"), ("2021-10-12_ce58c2a", "BINANCE_US"),
])
def test_fast_path_equals_reference_on_cryptofeed(shared_data, folder, venue):
    frames = list(iter_recording_dir(shared_data / "cryptofeed" / folder, venue))
    syms = sorted({f.symbol for f in frames if f.symbol})
    dec, checked = _compare(frames, syms)
    klines = sum(1 for f in frames if b'"e":"kline"' in f.payload)
    assert checked == sum(1 for f in frames if f.kind in (KIND_WS, KIND_SNAPSHOT))
    assert dec.slow == klines, "only klines (not decoded by design) leave the fast path"
    assert dec.ignored["kline"] == klines


# ---------------------------------------------------------------------------
# shapes the fast path declines still decode, identically
# ---------------------------------------------------------------------------
_DEPTH = (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT",'
          b'"U":50093239203,"u":50093239207,"b":[["55653.87000000","0.00000000"]],'
          b'"a":[["61838.04000000","0.32332000"],["61844.30000000","0.40163000"]]}}')


@pytest.mark.parametrize("variant", [
    orjson.dumps(orjson.loads(_DEPTH), option=orjson.OPT_INDENT_2),  # whitespace
    orjson.dumps(orjson.loads(_DEPTH)["data"]),  # raw stream (no envelope) -- fast path
    orjson.dumps(dict(reversed(list(orjson.loads(_DEPTH)["data"].items())))),  # asks before bids, keys reversed
    _DEPTH.replace(b'"s":"BTCUSDT"', b'"s":"BTC\\u0055SDT"'),  # escaped symbol
    _DEPTH.replace(b'"a":[', b'"x":{"y":1},"a":['),  # unknown nested key
    _DEPTH.replace(b"}}", b"} }") + b"\n",  # trailing whitespace
])
def test_frames_outside_the_fast_shapes_decode_to_the_same_records(dec, variant):
    canonical = Decoder.new_out()
    n = dec.decode(_DEPTH, 1, canonical)
    got = Decoder.new_out()
    assert dec.decode(variant, 1, got) == n == 3
    assert np.array_equal(got[:n], canonical[:n])
    assert no_errors(dec)


def test_bytearray_and_memoryview_payloads(dec, out):
    ref = Decoder.new_out()
    n = dec.decode(_DEPTH, 1, ref)
    assert dec.decode(bytearray(_DEPTH), 1, out) == n
    assert np.array_equal(out[:n], ref[:n])
    assert dec.decode(memoryview(_DEPTH), 1, out) == n
    assert np.array_equal(out[:n], ref[:n])


# ---------------------------------------------------------------------------
# bad input: counted by kind, skipped, never raised
# ---------------------------------------------------------------------------
_TRADE = (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
          b'"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}')


@pytest.mark.parametrize("frame, kind", [
    (_DEPTH[:70], "malformed_json"),  # truncated
    (b"", "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    (b"[1,2,3]", "not_object"),
    (_DEPTH.replace(b'"E":1723161255308', b'"E":"1723161255308"'), "bad_field_type"),
    (_DEPTH.replace(b'"E":1723161255308', b'"E":true'), "bad_field_type"),
    (_DEPTH.replace(b'"U":50093239203', b'"U":5009.5'), "bad_field_type"),
    (_DEPTH.replace(b'"b":[[', b'"b":"x","c":[['), "bad_field_type"),
    (_DEPTH.replace(b'["55653.87000000","0.00000000"]', b"[55653.87,0.0]"), "bad_field_type"),
    (_DEPTH.replace(b'["55653.87000000","0.00000000"]', b'["55653.87000000"]'), "bad_field_type"),
    (_DEPTH.replace(b'"0.32332000"', b'"abc"'), "bad_number"),
    (_DEPTH.replace(b'"0.32332000"', b'"1.123456789"'), "bad_number"),
    (_DEPTH.replace(b'"0.32332000"', b'"1e5"'), "bad_number"),
    (_DEPTH.replace(b'"0.32332000"', b'"-0.32332000"'), "negative_qty"),
    (_DEPTH.replace(b'"61838.04000000"', b'"-61838.04000000"'), "negative_price"),
    (_DEPTH.replace(b'"0.32332000"', b'"92233720368.54775808"'), "out_of_range"),
    (_DEPTH.replace(b'"0.32332000"', b'"999999999999999999999999"'), "out_of_range"),
    (_DEPTH.replace(b'"U":50093239203', b'"U":9223372036854775808'), "out_of_range"),
    (_DEPTH.replace(b'"U":50093239203', b'"U":-5'), "out_of_range"),
    (_DEPTH.replace(b'"U":50093239203', b'"U":99999999999999999999999'), "bad_field_type"),  # orjson: a float
    (_DEPTH.replace(b'"s":"BTCUSDT"', b'"s":"XRPUSDT"'), "unknown_symbol"),
    (_DEPTH.replace(b'"s":"BTCUSDT"', b'"s":"btcusdt"'), "unknown_symbol"),
    (_DEPTH.replace(b'"s":"BTCUSDT"', b'"s":7'), "bad_field_type"),
    (_DEPTH.replace(b'"depthUpdate"', b'"24hrTicker"'), "unknown_stream"),
    (_DEPTH.replace(b'"depthUpdate"', b"42"), "bad_field_type"),
    (b'{"stream":"btcusdt@avgPrice","data":{"i":"5m","w":"1.0"}}', "unknown_stream"),
    (_DEPTH.replace(b'"u":50093239207,', b""), "missing_field"),
    (_TRADE.replace(b'"m":true', b'"m":1'), "bad_field_type"),
    (_TRADE.replace(b'"q":"0.02000000",', b""), "missing_field"),
    (_TRADE.replace(b'"q":"0.02000000"', b'"q":"-0.02"'), "negative_qty"),
    (b'{"stream":"x","data":[1]}', "bad_field_type"),
])
def test_bad_frames_are_counted_by_kind_and_skipped(dec, out, frame, kind):
    assert dec.decode(frame, 1, out) == 0
    assert dec.errors[kind] == 1
    assert sum(dec.errors.values()) == 1, {k: v for k, v in dec.errors.items() if v}
    # the decoder is unharmed: the next good frame decodes normally
    assert dec.decode(_TRADE, 2, out) == 1 and out[0]["first_id"] == 3735683259


def test_message_larger_than_out_is_counted_not_truncated(dec):
    small = np.zeros(2, MD_EVENT)
    assert dec.decode(_DEPTH, 1, small) == 0
    assert dec.errors["too_many_levels"] == 1
    big = np.zeros(3, MD_EVENT)
    assert dec.decode(_DEPTH, 1, big) == 3
    snap = b'{"lastUpdateId":5,"bids":[["1.0","2.0"]],"asks":[["3.0","4.0"]]}'
    assert dec.decode_snapshot(snap, 0, 1, big) == 0 and dec.errors["too_many_levels"] == 2
    assert dec.decode_snapshot(snap, 0, 1, np.zeros(4, MD_EVENT)) == 4
    assert MAX_RECORDS_PER_FRAME >= 5000 + 5000 + 2


def test_bad_snapshots_are_counted(dec, out):
    assert dec.decode_snapshot(b'{"lastUpdateId":5,"bids":[["1.0","x"]],"asks":[]}', 0, 1, out) == 0
    assert dec.decode_snapshot(b'{"lastUpdateId":5,"bids":[]}', 0, 1, out) == 0
    assert dec.decode_snapshot(b'{"lastUpdateId":5,"bids":[', 0, 1, out) == 0
    assert dec.errors["bad_number"] == dec.errors["missing_field"] == dec.errors["malformed_json"] == 1


def test_every_error_kind_is_reported_even_when_zero(dec):
    assert set(ERROR_KINDS) <= set(dec.errors) and no_errors(dec)


# ---------------------------------------------------------------------------
# control messages and ignored streams
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("frame, kind", [
    (b'{"result":null,"id":1}', CONTROL_REPLY),
    (b'{"code":2,"msg":"Invalid request: unknown variant"}', CONTROL_ERROR),
    (b'{"e":"serverShutdown","E":1746679200000}', CONTROL_SHUTDOWN),
    (b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1746679200000}}', CONTROL_SHUTDOWN),
])
def test_control_messages_are_exposed_not_decoded(dec, out, frame, kind):
    assert dec.decode(frame, 42, out) == 0
    ev = dec.last_control
    assert ev is not None and ev.kind == kind and ev.recv_ns == 42
    assert dec.pop_control() is ev and dec.last_control is None
    assert no_errors(dec) and dec.controls == 1


def test_kline_is_ignored_and_counted(shared_data, dec, out):
    frames = iter_recording_dir(shared_data / "cryptofeed" / "2021-04-04_2997020")
    kline = next(f for f in frames if b'"e":"kline"' in f.payload)
    assert dec.decode(kline.payload, kline.recv_ns, out) == 0
    assert dec.ignored["kline"] == 1 and no_errors(dec) and dec.last_control is None


# ---------------------------------------------------------------------------
# construction and misuse
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("symbols", [["btcusdt"], ["BTC-USDT"], ["BTCUSDT", "BTCUSDT"], [""], ["X" * 33]])
def test_bad_symbol_table_is_a_config_error(symbols):
    with pytest.raises(ConfigError):
        Decoder(symbols)


def test_wrong_out_dtype_is_misuse(dec):
    with pytest.raises(TypeError):
        dec.decode(_TRADE, 1, np.zeros(4, np.int64))


# ---------------------------------------------------------------------------
# property: on generated depth frames, fast == reference (records and error kinds),
# and the fast path really decoded them (a decline compares the reference with itself)
# ---------------------------------------------------------------------------
_fast_dec = st.one_of(  # the decimal forms Binance sends, all of which the fast path takes
    st.builds(lambda w, f: f"{w}.{f}", st.integers(0, MAX_FAST_WHOLE), st.text("0123456789", min_size=1, max_size=8)),
    st.integers(0, MAX_FAST_WHOLE).map(str),
)
_any_dec = st.one_of(  # anything: bad numbers, too many places, out of range, "5.", ".5", ""
    st.builds(lambda w, f: f"{w}.{f}", st.integers(0, 10**12), st.text("0123456789", min_size=1, max_size=10)),
    st.text("0123456789.-e", min_size=0, max_size=14),
)
_fast_price = st.one_of(  # a price is > 0 and at most MAX_PRICE (0 and more are absurd_value: the fast path declines)
    st.builds(lambda w, f: f"{w}.{f}", st.integers(1, MAX_PRICE - 1), st.text("0123456789", min_size=1, max_size=8)),
    st.integers(1, MAX_PRICE).map(str),
)
_fast_level = st.tuples(_fast_price, _fast_dec)
_MAX_FAST_ID = 10**MAX_INT_DIGITS - 1  # the fast path reads ids of <= 18 digits (Binance's are far shorter)
_run = Counter()  # tallies of one run of _check_generated_depth_frame, read by the test that runs it


def _fast_vs_reference(frame: bytes) -> Decoder:
    """Decode ``frame`` both ways and assert the same records and error kinds; returns the fast decoder."""
    fast, ref = Decoder(["BTCUSDT", "ETHUSDT"]), Decoder(["BTCUSDT", "ETHUSDT"])
    out_f, out_r = np.zeros(16, MD_EVENT), np.zeros(16, MD_EVENT)
    n = fast.decode(frame, 99, out_f)
    m = ref.decode_reference(frame, 99, out_r)
    assert n == m
    assert np.array_equal(out_f[:n], out_r[:m])
    assert fast.errors == ref.errors
    assert fast.fast + fast.slow == 1
    return fast


def _depth_frame(sym: str, first: int, span: int, bids: list, asks: list, envelope: bool) -> bytes:
    data = {"e": "depthUpdate", "E": 1723161255308, "s": sym, "U": first, "u": min(first + span, 2**63 - 1),
            "b": [list(x) for x in bids], "a": [list(x) for x in asks]}
    return orjson.dumps({"stream": f"{sym.lower()}@depth@100ms", "data": data} if envelope else data)


@settings(max_examples=250, deadline=None)
@given(bids=st.lists(_fast_level, max_size=6), asks=st.lists(_fast_level, max_size=6),
       first=st.integers(0, _MAX_FAST_ID - 50), span=st.integers(0, 50), sym=st.sampled_from(["BTCUSDT", "ETHUSDT"]),
       envelope=st.booleans(), fault=st.sampled_from(["level", "symbol", "long_id"]), data=st.data())
def _check_generated_depth_frame(bids, asks, first, span, sym, envelope, fault, data):
    # the frame as Binance sends it: the fast path must decode it, to the reference path's records
    fast = _fast_vs_reference(_depth_frame(sym, first, span, bids, asks, envelope))
    _run["examples"] += 1
    _run["declined"] += fast.slow
    # the same frame with one fault: still the same records and error kinds (the fast path may decline)
    if fault == "level":
        bids, asks = [list(x) for x in bids], [list(x) for x in asks]
        if not bids and not asks:
            bids = [["1.0", "1.0"]]
        levels = bids + asks
        k = data.draw(st.integers(0, 2 * len(levels) - 1))
        levels[k // 2][k % 2] = data.draw(_any_dec)
        frame = _depth_frame(sym, first, span, bids, asks, envelope)
    elif fault == "symbol":
        frame = _depth_frame("XRPUSDT", first, span, bids, asks, envelope)
    else:  # valid, but an id longer than the fast path reads
        frame = _depth_frame(sym, data.draw(st.integers(_MAX_FAST_ID + 1, 2**63 - 1)), span, bids, asks, envelope)
    _run["faulty"] += 1
    _run["faulty_declined"] += _fast_vs_reference(frame).slow


def test_generated_depth_frames_fast_equals_reference_and_the_fast_path_takes_every_binance_shaped_one():
    _run.clear()
    _check_generated_depth_frame()
    assert _run["examples"] >= 100, _run
    # every Binance-shaped frame went the fast way, so each comparison was fast vs reference, not
    # the reference against itself (which is what a decline compares)
    assert _run["declined"] == 0, _run
    # and the faulty variants took the declining path often enough to test it too
    assert _run["faulty_declined"] > 0.25 * _run["faulty"], _run


# ---------------------------------------------------------------------------
# decode_publish: the feed's one-call path into a real md ring
# ---------------------------------------------------------------------------
def test_decode_publish_puts_the_decode_records_into_the_ring(shared_data, instance):
    from ringbuffers.ring import Ring, segment_name

    name = segment_name(instance, "md")
    ring = Ring.create(name, MD_EVENT, capacity=1 << 12, consumers=1, policy="block")
    reader = Ring.attach(name, MD_EVENT, 0)
    try:
        dec, check = Decoder(["BTCUSDT"]), Decoder(["BTCUSDT"])
        out = Decoder.new_out()
        path = shared_data / "hftbacktest" / "btcusdt_20240808.gz"
        frames = [f for f in iter_frames(path) if f.kind == KIND_WS][:300]
        frames.insert(5, Frame(1, KIND_WS, b'{"result":null,"id":1}', None))
        frames.insert(9, Frame(2, KIND_WS, _DEPTH.replace(b'"u":50093239207', b'"u" : 50093239207'), None))
        expected = []
        for f in frames:
            n = check.decode(f.payload, f.recv_ns, out)
            expected.append(out[:n].copy())
            t0 = time.monotonic_ns()
            got = dec.decode_publish(f.payload, f.recv_ns, ring)
            t1 = time.monotonic_ns()
            assert got == n
            poll = reader.poll(max_n=4096)
            recs = poll.records.copy()
            reader.release()
            assert len(recs) == n
            assert ((recs["pub_ns"] >= t0) & (recs["pub_ns"] <= t1)).all()  # stamped during the call
            recs["pub_ns"] = 0
            assert np.array_equal(recs, expected[-1])
        assert dec.slow == 2 and dec.last_control is not None  # the reply and the spaced frame took the slow path
    finally:
        reader.close()
        ring.close()
        ring.unlink()


def test_decode_publish_keeps_records_when_the_ring_is_full(instance):
    from ringbuffers.ring import FULL, Ring, segment_name

    name = segment_name(instance, "md")
    ring = Ring.create(name, MD_EVENT, capacity=4, consumers=1, policy="block")
    reader = Ring.attach(name, MD_EVENT, 0)
    try:
        dec = Decoder(["BTCUSDT"])
        assert dec.decode_publish(_DEPTH, 1, ring) == 3
        assert dec.decode_publish(_TRADE, 2, ring) == 1
        assert dec.decode_publish(_DEPTH, 3, ring) == FULL and dec.pending == 3
        assert dec.publish_pending(ring) == FULL and dec.pending == 3  # still no room
        with pytest.raises(RingError):  # a later frame must not overtake the pending diff
            dec.decode_publish(_TRADE, 4, ring)
        p = reader.poll(max_n=4)
        assert list(p.records["recv_ns"]) == [1, 1, 1, 2]
        reader.release()
        assert dec.publish_pending(ring) == 3 and dec.pending == 0
        p = reader.poll(max_n=4)
        assert list(p.records["recv_ns"]) == [3, 3, 3] and p.records["kind"][0] == MD_DEPTH_BID
        reader.release()
    finally:
        reader.close()
        ring.close()
        ring.unlink()


def test_binance_capped_quantity_decodes_to_int64_max(dec, out):
    """Since 2022-05 Binance caps overflowing depth qty at 92233720368.54775807 (== INT64_MAX at 1e-8)."""
    frame = _DEPTH.replace(b'"0.32332000"', b'"92233720368.54775807"')
    assert dec.decode(frame, 1, out) == 3
    assert out[1]["qty"] == np.iinfo(np.int64).max
    assert no_errors(dec)


# ---------------------------------------------------------------------------
# hostile input: absurd values, oversized frames, the exchange-time gate, klines
# ---------------------------------------------------------------------------
def _trade_at(t_ms: int, tid: int = 3735683259, price: bytes = b"61837.63000000", qty: bytes = b"0.02000000") -> bytes:
    return (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"%s","q":"%s","T":%d,'
            b'"m":true,"M":true}}' % (t_ms + 1, tid, price, qty, t_ms))


T0 = 1723161255342  # _TRADE's time (2024-08-08)
S = 1_000_000_000  # 1 s in receive-clock ns


@pytest.mark.parametrize("frame, kind", [
    (_TRADE.replace(b'"p":"61837.63000000"', b'"p":"0.00000000"'), "absurd_value"),
    (_TRADE.replace(b'"q":"0.02000000"', b'"q":"0"'), "absurd_value"),
    (_TRADE.replace(b'"p":"61837.63000000"', b'"p":"10000000000.00000001"'), "absurd_value"),
    (_DEPTH.replace(b'"61838.04000000"', b'"0.0"'), "absurd_value"),
    (_DEPTH.replace(b'"61838.04000000"', b'"20000000000"'), "absurd_value"),
    (b'{"u":5,"s":"BTCUSDT","b":"0.00000000","B":"1.0","a":"2.0","A":"1.0"}', "absurd_value"),
    (_TRADE.replace(b'"q":"0.02000000"', b'"q":"' + b"9" * 5000 + b'"'), "out_of_range"),  # int() refuses 4300+ digits
    (_TRADE.replace(b'"q":"0.02000000"', b'"q":"NaN"'), "bad_number"),
    (_TRADE.replace(b'"q":"0.02000000"', b'"q":"1e308"'), "bad_number"),
    (_TRADE.replace(b'"p":"61837.63000000"', b'"p":1e308'), "bad_field_type"),
])
def test_absurd_values_are_counted_by_both_paths_and_skipped(frame, kind):
    fast, ref = Decoder(["BTCUSDT"]), Decoder(["BTCUSDT"])
    out = Decoder.new_out()
    assert fast.decode(frame, 1, out) == 0 == ref.decode_reference(frame, 1, out)
    assert fast.errors[kind] == ref.errors[kind] == 1 and sum(fast.errors.values()) == 1
    assert fast.errors["internal_error"] == 0


def test_an_empty_book_ticker_side_and_a_removed_depth_level_are_not_absurd(dec, out):
    assert dec.decode(b'{"u":5,"s":"BTCUSDT","b":"0.00000000","B":"0.00000000","a":"2.0","A":"1.0"}', 1, out) == 2
    assert dec.decode(_DEPTH, 2, out) == 3 and out[0]["qty"] == 0  # qty 0: the level is removed
    assert no_errors(dec)


def test_oversized_frames_are_dropped_before_they_are_parsed(dec, out):
    from core.decode import MAX_FRAME_BYTES, MAX_SNAPSHOT_BYTES

    big = _TRADE[:-2] + b',"zz":"' + b"A" * MAX_FRAME_BYTES + b'"}}'
    assert dec.decode(big, 1, out) == 0
    assert dec.errors["oversized"] == 1 and dec.fast == dec.slow == 0, "never handed to a parser"
    snap = b'{"lastUpdateId":5,"bids":[],"asks":[],"zz":"' + b"A" * MAX_SNAPSHOT_BYTES + b'"}'
    assert dec.decode_snapshot(snap, 0, 1, out) == 0 and dec.errors["oversized"] == 2
    assert dec.decode(_TRADE, 2, out) == 1


def _gate_run(dec: Decoder, steps) -> list[int]:
    """Decode (exchange ms, receive ns) trades in order; the record counts."""
    out = Decoder.new_out()
    return [dec.decode(_trade_at(t, 1000 + i), recv, out) for i, (t, recv) in enumerate(steps)]


def test_time_gate_drops_one_far_future_and_one_backwards_frame_and_keeps_the_stream():
    dec = Decoder(["BTCUSDT"])
    got = _gate_run(dec, [(T0, 0), (T0 + 100, S // 10), (T0 + 86_400_000, S // 5), (T0 + 300, 3 * S // 10),
                          (T0 - 3_600_000, 4 * S // 10), (T0 + 500, S // 2)])
    assert got == [1, 1, 0, 1, 0, 1]
    assert dec.errors["time_ahead"] == 1 and dec.errors["time_behind"] == 1 and dec.time_reanchors == 0


def test_time_gate_lets_a_quiet_market_through_and_a_little_disorder():
    dec = Decoder(["BTCUSDT"])
    # 10 minutes without a frame: the receive clock says 10 minutes passed; a trade 200 ms older than the last
    got = _gate_run(dec, [(T0, 0), (T0 + 600_000, 600 * S), (T0 + 599_800, 600 * S + 1000)])
    assert got == [1, 1, 1] and no_errors(dec)


def test_time_gate_moves_to_a_new_clock_after_agreeing_frames_a_replay_of_another_day():
    from core.decode import REANCHOR_FRAMES

    dec = Decoder(["BTCUSDT"])
    day = 86_400_000
    steps = [(T0, 0)] + [(T0 - 400 * day + 100 * i, (i + 1) * S // 10) for i in range(REANCHOR_FRAMES + 3)]
    got = _gate_run(dec, steps)
    assert got == [1] + [0] * (REANCHOR_FRAMES - 1) + [1] * 4
    assert dec.errors["time_behind"] == REANCHOR_FRAMES - 1 and dec.time_reanchors == 1


def test_time_gate_hostile_first_frames_interleaved_with_good_ones_never_move_it():
    dec = Decoder(["BTCUSDT"])
    steps = []
    for i in range(40):  # good, far future, good, far past, ...: the bad ones never agree in a row
        steps.append((T0 + 100 * i, i * S))
        steps.append((T0 + (1 if i % 2 else -1) * (10 + i) * 86_400_000, i * S + 1))
    got = _gate_run(dec, steps)
    assert got == [1, 0] * 40 and dec.time_reanchors == 0


def test_time_gate_against_a_known_wall_clock():
    wall = 1_800_000_000_000  # the receive clock + offset, ms
    dec = Decoder(["BTCUSDT"], recv_wall_offset_ns=wall * 1_000_000, wall_behind_ms=60_000)
    out = Decoder.new_out()
    # a first frame far ahead of the wall clock never becomes the reference (no event comes from the future)
    assert dec.decode(_trade_at(wall + 3_600_000), 0, out) == 0 and dec.errors["time_ahead"] == 1
    assert dec.decode(_trade_at(wall - 3_600_000), 0, out) == 0 and dec.errors["time_behind"] == 1
    assert dec.decode(_trade_at(wall - 500), 0, out) == 1
    # without a bound behind (a live feed that may be replayed an old recording), old times are fine
    live = Decoder(["BTCUSDT"], recv_wall_offset_ns=wall * 1_000_000)
    assert live.decode(_trade_at(T0), 0, out) == 1 and no_errors(live)
    # before 2017 and after 2100 are always wrong, whatever the clocks, even as the first frame
    first = Decoder(["BTCUSDT"])
    assert first.decode(_trade_at(4_102_444_800_001, 5), 0, out) == 0 and first.errors["time_ahead"] == 1
    assert first.decode(_trade_at(1_483_228_799_999, 6), 0, out) == 0 and first.errors["time_behind"] == 1
    assert first.decode(_trade_at(T0, 7), 0, out) == 1


def test_time_gate_skips_a_book_ticker_without_time_and_rejects_a_bad_one_with_time(dec, out):
    ticker = b'{"u":5,"s":"BTCUSDT","b":"1.0","B":"1.0","a":"2.0","A":"1.0"}'
    assert dec.decode(_TRADE, 0, out) == 1
    assert dec.decode(ticker, 1, out) == 2
    assert dec.decode(ticker.replace(b'{"u"', b'{"E":%d,"u"' % (T0 + 86_400_000)), 2, out) == 0
    assert dec.errors["time_ahead"] == 1


def test_time_rejections_agree_on_both_paths_and_through_decode_publish(instance):
    from ringbuffers.ring import Ring, segment_name

    frames = [_trade_at(T0, 1), _trade_at(T0 + 86_400_000, 2), _trade_at(T0 + 10, 3),
              _trade_at(T0 - 7 * 86_400_000, 4), _trade_at(T0 + 20, 5)]
    spaced = [f.replace(b'"e":"trade",', b'"e": "trade",') for f in frames]  # the reference path
    ring = Ring.create(segment_name(instance, "md"), MD_EVENT, capacity=1 << 14, consumers=1, policy="block")
    try:
        for batch in (frames, spaced):
            fast, pub = Decoder(["BTCUSDT"]), Decoder(["BTCUSDT"])
            out = Decoder.new_out()
            got = [fast.decode(f, i * S, out) for i, f in enumerate(batch)]
            published = [pub.decode_publish(f, i * S, ring) for i, f in enumerate(batch)]
            assert got == published == [1, 0, 1, 0, 1]
            assert fast.errors == pub.errors and fast.errors["time_ahead"] == fast.errors["time_behind"] == 1
    finally:
        ring.close()
        ring.unlink()


def test_decode_kline_checks_like_a_stream_frame(shared_data):
    frames = [f for f in iter_recording_dir(shared_data / "cryptofeed" / "2021-04-04_2997020")
              if b'"e":"kline"' in f.payload]
    dec = Decoder(["BTCUSDT", "ETHUSDT", "DOTUSDT"])
    k = dec.decode_kline(frames[0].payload, frames[0].recv_ns)
    assert k is not None and k["interval"] == "1m" and k["t"] % 60_000 == 0 and k["T"] == k["t"] + 59_999
    assert no_errors(dec)
    body = orjson.loads(frames[0].payload)
    for mutate, kind in ((lambda d: d["data"]["k"].update(o="0"), "absurd_value"),
                         (lambda d: d["data"]["k"].update(v="-1"), "negative_qty"),
                         (lambda d: d["data"]["k"].update(t="1"), "bad_field_type"),
                         (lambda d: d["data"].update(s="XRPUSDT"), "unknown_symbol"),
                         (lambda d: d["data"].update(E=d["data"]["E"] + 86_400_000), "time_ahead")):
        d = orjson.loads(orjson.dumps(body))
        mutate(d)
        assert dec.decode_kline(orjson.dumps(d), frames[0].recv_ns) is None
        assert dec.errors[kind] == 1, kind

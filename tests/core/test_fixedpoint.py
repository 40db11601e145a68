"""Fixed point: every decimal string in the recorded Binance data round-trips
exactly, and the three parsers (``to_fixed``, the numba ``parse_fixed_bytes``
and the decoder's fused fast-path ``_parse_dec``) agree with ``Decimal`` on
arbitrary text."""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.decode_kernels import MAX_FAST_WHOLE, _parse_dec
from core.errors import FixedPointError
from core.fixedpoint import PARSE_ERROR, from_fixed, parse_fixed_bytes, to_decimal, to_fixed
from core.recordings import KIND_EXCHANGE_INFO, KIND_SNAPSHOT, KIND_WS, iter_frames, iter_recording_dir
from core.records import INT64_MAX

_FORM = re.compile(r"^(?:[0-9]+\.?[0-9]*|\.[0-9]+)$")
_CTX = decimal.Context(prec=400)


def ref_fixed(text: str) -> int | None:
    """The obviously-correct reference: Decimal, exact, in range, or None."""
    if not _FORM.match(text):
        return None
    scaled = _CTX.scaleb(Decimal(text), 8)
    if scaled != scaled.to_integral_value() or scaled > INT64_MAX:
        return None
    return int(scaled)


def nb_parse(text: str) -> int | None:
    raw = np.frombuffer(text.encode("latin-1"), np.uint8)
    v = parse_fixed_bytes(raw, 0, len(raw))
    return None if v == PARSE_ERROR else int(v)


def fast_parse(text: str) -> int | None:
    """The decoder's fused parser over a JSON string body ending in a quote."""
    raw = text.encode("latin-1") + b'"'
    end, v = _parse_dec(raw, len(raw), 0)
    if end < 0:
        return None
    assert end == len(raw) - 1, "the fused parser must stop at the closing quote"
    return int(v)


def py_parse(text: str) -> int | None:
    try:
        return to_fixed(text)
    except FixedPointError:
        return None


# ---------------------------------------------------------------------------
# every decimal in the recordings
# ---------------------------------------------------------------------------
_DECIMAL_TEXT = re.compile(r"^[0-9]+\.[0-9]+$|^[0-9]+$")


def _walk_strings(obj, out: set) -> None:
    if isinstance(obj, str):
        if _DECIMAL_TEXT.match(obj):
            out.add(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _walk_strings(v, out)


def _frames(shared_data):
    for p in sorted((shared_data / "hftbacktest").glob("*.gz")):
        yield from iter_frames(p)
    for folder in sorted((shared_data / "cryptofeed").iterdir()):
        for venue in ("BINANCE", "BINANCE_US"):
            try:
                yield from iter_recording_dir(folder, venue)
            except FileNotFoundError:
                continue


@pytest.fixture(scope="module")
def recorded_decimals(shared_data) -> dict[str, set[str]]:
    """Decimal strings by field family, from every stream message and REST body."""
    found: dict[str, set[str]] = {k: set() for k in ("depth", "snapshot", "trade", "aggTrade", "bookTicker",
                                                     "kline", "filters", "nautilus")}
    for f in _frames(shared_data):
        if f.kind == KIND_WS:
            d = orjson.loads(f.payload)["data"]
            e = d.get("e")
            if e == "depthUpdate":
                found["depth"].update(x for lv in d["b"] + d["a"] for x in lv)
            elif e in ("trade", "aggTrade"):
                found[e].update((d["p"], d["q"]))
            elif e == "kline":
                k = d["k"]
                found["kline"].update(k[x] for x in ("o", "h", "l", "c", "v", "q", "V", "Q"))
            elif e is None:
                found["bookTicker"].update(d[x] for x in ("b", "B", "a", "A"))
        elif f.kind == KIND_SNAPSHOT:
            d = orjson.loads(f.payload)
            found["snapshot"].update(x for lv in d["bids"] + d["asks"] for x in lv)
        elif f.kind == KIND_EXCHANGE_INFO:
            d = orjson.loads(f.payload)
            for s in d["symbols"]:
                for flt in s["filters"]:
                    found["filters"].update(v for k, v in flt.items() if k != "filterType" and isinstance(v, str))
    for p in sorted((shared_data / "nautilus_trader" / "http_responses").glob("*.json")):
        _walk_strings(orjson.loads(p.read_bytes()), found["nautilus"])
    return found


def test_recorded_decimals_were_collected(recorded_decimals):
    sizes = {k: len(v) for k, v in recorded_decimals.items()}
    # every family is present, in the numbers these recordings hold
    assert sizes["depth"] > 50_000 and sizes["snapshot"] > 20_000
    assert min(sizes.values()) > 10, sizes


def test_every_recorded_decimal_round_trips_exactly(recorded_decimals):
    checked = 0
    for family, texts in recorded_decimals.items():
        for text in texts:
            want = ref_fixed(text)
            assert want is not None, f"{family}: {text!r} is not an exact 8-decimal value in range"
            got = to_fixed(text)
            assert got == want, f"{family}: to_fixed({text!r}) = {got}, Decimal says {want}"
            assert Decimal(from_fixed(got)) == Decimal(text)
            assert Decimal(from_fixed(got)).normalize() == Decimal(text).normalize()
            assert to_decimal(got) == Decimal(text)
            assert nb_parse(text) == want, f"parse_fixed_bytes({text!r})"
            assert fast_parse(text) == want, f"the decoder's fast parser declined or differs on {text!r}"
            checked += 1
    assert checked > 100_000


# ---------------------------------------------------------------------------
# rejections and edges
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", ".", "1e5", "-1", "1.123456789", "abc", "1.2.3", " 1", "1 ", "+1", "0x10",
                                  "92233720368.54775808", "99999999999999999999", "١٢"])
def test_bad_strings_are_rejected_by_every_parser(text):
    with pytest.raises(FixedPointError):
        to_fixed(text)
    assert ref_fixed(text) is None
    if text.isascii():
        assert nb_parse(text) is None
        assert fast_parse(text) is None


def test_largest_value_and_trailing_zeros():
    assert to_fixed("92233720368.54775807") == INT64_MAX == nb_parse("92233720368.54775807")
    assert to_fixed("1.1234567800000") == 112_345_678 == nb_parse("1.1234567800000") == fast_parse("1.1234567800000")
    assert to_fixed("0") == 0 and to_fixed("0.00000000") == 0
    assert to_fixed("-1.5", allow_negative=True) == -150_000_000
    assert from_fixed(150_000_000, decimals=2) == "1.50"
    with pytest.raises(FixedPointError):
        from_fixed(150_000_001, decimals=2)


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------
decimal_like = st.text(alphabet="0123456789.", min_size=0, max_size=24)
anything_ascii = st.text(alphabet="0123456789.-+eE x", min_size=0, max_size=24)
binance_form = st.builds(lambda whole, frac: f"{whole}.{frac}", st.integers(0, MAX_FAST_WHOLE),
                         st.text(alphabet="0123456789", min_size=1, max_size=8))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, INT64_MAX))
def test_from_fixed_then_to_fixed_is_identity(value):
    text = from_fixed(value)
    assert to_fixed(text) == value
    assert nb_parse(text) == value
    assert Decimal(text) == to_decimal(value)


@settings(max_examples=600, deadline=None)
@given(st.one_of(decimal_like, anything_ascii))
def test_parsers_agree_with_decimal_on_any_text(text):
    want = ref_fixed(text)
    assert py_parse(text) == want
    assert nb_parse(text) == want
    fast = fast_parse(text)
    assert fast is None or fast == want, "the fast path may decline but never disagree"


@settings(max_examples=300, deadline=None)
@given(binance_form)
def test_fast_parser_never_declines_binance_shaped_decimals(text):
    assert fast_parse(text) == ref_fixed(text) is not None

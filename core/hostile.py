"""Hostile market-data frames, made from real ones: one generator per class of bad input.

Every generator takes one real Binance message (``bytes``: a WebSocket frame,
combined-stream envelope ``{"stream":..,"data":..}`` or raw event, or a
``GET /api/v3/myTrades`` row) and a ``random.Random``, and returns bytes that
a correct consumer must count and drop. Each class is built to be
*detectably* bad: the frame keeps the real frame's ids, so a consumer that
took it would double a trade or replace a diff, and a figure computed from
the good input would change.

=======================  ===================================================  ==========================
class                    what the frame is                                    ``core.decode`` counts it as
=======================  ===================================================  ==========================
unknown_symbol           the event for a symbol nobody subscribed to          unknown_symbol
                         (``QQ`` + letters + USDT: no listed Binance
                         symbol), stream name and ``s`` consistent
ts_far_past              every time field (E, T, kline t/T) set before 2017   time_behind
ts_far_future            every time field moved 1 day .. 100 years ahead      time_ahead
                         (after 2100, or INT64_MAX, for an event with no time
                         and one time in ten)
ts_backwards             every time field moved 2 min .. 30 days back: the    time_behind
                         stream's clock going backwards (before 2017 for an
                         event with no time of its own: a bookTicker)
absurd_price             one price: negative, zero, NaN/inf text, "1e308",    negative_price, bad_number,
                         beyond the fixed-point range, or above               out_of_range, absurd_value
                         ``core.decode_kernels.MAX_PRICE`` (no zero for a
                         bookTicker: a 0/0 side is an empty side)
absurd_qty               one quantity: negative, NaN/inf text, "1e308", out   negative_qty, bad_number,
                         of range; zero for a trade (a zero depth qty is a    out_of_range, absurd_value
                         removal, not absurd)
wrong_types              one field the decoder reads gets another JSON type   bad_field_type
                         (a number as text, text as a number, null, a list,
                         a bool, a level that is not a pair), or the
                         envelope's ``stream``/``data`` does
truncated                a proper, non-empty prefix of the frame              malformed_json
oversized                the frame padded past ``core.decode.MAX_FRAME_BYTES``  oversized, too_many_levels
                         (an unknown key), or a diff with more levels than
                         one message may carry
non_utf8                 bytes that are not UTF-8 inside the frame            malformed_json
valid_json_not_binance   JSON that is valid but no Binance message: a         not_object, unknown_stream,
                         scalar, an array, an object of unknown keys, an      bad_field_type
                         envelope around one, an unknown event type
=======================  ===================================================  ==========================

The messages handled are the ones Binance streams carry (depthUpdate, trade,
aggTrade, bookTicker, kline) and myTrades rows. A message that is none of
them (a control reply, garbage) is returned truncated by the classes that
need a known shape: still hostile, counted as ``malformed_json``. Klines are
not decoded by the feed (``ignored``); ``core.book_replay`` checks them with
``Decoder.decode_kline``, same kinds. For a myTrades row
(``scripts/pnl_report.py``): unknown_symbol is a symbol with no known quote
asset, every time class an absolute time (before 2017, after 2100: a trade
history is sorted by its reader, so "backwards" has no meaning there), and
wrong_types never turns a decimal into a JSON number (the report reads
those exactly) or the commission asset into null (no commission asset).

``hostile_frame(rng, real_frame, cls=None)`` returns ``(class, bytes)``,
drawing the class uniformly from ``CLASSES`` when ``cls`` is None. The
simulator's ``hostile_probability`` fault and
``tests/core/test_hostile_input.py`` both use this module. No generator ever
raises, whatever bytes it is given, and given bytes without CR or LF none
emits one (a hostile frame fits on one recording line).
"""

from __future__ import annotations

import random
import re
import string
from typing import Callable

import orjson

from core.decode import MAX_FRAME_BYTES, MAX_RECORDS_PER_FRAME
from core.decode_kernels import MAX_EXCH_MS, MAX_PRICE

CLASSES = (
    "unknown_symbol", "ts_far_past", "ts_far_future", "ts_backwards", "absurd_price", "absurd_qty",
    "wrong_types", "truncated", "oversized", "non_utf8", "valid_json_not_binance",
)  # fmt: skip

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
INT64_MAX = 2**63 - 1

# The fields each event's decoder reads (a wrong type anywhere else would go unnoticed: Binance adds fields).
READ_FIELDS = {
    "depthUpdate": ("e", "E", "s", "U", "u", "b", "a"),
    "trade": ("e", "s", "t", "p", "q", "T", "m"),
    "aggTrade": ("e", "s", "a", "p", "q", "f", "l", "T", "m"),
    "bookTicker": ("u", "s", "b", "B", "a", "A"),
    "kline": ("e", "E", "s", "k"),
    "myTrade": ("symbol", "id", "price", "qty", "commission", "commissionAsset", "time", "isBuyer"),
}
KLINE_FIELDS = ("t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q")
_INT_FIELDS = frozenset("EUutTafl")
_PRICE_FIELDS = {"trade": ("p",), "aggTrade": ("p",), "bookTicker": ("b", "a"), "kline": ("o", "h", "l", "c"),
                 "myTrade": ("price",)}
_QTY_FIELDS = {"trade": ("q",), "aggTrade": ("q",), "bookTicker": ("B", "A"), "kline": ("v", "q", "V", "Q"),
               "myTrade": ("qty",)}

# absurd decimal text, by what the decoder must say about it
_NEGATIVE = ("-1", "-0.00000001", "-61837.63000000", "-92233720368.54775807")
_NOT_A_NUMBER = ("NaN", "nan", "inf", "-inf", "Infinity", "1e308", "1E+308", "1e-308", "0x10", "", " 1", "1.2.3",
                 "1.123456789", "١٢٣")  # the last: Arabic-Indic digits
_OUT_OF_RANGE = ("92233720368.54775808", "99999999999999999999", "1" + "0" * 40, "9" * 5000)
_ABOVE_CAP = (f"{MAX_PRICE + 1}.00000000", f"{MAX_PRICE * 5}")


def _loads(frame: bytes):
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None


def _split(frame: bytes) -> tuple[dict | None, dict | None]:
    """(envelope or None, event dict or None) of a real frame."""
    obj = _loads(frame)
    if not isinstance(obj, dict):
        return None, None
    if "stream" in obj and "data" in obj:
        data = obj["data"]
        return obj, data if isinstance(data, dict) else None
    return None, obj


def event_type(data: dict | None) -> str | None:
    """depthUpdate / trade / aggTrade / kline / bookTicker / myTrade (a ``GET /api/v3/myTrades`` row), or None."""
    if not isinstance(data, dict):
        return None
    e = data.get("e")
    if e in ("depthUpdate", "trade", "aggTrade", "kline"):
        return e
    if e is None and all(k in data for k in ("u", "s", "b", "B", "a", "A")):
        return "bookTicker"
    if e is None and all(k in data for k in ("symbol", "id", "price", "qty", "time", "isBuyer")):
        return "myTrade"
    return None


def _join(env: dict | None, data) -> bytes:
    if env is None:
        return orjson.dumps(data)
    return orjson.dumps({**env, "data": data})


def _fallback(frame: bytes, rng: random.Random) -> bytes:
    return truncated(frame, rng)


# ---------------------------------------------------------------------------
# the classes
# ---------------------------------------------------------------------------
def unknown_symbol(frame: bytes, rng: random.Random) -> bytes:
    env, data = _split(frame)
    kind = event_type(data)
    if kind is None:
        return _fallback(frame, rng)
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 8)))
    data = dict(data)
    if kind == "myTrade":  # a trade history has no subscription: a symbol with no known quote asset
        data["symbol"] = "QQ" + letters + "QQ"
        return _join(env, data)
    sym = "QQ" + letters + "USDT"
    data["s"] = sym
    if kind == "kline" and isinstance(data.get("k"), dict):
        data["k"] = {**data["k"], "s": sym}
    if env is not None and isinstance(env.get("stream"), str):
        _, at, rest = env["stream"].partition("@")
        env = {**env, "stream": sym.lower() + at + rest}
    return _join(env, data)


EPOCH_2017_MS = 1_483_228_800_000  # 2017-01-01 UTC: before Binance opened
FAR_FUTURE_MS = MAX_EXCH_MS + 1  # after 2100-01-01 UTC


def _shift_times(frame: bytes, rng: random.Random, cls: str) -> bytes:
    env, data = _split(frame)
    kind = event_type(data)
    if kind is None:
        return _fallback(frame, rng)
    data = dict(data)
    if kind == "myTrade":
        # a trade history is sorted by the reader: only absolute times are wrong (before Binance, far ahead)
        if cls == "ts_far_future":
            data["time"] = rng.choice([INT64_MAX, rng.randint(FAR_FUTURE_MS, FAR_FUTURE_MS + 100 * YEAR_MS)])
        else:
            data["time"] = rng.randint(0, EPOCH_2017_MS - 1)
        return _join(env, data)
    base = data.get("T") if kind in ("trade", "aggTrade") else data.get("E")
    if isinstance(base, bool) or not isinstance(base, int):
        base = None  # an event without a time (Binance's bookTicker): only absolute times are sure to be wrong
    if cls == "ts_far_future":
        if base is None or rng.random() < 0.1:
            t = INT64_MAX if rng.random() < 0.5 else rng.randint(FAR_FUTURE_MS, FAR_FUTURE_MS + 100 * YEAR_MS)
        else:
            t = base + rng.randint(DAY_MS, 100 * YEAR_MS)
    elif cls == "ts_far_past" or base is None:
        t = rng.randint(0, EPOCH_2017_MS - 1)
    else:  # ts_backwards: the stream's clock runs back by minutes to weeks
        t = base - rng.randint(120_000, 30 * DAY_MS)
    t = max(0, min(INT64_MAX, t))
    delta = t - (base if base is not None else t)
    for key in ("E", "T"):
        v = data.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            data[key] = max(0, min(INT64_MAX, v + delta))
    if kind == "bookTicker":
        data["E"] = t  # a bookTicker without E gets one, to be wrong
    if kind == "kline" and isinstance(data.get("k"), dict):
        k = dict(data["k"])
        for key in ("t", "T"):
            v = k.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                k[key] = max(0, min(INT64_MAX, v + delta))
        data["k"] = k
    return _join(env, data)


def ts_far_past(frame: bytes, rng: random.Random) -> bytes:
    return _shift_times(frame, rng, "ts_far_past")


def ts_far_future(frame: bytes, rng: random.Random) -> bytes:
    return _shift_times(frame, rng, "ts_far_future")


def ts_backwards(frame: bytes, rng: random.Random) -> bytes:
    return _shift_times(frame, rng, "ts_backwards")


def _absurd(frame: bytes, rng: random.Random, price: bool) -> bytes:
    env, data = _split(frame)
    kind = event_type(data)
    if kind is None:
        return _fallback(frame, rng)
    data = dict(data)
    pool = _NEGATIVE + _NOT_A_NUMBER + _OUT_OF_RANGE
    if price:
        pool += _ABOVE_CAP
    if kind != "bookTicker" and (price or kind in ("trade", "aggTrade")):
        pool += ("0", "0.00000000", "0.0")  # (a bookTicker side of 0/0 is an empty side, not absurd)
    value = rng.choice(pool)
    if kind == "depthUpdate":
        sides = [s for s in ("b", "a") if isinstance(data.get(s), list) and data[s]]
        if not sides:  # an empty diff: give it one absurd level
            data["b"] = [["1.00000000", "1.00000000"]]
            sides = ["b"]
        side = rng.choice(sides)
        levels = [list(x) if isinstance(x, list) else x for x in data[side]]
        j = rng.randrange(len(levels))
        if isinstance(levels[j], list) and len(levels[j]) == 2:
            levels[j][0 if price else 1] = value
        data[side] = levels
    elif kind == "kline":
        k = dict(data.get("k") or {})
        k[rng.choice(_PRICE_FIELDS["kline"] if price else _QTY_FIELDS["kline"])] = value
        data["k"] = k
    else:
        data[rng.choice((_PRICE_FIELDS if price else _QTY_FIELDS)[kind])] = value
    return _join(env, data)


def absurd_price(frame: bytes, rng: random.Random) -> bytes:
    return _absurd(frame, rng, True)


def absurd_qty(frame: bytes, rng: random.Random) -> bytes:
    return _absurd(frame, rng, False)


def _wrong_value(key: str, value, rng: random.Random):
    """A JSON value of another type than ``value`` (which the decoder requires for ``key``)."""
    if isinstance(value, bool):
        choices = [1, 0, "true", None, [True]]
    elif isinstance(value, int):
        choices = [str(value), float(value) + 0.5, True, None, [value], {"v": value}]
    elif isinstance(value, str):
        if value and value.replace(".", "", 1).isdigit():
            choices = [float(value), int(float(value)), None, [value], True]
        else:
            choices = [7, None, [value], {"v": value}, False]
    elif isinstance(value, list):  # depth levels
        choices = ["levels", {"0": value}, 3, None]
        if value and isinstance(value[0], list) and len(value[0]) == 2:
            p, q = value[0]
            bad_level = rng.choice([[p], [p, q, "x"], "p,q", [float(p), float(q)] if _is_dec(p) and _is_dec(q) else 5,
                                    {"p": p, "q": q}])
            choices.append([bad_level] + value[1:])
    elif isinstance(value, dict):
        choices = [[value], "k", 1]
    else:
        choices = [1, "x", [1]]
    return rng.choice(choices)


def _is_dec(s) -> bool:
    return isinstance(s, str) and s.replace(".", "", 1).isdigit()


def wrong_types(frame: bytes, rng: random.Random) -> bytes:
    env, data = _split(frame)
    kind = event_type(data)
    if kind is None:
        return _fallback(frame, rng)
    if env is not None and rng.random() < 0.1:  # the envelope itself
        if rng.random() < 0.5:
            return orjson.dumps({**env, "data": rng.choice([[data], "data", 1])})
        return orjson.dumps({**env, "stream": rng.choice([1, None, ["x"]])})
    data = dict(data)
    fields = [f for f in READ_FIELDS[kind] if f in data]
    if kind == "myTrade":
        key = rng.choice(fields)
        v = data[key]
        if key in ("price", "qty", "commission"):  # a JSON number is read exactly there: not a wrong type
            data[key] = rng.choice([None, [v], True, {"v": v}])
        elif key == "commissionAsset":  # null is read as "no commission asset"
            data[key] = rng.choice([7, [v], {"v": v}, False])
        else:
            data[key] = _wrong_value(key, v, rng)
        return _join(env, data)
    if kind == "kline":
        k = data.get("k")
        if isinstance(k, dict) and rng.random() < 0.8:
            kf = [f for f in KLINE_FIELDS if f in k]
            key = rng.choice(kf)
            data["k"] = {**k, key: _wrong_value(key, k[key], rng)}
            return _join(env, data)
        fields = [f for f in ("s", "k") if f in data]
    if kind == "bookTicker" and "E" in data:
        fields.append("E")
    key = rng.choice(fields)
    if key == "e":
        data[key] = rng.choice([1, None, True, ["trade"]])
    else:
        data[key] = _wrong_value(key, data[key], rng)
    return _join(env, data)


def truncated(frame: bytes, rng: random.Random) -> bytes:
    if len(frame) <= 1:
        return frame[:0] + b"{"
    return frame[: rng.randrange(1, len(frame))]


OVERSIZED_MIN = MAX_FRAME_BYTES + 1


def oversized(frame: bytes, rng: random.Random) -> bytes:
    env, data = _split(frame)
    if data is None:
        data = {"e": "trade"}
    if rng.random() < 0.3:  # more levels than one message may carry (fits in the byte limit)
        n = MAX_RECORDS_PER_FRAME + 1 + rng.randrange(64)
        level = ["61837.63000000", "0.02000000"]
        body = dict(data) if event_type(data) == "depthUpdate" else {
            "e": "depthUpdate", "E": data.get("E", 1), "s": data.get("s", "BTCUSDT"), "U": 1, "u": 2}
        body["b"] = [level] * n
        body["a"] = []
        out = _join(env, body)
        if len(out) <= MAX_FRAME_BYTES:
            return out
    pad = OVERSIZED_MIN + rng.randrange(64 * 1024)
    body = dict(data)
    body["zz"] = "A" * pad  # an unknown key: valid JSON, every real field intact, just far too big
    return _join(env, body)


_BAD_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
             b"\xc0\xaf")


def non_utf8(frame: bytes, rng: random.Random) -> bytes:
    bad = rng.choice(_BAD_UTF8)
    # inside a string value when there is one (the likeliest place to slip through), else anywhere
    quotes = [m.start() for m in re.finditer(b'"', frame)]
    if quotes and rng.random() < 0.8:
        i = rng.choice(quotes) + 1
    else:
        i = rng.randint(0, len(frame))
    return frame[:i] + bad + frame[i:]


_RESERVED = frozenset({"stream", "data", "result", "id", "code", "msg", "method", "params", "event"})


def _word(rng: random.Random) -> str:
    while True:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
        if w not in _RESERVED:
            return w


def _random_json(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 2 or r < 0.3:
        return rng.choice([rng.randint(-10**12, 10**12), rng.random() * 1e6, _word(rng), None, True, False])
    if r < 0.6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_word(rng): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def valid_json_not_binance(frame: bytes, rng: random.Random) -> bytes:
    env, data = _split(frame)
    r = rng.random()
    if r < 0.2:
        value = rng.choice([rng.randint(-10**15, 10**15), 1.5, "hello", None, True, [], [1, 2, 3]])
        return orjson.dumps(value)
    if r < 0.4:
        return orjson.dumps([_random_json(rng) for _ in range(rng.randint(1, 5))])
    obj = {_word(rng): _random_json(rng) for _ in range(rng.randint(0, 6))}
    if r < 0.6:
        return orjson.dumps(obj)
    if r < 0.8:  # an unknown event type, shaped like an event
        name = _word(rng) + "Update"
        while name in ("depthUpdate", "outboundAccountPosition"):
            name = _word(rng) + "Update"
        sym = data.get("s", "BTCUSDT") if isinstance(data, dict) else "BTCUSDT"
        obj = {"e": name, "E": 1_723_161_255_308, "s": sym if isinstance(sym, str) else "BTCUSDT",
               **obj}
    stream = env["stream"] if env is not None and isinstance(env.get("stream"), str) else "btcusdt@trade"
    return orjson.dumps({"stream": stream, "data": obj})


GENERATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "unknown_symbol": unknown_symbol,
    "ts_far_past": ts_far_past,
    "ts_far_future": ts_far_future,
    "ts_backwards": ts_backwards,
    "absurd_price": absurd_price,
    "absurd_qty": absurd_qty,
    "wrong_types": wrong_types,
    "truncated": truncated,
    "oversized": oversized,
    "non_utf8": non_utf8,
    "valid_json_not_binance": valid_json_not_binance,
}
if tuple(GENERATORS) != CLASSES:
    raise ImportError("core.hostile: GENERATORS and CLASSES disagree")


def hostile_frame(rng: random.Random, real_frame: bytes, cls: str | None = None) -> tuple[str, bytes]:
    """(class, hostile bytes) made from ``real_frame``; ``cls`` None draws one uniformly from ``CLASSES``."""
    if cls is None:
        cls = rng.choice(CLASSES)
    gen = GENERATORS.get(cls)
    if gen is None:
        raise ValueError(f"unknown hostile class {cls!r}; known: {', '.join(CLASSES)}")
    return cls, gen(bytes(real_frame), rng)


__all__ = ["CLASSES", "GENERATORS", "READ_FIELDS", "event_type", "hostile_frame", *CLASSES]

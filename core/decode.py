"""Binance Spot market-data frames -> ``MD_EVENT`` records (the feed's decoder).

Two paths, one result:

* fast path: ``core.decode_kernels.nb_decode_frame``, a numba scanner over the
  frame bytes for the shapes Binance sends (depthUpdate, trade, aggTrade,
  bookTicker; raw or in the combined envelope). It declines anything else.
* reference path: ``orjson.loads`` and plain Python checks. It handles every
  frame the fast path declines, and it alone classifies bad input.

The fast path must produce exactly the reference path's records or decline;
``tests/core/test_decode.py`` holds it to that on every recorded frame.

Records written (``core.records`` documents the fields):

==============  ==========================================================
depthUpdate     one MD_DEPTH_BID per ``b`` level, then one MD_DEPTH_ASK per
                ``a`` level (MD_DEPTH_NONE if both are empty); first_id=U,
                last_id=u, exch_ms=E; FLAG_BEGIN on the first, FLAG_END on
                the last record
trade           MD_TRADE, first_id=last_id=t, exch_ms=T, FLAG_BUYER_MAKER if m
aggTrade        MD_AGG_TRADE, first_id=f, last_id=l, exch_ms=T, aux=a & 0xFFFFFFFF
bookTicker      MD_TICKER_BID (b, B) then MD_TICKER_ASK (a, A); first_id=last_id=u;
                exch_ms=E when present, else 0
REST depth      MD_SNAP_BEGIN, MD_SNAP_BID..., MD_SNAP_ASK..., MD_SNAP_END;
                first_id=last_id=lastUpdateId, exch_ms=0, aux=level count on
                BEGIN and END
==============  ==========================================================

``pub_ns`` is left 0 (the publisher stamps it). Every record gets the
frame's ``recv_ns``.

Frames without a market event return 0: klines (counted in ``ignored``),
subscription replies and control errors, and ``serverShutdown``. The last
three are kept in ``Decoder.last_control`` (a ``ControlEvent``) for the feed
to act on: after a 0 return, check ``last_control`` (or call
``pop_control()``), e.g. reconnect on ``CONTROL_SHUTDOWN``.

Bad input never raises: it is counted in ``Decoder.errors`` by kind (see
``ERROR_KINDS``), logged once per kind, and the frame yields 0 records. A
frame is all or nothing: a depth diff with one bad level yields no record,
so the book sees the U/u gap and resyncs rather than applying half a diff.

Hostile input (``core.hostile`` makes every class of it from real frames) is
bad input too, and a frame the decoder accepts must not be able to drive a
later stage into unbounded work or a wrong figure:

* size: a WebSocket frame over ``MAX_FRAME_BYTES`` (a REST body over
  ``MAX_SNAPSHOT_BYTES``) is ``oversized``, dropped before it is parsed;
* values: a price of 0 or above ``core.decode_kernels.MAX_PRICE`` (1e10),
  or a trade quantity of 0, is ``absurd_value`` (negative, non-numeric and
  out-of-range text already had their kinds); a depth quantity of 0
  removes a level, and a bookTicker side of 0/0 is an empty side, so
  neither is absurd;
* time: every decoded frame's exchange time (depth ``E``, trade ``T``,
  bookTicker ``E`` when present) passes the exchange-time gate
  (``core.decode_kernels.nb_time_gate``): more than ``TIME_AHEAD_MS`` ahead
  of the last accepted frame's time plus the receive time elapsed since is
  ``time_ahead``, more than ``TIME_BEHIND_MS`` behind the last accepted
  frame's time ``time_behind``. When the receive clock is known as a wall
  clock (``recv_wall_offset_ns``: the feed passes the CLOCK_MONOTONIC ->
  epoch offset; a recording's receive times are epoch ns, offset 0), a time
  more than ``wall_ahead_ms`` ahead of it is ``time_ahead`` too, and with
  ``wall_behind_ms`` (replays of a recording; not a live feed, which the
  simulator may feed an old recording) one that far behind it
  ``time_behind``. A time before 2017 is always ``time_behind``, one after
  2100 always ``time_ahead`` (``core.decode_kernels.MIN_EXCH_MS`` /
  ``MAX_EXCH_MS``). Isolated bad times never move the gate's reference;
  ``REANCHOR_FRAMES`` consecutive rejected frames that agree with each
  other do (a replay that jumps to another day: ``time_reanchors``), and
  they are lost. So one far-future timestamp is dropped here and never
  moves a bar clock. Without a wall clock, the first timed frame is the
  first reference: a bad one there costs up to ``REANCHOR_FRAMES - 1`` good
  frames (the feed knows its wall clock, and a replay its recording's).

Capacity: ``out`` must hold all records of one message. Diff frames rarely
exceed a few hundred levels, but a REST snapshot can carry 5000 + 5000; use
``Decoder.new_out()`` (``MAX_RECORDS_PER_FRAME`` records, 640 KiB). A message
that does not fit is counted as ``too_many_levels`` and skipped.

Speed: pass the same ``out`` array every call (its int64 view is cached) and
``bytes`` payloads (other buffers are copied to ``bytes`` first). The feed's
hot path is ``decode_publish(payload, recv_ns, md_ring)``: decode and publish
into the md ring in one numba call, ``pub_ns`` stamped in the kernel.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import numpy as np
import orjson

from core.decode_kernels import (
    DECLINE,
    MAX_PRICE_FIXED,
    PENDING,
    ST_PENDING,
    ST_T_ANCHOR,
    ST_T_CAND_N,
    ST_T_REANCHORS,
    SYM_MAX_LEN,
    TIME_AHEAD,
    TIME_BEHIND,
    make_state,
    nb_decode_frame,
    nb_decode_publish,
    nb_decode_snapshot,
    nb_publish_records,
    nb_time_gate,
)
from core.errors import ConfigError, FixedPointError, RingError
from core.fixedpoint import to_fixed
from core.records import (
    FLAG_BEGIN,
    FLAG_BUYER_MAKER,
    FLAG_END,
    INT64_MAX,
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
from ringbuffers.ring import FULL

log = logging.getLogger(__name__)

MAX_RECORDS_PER_FRAME = 16384  # >= 5000 + 5000 snapshot levels + BEGIN/END
MAX_FRAME_BYTES = 1 << 20  # a WebSocket frame larger than this is dropped unparsed (Binance's are < 100 KiB)
MAX_SNAPSHOT_BYTES = 8 << 20  # a REST depth body larger than this too (5000 + 5000 levels are ~0.4 MiB)
TIME_AHEAD_MS = 60_000  # the exchange-time gate's relative bounds (see the module docstring)
TIME_BEHIND_MS = 60_000
WALL_AHEAD_MS = 300_000  # ...and how far ahead of a known wall clock an exchange time may be (host clock error)
REANCHOR_FRAMES = 8  # consecutive rejected frames agreeing with each other that move the gate's reference
TIME_ERRORS = {TIME_AHEAD: "time_ahead", TIME_BEHIND: "time_behind"}
_DECIMAL_FORM = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

ERROR_KINDS = (
    "malformed_json",  # not JSON at all (truncated, garbage)
    "not_object",  # JSON, but not an object
    "unknown_symbol",  # "s" is not in the configured symbol table
    "unknown_stream",  # an event type this decoder does not know
    "missing_field",  # a required key is absent
    "bad_field_type",  # a key has the wrong JSON type (e.g. number where a string belongs)
    "bad_number",  # a price/qty string that is not an exact decimal of <= 8 places
    "negative_qty",  # a quantity string with a minus sign
    "negative_price",  # a price string with a minus sign
    "out_of_range",  # an id/time outside 0..INT64_MAX, or a decimal beyond the fixed-point range
    "too_many_levels",  # the message does not fit in ``out``
    "absurd_value",  # a price of 0 or above decode_kernels.MAX_PRICE, a trade quantity of 0
    "time_ahead",  # the exchange time is implausibly far ahead (the time gate)
    "time_behind",  # the exchange time is implausibly far behind (far past, or the clock going backwards)
    "oversized",  # a frame over MAX_FRAME_BYTES (a REST body over MAX_SNAPSHOT_BYTES), not parsed
    "internal_error",  # a bug in this module (logged with traceback); should stay 0
)

CONTROL_SHUTDOWN = "server_shutdown"  # {"e":"serverShutdown",...}: reconnect soon
CONTROL_REPLY = "reply"  # {"result":...,"id":...}: answer to SUBSCRIBE etc.
CONTROL_ERROR = "error"  # {"code":...,"msg":...}: a rejected control request


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A non-market message the feed must act on."""

    kind: str  # CONTROL_SHUTDOWN / CONTROL_REPLY / CONTROL_ERROR
    recv_ns: int  # the frame's receive time
    body: dict  # the decoded JSON object (the envelope's data for combined streams)


class _Bad(Exception):
    """Internal: bad input of one kind; caught inside ``decode`` and counted."""

    def __init__(self, kind: str):
        self.kind = kind


def _int_field(obj: dict, key: str) -> int:
    if key not in obj:
        raise _Bad("missing_field")
    v = obj[key]
    if type(v) is not int:  # noqa: E721 - bool is an int subclass and must not pass
        raise _Bad("bad_field_type")
    if v < 0 or v > INT64_MAX:
        raise _Bad("out_of_range")
    return v


def _str_field(obj: dict, key: str) -> str:
    if key not in obj:
        raise _Bad("missing_field")
    v = obj[key]
    if not isinstance(v, str):
        raise _Bad("bad_field_type")
    return v


def _bool_field(obj: dict, key: str) -> bool:
    if key not in obj:
        raise _Bad("missing_field")
    v = obj[key]
    if not isinstance(v, bool):
        raise _Bad("bad_field_type")
    return v


def _fixed(value, negative_kind: str) -> int:
    """A price/qty JSON value (must be a decimal string) to fixed point."""
    if not isinstance(value, str):
        raise _Bad("bad_field_type")
    if value.startswith("-"):
        raise _Bad(negative_kind)
    try:
        return to_fixed(value)
    except (FixedPointError, ValueError) as exc:  # ValueError: int() of more than 4300 digits
        # a well-formed decimal of <= 8 places can only fail on range
        _, _, frac = value.partition(".")
        well_formed = _DECIMAL_FORM.fullmatch(value) is not None and not frac[8:].strip("0")
        raise _Bad("out_of_range" if well_formed else "bad_number") from exc


def _fixed_field(obj: dict, key: str, negative_kind: str) -> int:
    if key not in obj:
        raise _Bad("missing_field")
    return _fixed(obj[key], negative_kind)


def _price(value) -> int:
    """A price: a decimal string, > 0 and <= decode_kernels.MAX_PRICE."""
    px = _fixed(value, "negative_price")
    if px == 0 or px > MAX_PRICE_FIXED:
        raise _Bad("absurd_value")
    return px


def _levels(obj: dict, key: str) -> list[tuple[int, int]]:
    if key not in obj:
        raise _Bad("missing_field")
    levels = obj[key]
    if not isinstance(levels, list):
        raise _Bad("bad_field_type")
    parsed = []
    for level in levels:
        if not isinstance(level, list) or len(level) != 2:
            raise _Bad("bad_field_type")
        parsed.append((_price(level[0]), _fixed(level[1], "negative_qty")))
    return parsed


def _check_out(out: np.ndarray) -> None:
    if not isinstance(out, np.ndarray) or out.dtype != MD_EVENT or out.ndim != 1:
        raise TypeError(f"out must be a 1-d MD_EVENT array, got {getattr(out, 'dtype', type(out))!r}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")


class Decoder:
    """Decode Binance Spot WebSocket frames and REST depth bodies into MD_EVENT records.

    ``symbols``: the instrument table, upper case; a symbol's id is its index.
    The exchange-time gate (module docstring): ``recv_wall_offset_ns`` makes
    ``recv_ns + offset`` the epoch ns of a frame's receipt (None: the
    receive clock is not a wall clock, relative checks only);
    ``wall_ahead_ms`` / ``wall_behind_ms`` bound an exchange time against it
    (``wall_behind_ms`` None: no bound behind); ``time_ahead_ms`` /
    ``time_behind_ms`` against the stream itself.
    Not thread-safe (one decoder per feed thread).
    """

    def __init__(self, symbols: list[str], *, recv_wall_offset_ns: int | None = None,
                 wall_ahead_ms: int = WALL_AHEAD_MS, wall_behind_ms: int | None = None,
                 time_ahead_ms: int = TIME_AHEAD_MS, time_behind_ms: int = TIME_BEHIND_MS,
                 reanchor_frames: int = REANCHOR_FRAMES):
        symbols = list(symbols)
        for k, sym in enumerate(symbols):
            if not isinstance(sym, str) or not sym or not sym.isascii() or not sym.isalnum() or sym != sym.upper():
                raise ConfigError(f"symbols[{k}]", f"must be an upper-case ASCII alphanumeric symbol, got {sym!r}")
            if len(sym) > SYM_MAX_LEN:
                raise ConfigError(f"symbols[{k}]", f"longer than {SYM_MAX_LEN} characters: {sym!r}")
        if len(set(symbols)) != len(symbols):
            raise ConfigError("symbols", f"duplicate symbols in {symbols}")
        if len(symbols) > 0xFFFF:
            raise ConfigError("symbols", f"at most 65535 symbols (u16 ids), got {len(symbols)}")
        self.symbols = symbols
        self.symbol_ids = {s: i for i, s in enumerate(symbols)}
        for key, v in (("wall_ahead_ms", wall_ahead_ms), ("time_ahead_ms", time_ahead_ms),
                       ("time_behind_ms", time_behind_ms), ("wall_behind_ms", wall_behind_ms or 0)):
            if v < 0:
                raise ConfigError(f"decoder.{key}", f"must be >= 0, got {v}")
        if reanchor_frames < 1:
            raise ConfigError("decoder.reanchor_frames", f"must be >= 1, got {reanchor_frames}")
        self._st = make_state(symbols, ahead_ms=time_ahead_ms, behind_ms=time_behind_ms,
                              wall_offset_ms=None if recv_wall_offset_ns is None else recv_wall_offset_ns // 1_000_000,
                              wall_ahead_ms=wall_ahead_ms, wall_behind_ms=wall_behind_ms,
                              reanchor_frames=reanchor_frames)
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.ignored: dict[str, int] = {"kline": 0}
        self.fast = 0  # frames the numba path decoded
        self.slow = 0  # frames that went through orjson
        self.controls = 0  # control messages seen
        self.last_control: ControlEvent | None = None
        self._out_obj: np.ndarray | None = None
        self._out_view: np.ndarray | None = None
        self._ring = None  # decode_publish: the ring whose views are cached
        self._ring_ctrl: np.ndarray | None = None
        self._ring_slots: np.ndarray | None = None
        self._ring_out = self.new_out()  # decode_publish's own scratch
        self._ring_out64 = self._ring_out.view(np.int64).reshape(len(self._ring_out), 8)
        self.pending = 0  # records decoded but not yet published (the ring was full)

    @property
    def time_reanchors(self) -> int:
        """Times the exchange-time gate moved its reference to a run of agreeing frames (a real clock jump)."""
        return int(self._st[ST_T_REANCHORS])

    def reset_time_gate(self) -> None:
        """Forget the exchange-time gate's reference (after warm-up frames that were not traffic)."""
        self._st[ST_T_ANCHOR:ST_T_CAND_N + 1] = 0

    @staticmethod
    def new_out() -> np.ndarray:
        """An ``out`` buffer big enough for any single Binance message."""
        return np.zeros(MAX_RECORDS_PER_FRAME, MD_EVENT)

    def pop_control(self) -> ControlEvent | None:
        """The last control message (or None), clearing it."""
        ev, self.last_control = self.last_control, None
        return ev

    # -- public --------------------------------------------------------------

    def decode(self, payload: bytes, recv_ns: int, out: np.ndarray) -> int:
        """Write the records of one WebSocket text frame into ``out``; return how many."""
        # the common case (same out as last time) without a method call
        view = self._out_view if out is self._out_obj else self._view(out)
        if type(payload) is not bytes:
            payload = bytes(payload)
        if len(payload) > MAX_FRAME_BYTES:
            return self._bad("oversized", payload)
        n = nb_decode_frame(payload, view, recv_ns, self._st)
        if n != DECLINE:
            self.fast += 1
            if n < 0:
                return self._bad(TIME_ERRORS[n], payload)
            return n
        self.slow += 1
        return self._guard(self._frame_ref, payload, recv_ns, out)

    def decode_kline(self, payload: bytes, recv_ns: int) -> dict | None:
        """A kline frame's fields, checked like a market frame's (the feed ignores klines; replays check them).

        Returns ``{"symbol", "interval" (Binance's text, e.g. "1m"), "t", "T",
        "f", "L", "n", "x", "o", "h", "l", "c", "v", "q", "V", "Q"}`` (prices
        and volumes fixed point), or None: bad input is counted in ``errors``
        by the same kinds (a symbol outside the table is ``unknown_symbol``,
        ``E`` goes through the exchange-time gate), and a frame that is no
        kline at all is ``unknown_stream``.
        """
        payload = bytes(payload)
        if len(payload) > MAX_FRAME_BYTES:
            self._bad("oversized", payload)
            return None
        try:
            return self._kline_ref(payload, recv_ns)
        except _Bad as bad:
            self._bad(bad.kind, payload)
        except Exception:  # noqa: BLE001 - like decode(): never raise on input
            self.errors["internal_error"] += 1
            log.exception("decoder: internal error on kline %r", payload[:200])
        return None

    def decode_snapshot(self, payload: bytes, symbol_id: int, recv_ns: int, out: np.ndarray) -> int:
        """Write a REST depth body as SNAP_BEGIN, levels, SNAP_END into ``out``; return how many."""
        view = self._view(out)
        if not 0 <= symbol_id < len(self.symbols):
            raise ValueError(f"symbol_id {symbol_id} not in 0..{len(self.symbols) - 1}")
        if type(payload) is not bytes:
            payload = bytes(payload)
        if len(payload) > MAX_SNAPSHOT_BYTES:
            return self._bad("oversized", payload)
        n = nb_decode_snapshot(payload, view, recv_ns, symbol_id)
        if n != DECLINE:
            self.fast += 1
            return n
        self.slow += 1
        return self._guard(self._snapshot_ref, payload, recv_ns, out, symbol_id)

    def decode_publish(self, payload: bytes, recv_ns: int, ring) -> int:
        """Decode one frame and publish its records into ``ring`` (an MD_EVENT ``Ring``).

        The feed's hot path: one numba call decodes into the decoder's own
        buffer and publishes, stamping ``pub_ns`` (CLOCK_MONOTONIC) in the
        kernel. The frame is always consumed. Returns the records published,
        or ``ringbuffers.ring.FULL`` when the ring (block policy) had no room:
        the records are kept (``pending``); call ``publish_pending`` (waiting
        with your idle strategy) until it succeeds before the next frame --
        calling ``decode_publish`` with records pending is misuse (RingError),
        because publishing the next frame first would reorder the stream.
        """
        if self.pending:
            raise RingError(f"decode_publish() with {self.pending} records pending: call publish_pending() first")
        if ring is self._ring:
            ctrl, slots = self._ring_ctrl, self._ring_slots
        else:
            ctrl, slots = self._ring_views(ring)
        if type(payload) is not bytes:
            payload = bytes(payload)
        if len(payload) > MAX_FRAME_BYTES:
            return self._bad("oversized", payload)
        n = nb_decode_publish(payload, self._ring_out64, recv_ns, self._st, ctrl, slots)
        if n >= 0:
            self.fast += 1
            return n
        if n == PENDING:
            self.fast += 1
            self.pending = int(self._st[ST_PENDING])
            return FULL
        if n != DECLINE:  # decoded, refused by the time gate, nothing published
            self.fast += 1
            return self._bad(TIME_ERRORS[n], payload)
        self.slow += 1
        n = self._guard(self._frame_ref, payload, recv_ns, self._ring_out)
        if n > 0 and nb_publish_records(ctrl, slots, self._ring_out64, n, time.monotonic_ns()) == FULL:
            self.pending = n
            return FULL
        return n

    def publish_pending(self, ring) -> int:
        """Publish the records a full ring refused; returns how many, or FULL (still no room)."""
        if not self.pending:
            return 0
        ctrl, slots = self._ring_views(ring)
        if nb_publish_records(ctrl, slots, self._ring_out64, self.pending, time.monotonic_ns()) == FULL:
            return FULL
        n, self.pending = self.pending, 0
        return n

    # reference path, public so tests and the bench can compare against it
    def decode_reference(self, payload: bytes, recv_ns: int, out: np.ndarray) -> int:
        """``decode`` through the orjson path only."""
        _check_out(out)
        payload = bytes(payload)
        if len(payload) > MAX_FRAME_BYTES:
            return self._bad("oversized", payload)
        return self._guard(self._frame_ref, payload, recv_ns, out)

    def decode_snapshot_reference(self, payload: bytes, symbol_id: int, recv_ns: int, out: np.ndarray) -> int:
        """``decode_snapshot`` through the orjson path only."""
        _check_out(out)
        payload = bytes(payload)
        if len(payload) > MAX_SNAPSHOT_BYTES:
            return self._bad("oversized", payload)
        return self._guard(self._snapshot_ref, payload, recv_ns, out, symbol_id)

    # -- internals -----------------------------------------------------------

    def _view(self, out: np.ndarray) -> np.ndarray:
        if out is self._out_obj:
            return self._out_view
        _check_out(out)
        self._out_obj = out
        self._out_view = out.view(np.int64).reshape(len(out), 8)
        return self._out_view

    def _ring_views(self, ring) -> tuple[np.ndarray, np.ndarray]:
        if ring is not self._ring:
            if ring.dtype != MD_EVENT:
                raise TypeError(f"ring {ring.name} carries {ring.dtype}, not MD_EVENT")
            self._ring_ctrl = ring.ctrl
            self._ring_slots = ring.slots.view(np.int64).reshape(ring.capacity, 8)
            self._ring = ring
        return self._ring_ctrl, self._ring_slots

    def _bad(self, kind: str, payload: bytes) -> int:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.errors[kind] == 1:
            log.warning("decoder: %s (logged once per kind, then only counted): %r", kind, payload[:200])
        return 0

    def _guard(self, fn, payload: bytes, *args) -> int:
        try:
            return fn(payload, *args)
        except _Bad as bad:
            return self._bad(bad.kind, payload)
        except Exception:  # noqa: BLE001 - decode() must never raise into the feed loop
            self.errors["internal_error"] += 1
            log.exception("decoder: internal error on frame %r", payload[:200])
            return 0

    def _loads(self, payload: bytes):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise _Bad("malformed_json") from exc

    def _symbol(self, obj: dict) -> int:
        sid = self.symbol_ids.get(_str_field(obj, "s"))
        if sid is None:
            raise _Bad("unknown_symbol")
        return sid

    def _write(self, out: np.ndarray, rows: list[tuple]) -> int:
        if len(rows) > len(out):
            raise _Bad("too_many_levels")
        if rows:
            out[: len(rows)] = rows
        return len(rows)

    def _control(self, kind: str, recv_ns: int, body: dict) -> int:
        self.controls += 1
        self.last_control = ControlEvent(kind, recv_ns, body)
        log.info("decoder: control message %s: %r", kind, body)
        return 0

    def _frame_ref(self, payload: bytes, recv_ns: int, out: np.ndarray) -> int:
        obj = self._loads(payload)
        if not isinstance(obj, dict):
            raise _Bad("not_object")
        if "stream" in obj and "data" in obj:
            data = obj["data"]
            if not isinstance(obj["stream"], str) or not isinstance(data, dict):
                raise _Bad("bad_field_type")
        else:
            data = obj
            if "result" in obj and "id" in obj:
                return self._control(CONTROL_REPLY, recv_ns, obj)
            if "code" in obj and "msg" in obj:
                return self._control(CONTROL_ERROR, recv_ns, obj)
        if "e" not in data:
            if all(k in data for k in ("u", "s", "b", "B", "a", "A")):
                return self._gated(self._ticker_ref(data, recv_ns, out), recv_ns, out)
            raise _Bad("unknown_stream")
        e = data["e"]
        if e == "depthUpdate":
            return self._gated(self._depth_ref(data, recv_ns, out), recv_ns, out)
        if e == "trade":
            return self._gated(self._trade_ref(data, recv_ns, out, agg=False), recv_ns, out)
        if e == "aggTrade":
            return self._gated(self._trade_ref(data, recv_ns, out, agg=True), recv_ns, out)
        if e == "kline":
            self.ignored["kline"] += 1
            return 0
        if e == "serverShutdown":
            return self._control(CONTROL_SHUTDOWN, recv_ns, data)
        if not isinstance(e, str):
            raise _Bad("bad_field_type")
        raise _Bad("unknown_stream")

    def _kline_ref(self, payload: bytes, recv_ns: int) -> dict:
        obj = self._loads(payload)
        if not isinstance(obj, dict):
            raise _Bad("not_object")
        data = obj.get("data") if "stream" in obj and "data" in obj else obj
        if not isinstance(data, dict):
            raise _Bad("bad_field_type")
        if data.get("e") != "kline":
            raise _Bad("unknown_stream")
        self._symbol(data)
        exch_ms = _int_field(data, "E")
        k = data.get("k")
        if not isinstance(k, dict):
            raise _Bad("missing_field" if k is None else "bad_field_type")
        if _str_field(k, "s") != data["s"]:
            raise _Bad("unknown_symbol")
        f = {"symbol": data["s"], "interval": _str_field(k, "i"), "t": _int_field(k, "t"), "T": _int_field(k, "T"),
             "n": _int_field(k, "n"), "x": _bool_field(k, "x")}
        for key in ("f", "L"):  # -1 in a kline without trades
            v = k.get(key)
            if key not in k:
                raise _Bad("missing_field")
            if type(v) is not int:  # noqa: E721 - bool must not pass
                raise _Bad("bad_field_type")
            if v < -1 or v > INT64_MAX:
                raise _Bad("out_of_range")
            f[key] = v
        for key in ("o", "h", "l", "c"):
            if key not in k:
                raise _Bad("missing_field")
            f[key] = _price(k[key])
        for key in ("v", "q", "V", "Q"):
            f[key] = _fixed_field(k, key, "negative_qty")
        code = nb_time_gate(self._st, exch_ms, recv_ns)
        if code:
            raise _Bad(TIME_ERRORS[code])
        return f

    def _gated(self, n: int, recv_ns: int, out: np.ndarray) -> int:
        """The exchange-time gate on a decoded frame (as ``nb_decode_frame`` applies it)."""
        if n > 0:
            code = nb_time_gate(self._st, int(out[0]["exch_ms"]), recv_ns)
            if code:
                raise _Bad(TIME_ERRORS[code])
        return n

    def _depth_ref(self, d: dict, recv_ns: int, out: np.ndarray) -> int:
        sid = self._symbol(d)
        exch_ms = _int_field(d, "E")
        first_id = _int_field(d, "U")
        last_id = _int_field(d, "u")
        bids = _levels(d, "b")
        asks = _levels(d, "a")
        if not bids and not asks:
            return self._write(out, [(recv_ns, 0, exch_ms, first_id, last_id, 0, 0, sid, MD_DEPTH_NONE,
                                      FLAG_BEGIN | FLAG_END, 0)])
        rows = [(recv_ns, 0, exch_ms, first_id, last_id, p, q, sid, MD_DEPTH_BID, 0, 0) for p, q in bids]
        rows += [(recv_ns, 0, exch_ms, first_id, last_id, p, q, sid, MD_DEPTH_ASK, 0, 0) for p, q in asks]
        rows[0] = rows[0][:9] + (rows[0][9] | FLAG_BEGIN, 0)
        rows[-1] = rows[-1][:9] + (rows[-1][9] | FLAG_END, 0)
        return self._write(out, rows)

    def _trade_ref(self, d: dict, recv_ns: int, out: np.ndarray, agg: bool) -> int:
        sid = self._symbol(d)
        if "p" not in d:
            raise _Bad("missing_field")
        px = _price(d["p"])
        qty = _fixed_field(d, "q", "negative_qty")
        if qty == 0:
            raise _Bad("absurd_value")
        exch_ms = _int_field(d, "T")
        flags = FLAG_BEGIN | FLAG_END | (FLAG_BUYER_MAKER if _bool_field(d, "m") else 0)
        if agg:
            agg_id = _int_field(d, "a")
            row = (recv_ns, 0, exch_ms, _int_field(d, "f"), _int_field(d, "l"), px, qty, sid, MD_AGG_TRADE,
                   flags, agg_id & 0xFFFFFFFF)
        else:
            tid = _int_field(d, "t")
            row = (recv_ns, 0, exch_ms, tid, tid, px, qty, sid, MD_TRADE, flags, 0)
        return self._write(out, [row])

    def _ticker_ref(self, d: dict, recv_ns: int, out: np.ndarray) -> int:
        sid = self._symbol(d)
        u = _int_field(d, "u")
        exch_ms = _int_field(d, "E") if "E" in d else 0
        bp = _fixed_field(d, "b", "negative_price")
        bq = _fixed_field(d, "B", "negative_qty")
        ap = _fixed_field(d, "a", "negative_price")
        aq = _fixed_field(d, "A", "negative_qty")
        if bp > MAX_PRICE_FIXED or ap > MAX_PRICE_FIXED or (bp == 0 and bq) or (ap == 0 and aq):
            raise _Bad("absurd_value")
        return self._write(out, [
            (recv_ns, 0, exch_ms, u, u, bp, bq, sid, MD_TICKER_BID, FLAG_BEGIN, 0),
            (recv_ns, 0, exch_ms, u, u, ap, aq, sid, MD_TICKER_ASK, FLAG_END, 0),
        ])

    def _snapshot_ref(self, payload: bytes, recv_ns: int, out: np.ndarray, sid: int) -> int:
        obj = self._loads(payload)
        if not isinstance(obj, dict):
            raise _Bad("not_object")
        last_id = _int_field(obj, "lastUpdateId")
        bids = _levels(obj, "bids")
        asks = _levels(obj, "asks")
        levels = len(bids) + len(asks)
        if levels + 2 > len(out):
            raise _Bad("too_many_levels")
        rows = [(recv_ns, 0, 0, last_id, last_id, 0, 0, sid, MD_SNAP_BEGIN, FLAG_BEGIN, levels)]
        rows += [(recv_ns, 0, 0, last_id, last_id, p, q, sid, MD_SNAP_BID, 0, 0) for p, q in bids]
        rows += [(recv_ns, 0, 0, last_id, last_id, p, q, sid, MD_SNAP_ASK, 0, 0) for p, q in asks]
        rows.append((recv_ns, 0, 0, last_id, last_id, 0, 0, sid, MD_SNAP_END, FLAG_END, levels))
        return self._write(out, rows)

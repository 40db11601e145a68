#!/usr/bin/env python3
"""Positions and P&L of a Binance trade history, through the same code as the risk stage (core/pnl.py).

    .venv/bin/python scripts/pnl_report.py --trades FILE --method fifo|lifo|average
        [--mark SYMBOL=PRICE ...] [--fee-price ASSET[/QUOTE]=PRICE ...] [--exchange-info FILE] [--json]

Input: ``GET /api/v3/myTrades`` objects, one JSON object per line (blank
lines skipped) or one JSON array, any number of symbols. Fields used (as
Binance spells them)::

    symbol           "BTCUSDT"
    id               trade id (int): the order of trades with equal time
    price, qty       decimal text (a JSON number is read exactly too); > 0
    commission       decimal text, >= 0, in commissionAsset
    commissionAsset  "BNB", the base or the quote asset
    time             trade time, ms since the epoch (int)
    isBuyer          true: we bought (side BUY), false: we sold

(``orderId``, ``quoteQty``, ``isMaker``, ``isBestMatch`` are not needed and
not checked.) Trades are sorted by (time, id) per symbol, then applied one by
one with ``core.pnl.PnlBook.apply_fill``; the rules (signed lots, zero
crossing, commissions in base/quote/other assets, exact arithmetic and
half-even rounding to 1e-8) are core/pnl.py's and documented there.

Assets: a symbol's base and quote come from ``--exchange-info FILE`` (the
``GET /api/v3/exchangeInfo`` body: ``symbols[].baseAsset/quoteAsset``) when
it lists the symbol, else from the longest known quote suffix
(``QUOTE_SUFFIXES``). A commission in the base asset is base the account no
longer has; in the quote asset a fee; in any other asset (BNB) it is
reported per asset and converted to quote only with ``--fee-price``:
``BNB=600`` prices BNB in the quote of every symbol, ``BNB/BTC=0.009`` only
for symbols quoted in BTC (it wins over the plain form). Unpriced other-asset
fees are left out of ``fees_quote`` and ``realized_net`` and listed in
``fees_unpriced``.

Output per symbol: position (base), avg_entry (FIFO/LIFO: the qty-weighted
price of the open lots; average: the running average; null when flat),
realized_gross, fees (asset -> amount), fees_quote, realized_net,
unrealized at ``--mark`` (null without one), trades. ``--json``: one object
keyed by symbol, numbers as decimal strings with 8 decimals.

Bad lines (hostile input, ``core.hostile``): a line that is not UTF-8, longer
than ``MAX_LINE_BYTES``, not JSON, not a trade object, with a missing field, a
field of the wrong type, a price or qty that is not > 0 or above
``core.decode_kernels.MAX_PRICE``, a time before Binance opened
(``EARLIEST_TRADE_MS``) or more than a day ahead of the clock, a symbol with
no known quote asset (or, with ``--exchange-info``, one it does not list) or
a trade id already seen for that symbol is skipped and counted by reason:
the figures are those of the good lines. stderr gets one line per skipped
line (the first ``SHOW_SKIPPED``) naming the file, the line and the problem,
and a total by reason; stdout is the report alone. In a JSON array an
element is skipped the same way, but an array that stops being JSON cannot
be read on (exit 2). ``--strict`` restores the all-or-nothing behaviour: the
first bad line is exit 2.

Exit codes: 0 report written (bad lines skipped, see stderr); 2 bad input
that cannot be skipped (an unreadable file, a broken JSON array, a bad
option value; with ``--strict`` any bad line): one message naming the line
or the symbol, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.numba_cache import configure  # noqa: E402

configure()  # before numba is imported: the keyed cache dir

from core.decode_kernels import MAX_PRICE_FIXED  # noqa: E402
from core.errors import ConfigError, FixedPointError  # noqa: E402
from core.fixedpoint import to_fixed  # noqa: E402
from core.pnl import (  # noqa: E402
    COMM_BASE,
    COMM_OTHER,
    COMM_QUOTE,
    METHOD_IDS,
    PNL_OK,
    STATUS_NAMES,
    PnlBook,
)
from core.records import SIDE_BUY, SIDE_SELL  # noqa: E402

EXIT_OK = 0
EXIT_BAD_INPUT = 2

# Quote assets recognised as a symbol suffix (longest match wins: FDUSD before USD-like shorter ones).
QUOTE_SUFFIXES = (
    "USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USDP", "USDS", "DAI", "UST", "PAX", "AEUR", "EURI", "EUR", "GBP",
    "AUD", "BRL", "TRY", "RUB", "UAH", "NGN", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "JPY", "IDRT",
    "BIDR", "BKRW", "BVND", "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "DOT", "SOL",
)

REQUIRED_FIELDS = ("symbol", "id", "price", "qty", "commission", "commissionAsset", "time", "isBuyer")
FIELD_NUMBERS = 8  # decimals printed
MAX_LINE_BYTES = 64 * 1024  # a myTrades object is ~300 bytes; a longer line is not one
EARLIEST_TRADE_MS = 1_499_990_400_000  # 2017-07-14 UTC, Binance's first day of trading
FUTURE_SLACK_MS = 86_400_000  # a trade time more than this ahead of the clock is absurd
SHOW_SKIPPED = 20  # skipped lines named one by one on stderr (then only counted)
INT64_MAX = 2**63 - 1


class BadLine(ConfigError):
    """One input line (or array element) that is not a good trade; ``reason`` is what it is counted as."""

    def __init__(self, path: str, problem: str, reason: str):
        super().__init__(path, problem)
        self.reason = reason


@dataclass
class Skipped:
    """Bad lines skipped (not in the figures): counts by reason, the first messages."""

    reasons: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def add(self, bad: BadLine) -> None:
        self.reasons[bad.reason] = self.reasons.get(bad.reason, 0) + 1
        if len(self.messages) < SHOW_SKIPPED:
            self.messages.append(str(bad))


@dataclass(frozen=True)
class Trade:
    line: int  # line of the input where the trade's object starts
    symbol: str
    id: int
    time_ms: int  # trade time, ms since the epoch (exchange clock)
    side: int  # SIDE_BUY / SIDE_SELL
    px: int  # fixed point
    qty: int  # fixed point
    commission: int  # fixed point, in commission_asset
    commission_asset: str


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def _at(name: str, line: int) -> str:
    """The location prefix of an input error (ConfigError's path)."""
    return f"{name} line {line}:"


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deep)"
    return f"not valid JSON ({exc})"


def _json_objects(raw: bytes, name: str):
    """(line, parsed value, or a BadLine for a line that is not a JSON value) of each JSON line, or of each
    element of one JSON array (whose structural errors raise: an array cannot be read on past them)."""
    decoder = json.JSONDecoder(parse_float=Decimal)
    if raw.lstrip()[:1] == b"[":
        # undecodable bytes become lone surrogates: they can only sit in strings, which the checks then refuse
        yield from _array_elements(raw.decode("utf-8", "surrogateescape"), name, decoder)
        return
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            yield n, BadLine(_at(name, n), f"longer than {MAX_LINE_BYTES} bytes ({len(line)}): not a trade",
                             "oversized")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield n, BadLine(_at(name, n), f"not UTF-8 text (byte {exc.start + 1})", "not_utf8")
            continue
        try:
            value, end = decoder.raw_decode(text, len(text) - len(text.lstrip()))
        except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or an int of > 4300 digits
            yield n, BadLine(_at(name, n), _json_problem(exc), "not_json")
            continue
        if text[end:].strip():
            yield n, BadLine(_at(name, n), f"extra text after the JSON value at column {end + 1}", "not_json")
            continue
        yield n, value


def _array_elements(text: str, name: str, decoder: json.JSONDecoder):
    ws = " \t\r\n"
    i = text.index("[") + 1
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    first = True
    while True:
        while i < len(text) and text[i] in ws:
            i += 1
        if i >= len(text):
            raise ConfigError(_at(name, line_at(len(text))), "unterminated JSON array (missing ']')")
        if text[i] == "]" and first:
            i += 1
            break
        start = line_at(i)
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError) as exc:
            where = exc.lineno if isinstance(exc, json.JSONDecodeError) else line_at(i)
            raise ConfigError(_at(name, where), _json_problem(exc)) from exc
        yield start, value
        first = False
        while i < len(text) and text[i] in ws:
            i += 1
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i < len(text) and text[i] == "]":
            i += 1
            break
        raise ConfigError(_at(name, line_at(min(i, len(text)))), "expected ',' or ']' after an array element")
    if text[i:].strip():
        raise ConfigError(_at(name, line_at(i + len(text[i:]) - len(text[i:].lstrip()))),
                          "extra text after the JSON array")


def _decimal_field(obj: dict, key: str, where: str, *, positive: bool) -> int:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (str, int, Decimal)):
        raise BadLine(where, f"field {key!r} must be decimal text, got {v!r}", "bad_field_type")
    try:
        text = format(v, "f") if isinstance(v, Decimal) else str(v)
        fixed = to_fixed(text)
    except (FixedPointError, ValueError) as exc:  # ValueError: Decimal NaN/inf, int() of > 4300 digits
        raise BadLine(where, f"field {key!r} is not a non-negative decimal with at most 8 decimals: {v!r}",
                      "bad_value") from exc
    if positive and fixed <= 0:
        raise BadLine(where, f"field {key!r} must be > 0, got {v!r}", "bad_value")
    return fixed


def _int_field(obj: dict, key: str, where: str) -> int:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadLine(where, f"field {key!r} must be an integer, got {v!r}", "bad_field_type")
    if not 0 <= v <= INT64_MAX:
        raise BadLine(where, f"field {key!r} must be in 0..{INT64_MAX}, got {v!r}", "bad_value")
    return v


def parse_trade(obj, line: int, name: str, now_ms: int | None = None) -> Trade:
    """One myTrades object; raises ``BadLine`` naming the line, the field and the problem."""
    where = _at(name, line)
    if not isinstance(obj, dict):
        raise BadLine(where, f"expected a trade object, got {type(obj).__name__}", "not_a_trade")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise BadLine(where, f"missing field {missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                 if len(missing) > 1 else ""), "missing_field")
    symbol = obj["symbol"]
    if not isinstance(symbol, str) or not symbol.isascii() or not symbol.isalnum():
        raise BadLine(where, f"field 'symbol' must be a symbol name, got {symbol!r}", "bad_field_type")
    asset = obj["commissionAsset"]
    if asset is None:
        asset = ""
    if not isinstance(asset, str) or not (asset.isascii() and (asset.isalnum() or not asset)):
        raise BadLine(where, f"field 'commissionAsset' must be an asset name, got {asset!r}", "bad_field_type")
    if not isinstance(obj["isBuyer"], bool):
        raise BadLine(where, f"field 'isBuyer' must be true or false, got {obj['isBuyer']!r}", "bad_field_type")
    commission = _decimal_field(obj, "commission", where, positive=False)
    if commission and not asset:
        raise BadLine(where, "a commission without a commissionAsset", "bad_value")
    tid = _int_field(obj, "id", where)
    time_ms = _int_field(obj, "time", where)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not EARLIEST_TRADE_MS <= time_ms <= now_ms + FUTURE_SLACK_MS:
        raise BadLine(where, f"field 'time' {time_ms} is not a Binance trade time (before 2017-07-14 or more than "
                             "a day ahead of the clock)", "absurd_value")
    px = _decimal_field(obj, "price", where, positive=True)
    if px > MAX_PRICE_FIXED:
        raise BadLine(where, f"field 'price' is absurd: {obj['price']!r}", "absurd_value")
    return Trade(line=line, symbol=symbol.upper(), id=tid, time_ms=time_ms,
                 side=SIDE_BUY if obj["isBuyer"] else SIDE_SELL, px=px,
                 qty=_decimal_field(obj, "qty", where, positive=True), commission=commission,
                 commission_asset=asset.upper())


def read_trades(path: Path, *, skipped: Skipped | None = None, assets=None,
                now_ms: int | None = None) -> dict[str, list[Trade]]:
    """Trades by symbol, each list sorted by (time, id).

    ``skipped`` None (``--strict``): the first bad line raises its ``BadLine``
    (a ``ConfigError`` naming the line). Otherwise bad lines are counted in
    ``skipped`` and left out. ``assets(symbol)`` (base, quote) raises
    ``ConfigError`` for a symbol with no known quote asset: its lines are bad
    lines too (``unknown_symbol``).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--trades", f"cannot read {path}: {exc}") from exc
    by_symbol: dict[str, list[Trade]] = {}
    seen: dict[tuple[str, int], int] = {}
    known: dict[str, tuple[str, str] | None] = {}
    for line, obj in _json_objects(raw, path.name):
        try:
            if isinstance(obj, BadLine):
                raise obj
            t = parse_trade(obj, line, path.name, now_ms)
            if assets is not None:
                if t.symbol not in known:
                    try:
                        known[t.symbol] = assets(t.symbol)
                    except ConfigError:
                        if skipped is None:
                            raise
                        known[t.symbol] = None
                if known[t.symbol] is None:
                    raise BadLine(_at(path.name, line), f"symbol {t.symbol} has no known quote asset (pass "
                                                        "--exchange-info FILE that lists it)", "unknown_symbol")
                if t.commission_asset == known[t.symbol][0] and t.commission > t.qty:
                    raise BadLine(_at(path.name, line), f"base commission {t.commission} exceeds the qty {t.qty} "
                                                        "(fixed point)", "bad_value")
            prev = seen.setdefault((t.symbol, t.id), line)
            if prev != line:
                raise BadLine(_at(path.name, line), f"duplicate trade id {t.id} for {t.symbol} (first at line {prev})",
                              "duplicate_id")
        except BadLine as bad:
            if skipped is None:
                raise
            skipped.add(bad)
            continue
        by_symbol.setdefault(t.symbol, []).append(t)
    for trades in by_symbol.values():
        trades.sort(key=lambda t: (t.time_ms, t.id))
    return by_symbol


def read_exchange_info(path: Path) -> dict[str, tuple[str, str]]:
    """symbol -> (baseAsset, quoteAsset) from an exchangeInfo body."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--exchange-info", f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(_at(path.name, exc.lineno), f"not valid JSON ({exc.msg})") from exc
    except (ValueError, RecursionError) as exc:
        raise ConfigError(path.name, _json_problem(exc)) from exc
    symbols = doc.get("symbols") if isinstance(doc, dict) else None
    if not isinstance(symbols, list):
        raise ConfigError(path.name, "not an exchangeInfo body: no 'symbols' list")
    out = {}
    for i, s in enumerate(symbols):
        if not (isinstance(s, dict) and all(isinstance(s.get(k), str) and s.get(k)
                                            for k in ("symbol", "baseAsset", "quoteAsset"))):
            raise ConfigError(f"{path.name}: symbols[{i}]", "needs string symbol, baseAsset and quoteAsset")
        out[s["symbol"].upper()] = (s["baseAsset"].upper(), s["quoteAsset"].upper())
    return out


def split_symbol(symbol: str, info: dict[str, tuple[str, str]] | None) -> tuple[str, str]:
    """(base, quote) of a symbol: exchangeInfo first, else the longest known quote suffix."""
    if info and symbol in info:
        return info[symbol]
    for q in sorted(QUOTE_SUFFIXES, key=len, reverse=True):
        if symbol.endswith(q) and len(symbol) > len(q):
            return symbol[: -len(q)], q
    hint = "it is not in the --exchange-info file" if info is not None else "pass --exchange-info FILE"
    raise ConfigError(f"symbol {symbol}", f"has no known quote-asset suffix ({hint})")


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------
def _pairs(values: list[str] | None, option: str) -> list[tuple[str, int]]:
    out = []
    for v in values or ():
        key, eq, price = v.partition("=")
        if not eq or not key:
            raise ConfigError(option, f"expects KEY=PRICE, got {v!r}")
        try:
            px = to_fixed(price.strip())
        except FixedPointError as exc:
            raise ConfigError(option, f"{v!r}: the price is not a decimal with at most 8 decimals") from exc
        if px <= 0:
            raise ConfigError(option, f"{v!r}: the price must be > 0")
        out.append((key.strip().upper(), px))
    return out


def fee_price_for(asset: str, quote: str, fee_prices: dict[tuple[str, str | None], int]) -> int | None:
    return fee_prices.get((asset, quote), fee_prices.get((asset, None)))


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def run(trades_path: Path, method: str, marks: dict[str, int] | None = None,
        fee_prices: dict[tuple[str, str | None], int] | None = None,
        exchange_info: dict[str, tuple[str, str]] | None = None, *, skipped: Skipped | None = None,
        now_ms: int | None = None) -> dict[str, dict]:
    """symbol -> figures (Decimal / None / int / names), computed by core.pnl.

    Bad lines are counted in ``skipped`` and left out; with ``skipped`` None
    the first one raises (``--strict``).
    """
    method_id = METHOD_IDS[method]
    marks = marks or {}
    fee_prices = fee_prices or {}
    by_symbol = read_trades(trades_path, skipped=skipped, assets=lambda sym: split_symbol(sym, exchange_info),
                            now_ms=now_ms)
    symbols = sorted(by_symbol)
    assets = {s: split_symbol(s, exchange_info) for s in symbols}
    others: list[str] = []
    for s in symbols:
        base, quote = assets[s]
        for t in by_symbol[s]:
            if t.commission_asset not in (base, quote, "") and t.commission_asset not in others:
                others.append(t.commission_asset)
    # capacity: each fill opens at most one lot, so this can never refuse a fill
    cap = max(len(v) for v in by_symbol.values()) + 1 if by_symbol else 1
    book = PnlBook(max(1, len(symbols)), lot_capacity=cap, n_fee_assets=max(1, len(others)))
    for i, s in enumerate(symbols):
        base, quote = assets[s]
        for t in by_symbol[s]:
            if t.commission_asset == base:
                kind, fee_id = COMM_BASE, 0
            elif t.commission_asset == quote or not t.commission_asset:
                kind, fee_id = COMM_QUOTE, 0
            else:
                kind, fee_id = COMM_OTHER, others.index(t.commission_asset)
            where = _at(trades_path.name, t.line)
            status = book.apply_fill(i, t.side, t.px, t.qty, t.commission, kind, fee_asset_id=fee_id)
            if status != PNL_OK:
                raise ConfigError(where, f"core.pnl refused the fill ({STATUS_NAMES[status]}: see core/pnl.py)")
    out = {}
    for i, s in enumerate(symbols):
        base, quote = assets[s]
        prices = {}
        for k, a in enumerate(others):
            p = fee_price_for(a, quote, fee_prices)
            if p is not None:
                prices[k] = p
        snap = book.snapshot(i, method_id, mark=marks.get(s), fee_prices=prices)
        names = {"quote": quote, "base": base, **dict(enumerate(others))}
        fees = {names[k]: v for k, v in snap["fees"].items() if v != 0}
        out[s] = {
            "base": base, "quote": quote,
            "position": snap["position"], "avg_entry": snap["avg_entry"],
            "realized_gross": snap["realized_gross"], "fees": fees, "fees_quote": snap["fees_quote"],
            "fees_unpriced": [others[k] for k in snap["fees_unpriced"]],
            "realized_net": snap["realized_net"], "unrealized": snap["unrealized"], "trades": snap["trades"],
        }
    return out


def _num(v: Decimal | None) -> str | None:
    return None if v is None else f"{v:.{FIELD_NUMBERS}f}"


def to_json(report: dict[str, dict]) -> dict:
    return {s: {"position": _num(r["position"]), "avg_entry": _num(r["avg_entry"]),
                "realized_gross": _num(r["realized_gross"]),
                "fees": {a: _num(v) for a, v in r["fees"].items()}, "fees_quote": _num(r["fees_quote"]),
                "fees_unpriced": r["fees_unpriced"], "realized_net": _num(r["realized_net"]),
                "unrealized": _num(r["unrealized"]), "trades": r["trades"], "base": r["base"], "quote": r["quote"]}
            for s, r in report.items()}


def to_text(report: dict[str, dict], method: str, marks: dict[str, int]) -> str:
    lines = []
    for s, r in report.items():
        q, b = r["quote"], r["base"]
        lines.append(f"{s}  ({b}/{q}, {method})")
        lines.append(f"  {'position':<15}{_num(r['position'])} {b}")
        lines.append(f"  {'avg_entry':<15}{_num(r['avg_entry']) or '- (flat)'}")
        lines.append(f"  {'realized_gross':<15}{_num(r['realized_gross'])} {q}")
        fees = ", ".join(f"{_num(v)} {a}" for a, v in r["fees"].items()) or "none"
        lines.append(f"  {'fees':<15}{fees}")
        note = ""
        if r["fees_unpriced"]:
            note = f"  (without {', '.join(r['fees_unpriced'])}: no --fee-price)"
        lines.append(f"  {'fees_quote':<15}{_num(r['fees_quote'])} {q}{note}")
        lines.append(f"  {'realized_net':<15}{_num(r['realized_net'])} {q}{note}")
        if r["unrealized"] is None:
            lines.append(f"  {'unrealized':<15}- (no --mark)")
        else:
            lines.append(f"  {'unrealized':<15}{_num(r['unrealized'])} {q} at {_num(Decimal(marks[s]).scaleb(-8))}")
        lines.append(f"  {'trades':<15}{r['trades']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trades", required=True, type=Path, help="myTrades history: JSON lines or a JSON array")
    ap.add_argument("--method", required=True, choices=sorted(METHOD_IDS), help="lot matching / cost method")
    ap.add_argument("--mark", action="append", metavar="SYMBOL=PRICE", help="mark price for unrealized P&L")
    ap.add_argument("--fee-price", action="append", metavar="ASSET[/QUOTE]=PRICE",
                    help="price of a commission asset (BNB) in the quote, to convert its fees")
    ap.add_argument("--exchange-info", type=Path, metavar="FILE", help="exchangeInfo JSON for base/quote assets")
    ap.add_argument("--json", action="store_true", help="one JSON object keyed by symbol")
    ap.add_argument("--strict", action="store_true", help="exit 2 on the first bad line instead of skipping it")
    return ap.parse_args(argv)


def report_skipped(skipped: Skipped, name: str) -> None:
    """The skipped lines on stderr: one message each (the first SHOW_SKIPPED), then the total by reason."""
    for msg in skipped.messages:
        print(f"pnl_report: skipped {msg}", file=sys.stderr)
    if skipped.total > len(skipped.messages):
        print(f"pnl_report: ... and {skipped.total - len(skipped.messages)} more", file=sys.stderr)
    reasons = " ".join(f"{k}={v}" for k, v in sorted(skipped.reasons.items()))
    print(f"pnl_report: {skipped.total} bad line(s) of {name} skipped, not in the figures: {reasons}",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        marks = dict(_pairs(args.mark, "--mark"))
        fee_prices = {}
        for key, px in _pairs(args.fee_price, "--fee-price"):
            asset, _, quote = key.partition("/")
            fee_prices[(asset, quote or None)] = px
        info = read_exchange_info(args.exchange_info) if args.exchange_info else None
        skipped = None if args.strict else Skipped()
        report = run(args.trades, args.method, marks, fee_prices, info, skipped=skipped)
    except ConfigError as exc:
        print(f"pnl_report: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if skipped is not None and skipped.total:
        report_skipped(skipped, args.trades.name)
    for s in sorted(set(marks) - set(report)):
        print(f"pnl_report: --mark {s}: no trades for that symbol (ignored)", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(report), indent=1))
    else:
        print(to_text(report, args.method, marks))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

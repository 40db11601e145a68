"""Binance market-stream payloads built from generated flow, byte for byte in Binance's shape.

Stream names (lower-case symbol, as Binance spells them) and their payloads:
- ``<sym>@trade``: one frame per trade (maker fill): e,E,s,t,p,q,T,m,M;
- ``<sym>@aggTrade``: one per (taker order, price): e,E,s,a,p,q,f,l,T,m,M;
- ``<sym>@bookTicker``: one per change of the top, ``u`` = book update id: u,s,b,B,a,A;
- ``<sym>@depth@100ms`` / ``<sym>@depth`` (1000 ms): diffs e,E,s,U,u,b,a with the
  final absolute qty of each level changed in the period; no frame when nothing changed.
Prices and quantities are decimal strings, ids and times are numbers.
"""

from __future__ import annotations

import re

import orjson

from processes.simulator import market_kernels as mk
from processes.simulator.market import DepthAccumulator, MarketGenerator, SymbolFlow

STREAM_RE = re.compile(
    r"^([a-z0-9]{2,30})@(trade|aggTrade|bookTicker|depth|depth@100ms|depth@1000ms"
    # accepted so replayed recordings can carry them; the generator does not produce these
    r"|depth(?:5|10|20)(?:@100ms)?|kline_(?:1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M))$"
)

KIND_TRADE = "trade"
KIND_AGG = "aggTrade"
KIND_TICKER = "bookTicker"
KIND_DEPTH100 = "depth@100ms"
KIND_DEPTH1000 = "depth"


def canonical_stream(name: str) -> str | None:
    """The internal key of a valid stream name (``x@depth@1000ms`` is ``x@depth``), else None."""
    m = STREAM_RE.match(name)
    if m is None:
        return None
    kind = m.group(2)
    if kind == "depth@1000ms":
        kind = KIND_DEPTH1000
    return f"{m.group(1)}@{kind}"


def is_depth_stream(canonical: str) -> bool:
    return "@depth" in canonical


class StreamBuilder:
    """Turns generator steps into ordered (stream, payload) frames for the streams someone wants."""

    def __init__(self, gen: MarketGenerator):
        self.gen = gen
        self.tick_ms = gen.tick_ms
        self._ticks_100 = 100 // gen.tick_ms
        self._ticks_1000 = 1000 // gen.tick_ms
        self._tick_no = 0
        self._acc100 = {s: DepthAccumulator() for s in gen.books}
        self._acc1000 = {s: DepthAccumulator() for s in gen.books}
        self._lower = {s: s.lower() for s in gen.books}
        self.frames_built = 0

    def build(self, flows: list[SymbolFlow], now_ms: int, wanted: set[str]) -> list[tuple[str, bytes]]:
        """Frames for one generator step, in send order; ``wanted`` = canonical names subscribed."""
        out: list[tuple[str, bytes]] = []
        self._tick_no += 1
        flush100 = self._tick_no % self._ticks_100 == 0
        flush1000 = self._tick_no % self._ticks_1000 == 0
        for flow in flows:
            sym = flow.symbol
            low = self._lower[sym]
            book = self.gen.books[sym]
            ps, qs = book.price_str, book.qty_str
            self._acc100[sym].add(flow.changes)
            self._acc1000[sym].add(flow.changes)
            name = f"{low}@trade"
            if name in wanted and flow.trades.shape[0]:
                for tid, p, q, bm, _agg, t in flow.trades.tolist():
                    out.append((name, (
                        f'{{"e":"trade","E":{now_ms},"s":"{sym}","t":{tid},"p":"{ps(p)}","q":"{qs(q)}",'
                        f'"T":{t},"m":{"true" if bm else "false"},"M":true}}'
                    ).encode()))  # fmt: skip
            name = f"{low}@aggTrade"
            if name in wanted and flow.trades.shape[0]:
                rows = flow.trades.tolist()
                i = 0
                while i < len(rows):
                    tid, p, q, bm, agg, t = rows[i]
                    j = i + 1
                    qsum = q
                    while j < len(rows) and rows[j][mk.TRD_AGG] == agg:
                        qsum += rows[j][mk.TRD_QTY]
                        j += 1
                    last_tid = rows[j - 1][mk.TRD_ID]
                    out.append((name, (
                        f'{{"e":"aggTrade","E":{now_ms},"s":"{sym}","a":{agg},"p":"{ps(p)}","q":"{qs(qsum)}",'
                        f'"f":{tid},"l":{last_tid},"T":{t},"m":{"true" if bm else "false"},"M":true}}'
                    ).encode()))  # fmt: skip
                    i = j
            name = f"{low}@bookTicker"
            if name in wanted and flow.tops.shape[0]:
                for u, b, bq, a, aq in flow.tops.tolist():
                    out.append((name, (
                        f'{{"u":{u},"s":"{sym}","b":"{ps(b)}","B":"{qs(bq)}","a":"{ps(a)}","A":"{qs(aq)}"}}'
                    ).encode()))  # fmt: skip
        if flush100 or flush1000:
            for sym in self.gen.books:
                low = self._lower[sym]
                book = self.gen.books[sym]
                for flush, acc, name in (
                    (flush100, self._acc100[sym], f"{low}@depth@100ms"),
                    (flush1000, self._acc1000[sym], f"{low}@depth"),
                ):
                    if not flush:
                        continue
                    diff = acc.take()
                    if diff is None or name not in wanted:
                        continue
                    out.append((name, depth_payload(book, sym, now_ms, diff)))
        self.frames_built += len(out)
        return out


def depth_payload(book, sym: str, now_ms: int, diff) -> bytes:
    first_u, last_u, bids, asks = diff
    ps, qs = book.price_str, book.qty_str
    return orjson.dumps(
        {
            "e": "depthUpdate",
            "E": now_ms,
            "s": sym,
            "U": first_u,
            "u": last_u,
            "b": [[ps(p), qs(q)] for p, q in bids.tolist()],
            "a": [[ps(p), qs(q)] for p, q in asks.tolist()],
        }
    )


def snapshot_payload(book, limit: int) -> bytes:
    """``GET /api/v3/depth`` body; ``lastUpdateId`` is the book's update id right now."""
    bids, asks = book.levels(limit)
    ps, qs = book.price_str, book.qty_str
    return orjson.dumps(
        {
            "lastUpdateId": book.update_id,
            "bids": [[ps(p), qs(q)] for p, q in bids],
            "asks": [[ps(p), qs(q)] for p, q in asks],
        }
    )

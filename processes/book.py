"""Book worker — TEMPORARY PASS-THROUGH (ringtrader issue 3).

PASS-THROUGH: the real book worker (L2 books, sequence sync, bars; issue 5)
replaces this module. Until then each ``md`` record becomes one ``book``
record that carries its trace (recv_ns, in_pub_ns = md pub_ns): trades as
BK_TRADE, everything else as a BK_TOP marked BOOK_INVALID (no book is kept,
so nothing downstream may act on it). Records the ``md->book`` hop.
"""

from __future__ import annotations

import numpy as np

from core.records import BK_TOP, BK_TRADE, BOOK_INVALID, MD_AGG_TRADE, MD_TRADE
from processes.runtime import relay


def _convert(src, dst) -> None:
    trade = (src["kind"] == MD_TRADE) | (src["kind"] == MD_AGG_TRADE)
    dst["recv_ns"] = src["recv_ns"]
    dst["in_pub_ns"] = src["pub_ns"]
    dst["exch_ms"] = src["exch_ms"]
    dst["last_update_id"] = src["last_id"]
    dst["symbol"] = src["symbol"]
    dst["kind"] = np.where(trade, BK_TRADE, BK_TOP)
    dst["state"] = BOOK_INVALID
    dst["flags"] = src["flags"]
    dst["tr_px"] = np.where(trade, src["price"], 0)
    dst["tr_qty"] = np.where(trade, src["qty"], 0)


def run(config, ctx) -> None:
    inp, out = ctx.inputs["md"], ctx.outputs["book"]
    hop = ctx.latency.hop("md->book")
    batch = ctx.process.batch
    ctx.ready()
    while not ctx.should_stop():
        n = relay(ctx, inp, out, _convert, hop, batch)
        ctx.idle.idle(n)
        ctx.heartbeat()

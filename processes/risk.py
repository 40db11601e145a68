"""Risk worker — PASS-THROUGH until the risk issue lands (ringtrader issue 3).

PASS-THROUGH: one ORDER_REQUEST per SIGNAL with ``action = ACTION_TRACE_PROBE``
(0: not ORD_NEW/ORD_CANCEL/ORD_CANCEL_ALL, so no venue code acts on it) and
zero quantity, carrying the trace; ``book`` and ``reports`` records are
consumed and only their arrival latency is recorded. Hops: ``signal->risk``,
``book->risk``, ``reports->risk``. The risk issue replaces this with limits,
P&L, stops and the breaker.
"""

from __future__ import annotations

from processes.runtime import relay, sink

ACTION_TRACE_PROBE = 0


class _Converter:
    def __init__(self):
        self.next_id = 1

    def __call__(self, src, dst) -> None:
        n = len(src)
        dst["recv_ns"] = src["recv_ns"]
        dst["in_pub_ns"] = src["pub_ns"]
        dst["exch_ms"] = src["exch_ms"]
        dst["client_order_id"] = range(self.next_id, self.next_id + n)
        self.next_id += n
        dst["signal_id"] = src["signal_id"]
        dst["symbol"] = src["symbol"]
        dst["action"] = ACTION_TRACE_PROBE


def run(config, ctx) -> None:
    signals, book, reports = ctx.inputs["signals"], ctx.inputs["book"], ctx.inputs["reports"]
    out = ctx.outputs["orders"]
    h_sig, h_book, h_rep = ctx.latency.hop("signal->risk"), ctx.latency.hop("book->risk"), ctx.latency.hop("reports->risk")
    convert = _Converter()
    batch = ctx.process.batch
    ctx.ready()
    while not ctx.should_stop():
        n = sink(ctx, book, h_book, batch)
        n += relay(ctx, signals, out, convert, h_sig, batch)
        n += sink(ctx, reports, h_rep, batch)
        ctx.idle.idle(n)
        ctx.heartbeat(orders=convert.next_id - 1)

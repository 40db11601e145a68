"""Execution worker — PASS-THROUGH until the execution issue lands (ringtrader issue 3).

PASS-THROUGH: one EXEC_REPORT per ORDER_REQUEST with ``exec_type =
EXEC_TRACE_PROBE`` (0: not an EX_* venue outcome), carrying the trace; no
order reaches any venue. ``book`` records are consumed for their arrival
latency. Hops: ``risk->execution`` (report pub - order pub), ``book->execution``
and ``end_to_end`` (report pub_ns - recv_ns: frame received to order handed
on). The execution issue replaces this with the REST/user-stream client and
the paper/sim fill model.
"""

from __future__ import annotations

from processes.runtime import relay, sink

EXEC_TRACE_PROBE = 0


def _convert(src, dst) -> None:
    dst["recv_ns"] = src["recv_ns"]
    dst["in_pub_ns"] = src["pub_ns"]
    dst["client_order_id"] = src["client_order_id"]
    dst["order_id"] = -1
    dst["trade_id"] = -1
    dst["symbol"] = src["symbol"]
    dst["exec_type"] = EXEC_TRACE_PROBE


def run(config, ctx) -> None:
    orders, book = ctx.inputs["orders"], ctx.inputs["book"]
    out = ctx.outputs["reports"]
    h_ord, h_book, h_e2e = ctx.latency.hop("risk->execution"), ctx.latency.hop("book->execution"), ctx.latency.hop("end_to_end")
    batch = ctx.process.batch

    def end_to_end(src, dst):
        h_e2e.record_many(dst["pub_ns"] - dst["recv_ns"])

    ctx.ready()
    while not ctx.should_stop():
        n = sink(ctx, book, h_book, batch)
        n += relay(ctx, orders, out, _convert, h_ord, batch, after=end_to_end)
        ctx.idle.idle(n)
        ctx.heartbeat(reports=out.published)

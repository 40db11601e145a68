"""Signal worker — PASS-THROUGH until the signal issue lands (ringtrader issue 3).

PASS-THROUGH: one SIGNAL per ``book`` record, SIDE_FLAT with zero target
quantity and reason ``REASON_TRACE_PROBE`` (a trace probe, never a trading
decision), carrying the trace (recv_ns, in_pub_ns = book pub_ns). Records
the ``book->signal`` hop. The signal issue replaces the conversion with
features, indicators and the configured strategy.
"""

from __future__ import annotations

from core.records import SIDE_FLAT
from processes.runtime import relay

REASON_TRACE_PROBE = 0xFFFF  # not a strategy reason: marks pass-through records


class _Converter:
    def __init__(self):
        self.next_id = 1

    def __call__(self, src, dst) -> None:
        n = len(src)
        dst["recv_ns"] = src["recv_ns"]
        dst["in_pub_ns"] = src["pub_ns"]
        dst["exch_ms"] = src["exch_ms"]
        dst["signal_id"] = range(self.next_id, self.next_id + n)
        self.next_id += n
        dst["symbol"] = src["symbol"]
        dst["side"] = SIDE_FLAT
        dst["reason"] = REASON_TRACE_PROBE


def run(config, ctx) -> None:
    inp, out = ctx.inputs["book"], ctx.outputs["signals"]
    hop = ctx.latency.hop("book->signal")
    convert = _Converter()
    batch = ctx.process.batch
    ctx.ready()
    while not ctx.should_stop():
        n = relay(ctx, inp, out, convert, hop, batch)
        ctx.idle.idle(n)
        ctx.heartbeat(signals=convert.next_id - 1)

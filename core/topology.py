"""The pipeline's topology, derived once from ``RINGS``, ``STAGES`` and the ``placement``.

Everything that used to be restated by hand (the shutdown order, where an
event goes, which rings a process attaches, the latency hop names) comes
from here, so a new ring or a new placement changes one table.

Hop names (every stage records them, the supervisor and
``scripts/latency_profile.py`` read them):

- ``feed``: md.pub_ns - md.recv_ns (frame received -> md record published);
- ``<ring>-><stage>`` for every consumer of every ring: the consumer's output
  pub_ns - the input record's pub_ns when the input causes an output
  (``md->book``, ``book->signal``, ``signals->risk``, ``orders->execution``),
  else consumption time - pub_ns (``book->risk``, ``book->execution``,
  ``reports->risk``);
- ``end_to_end``: the execution report's pub_ns - recv_ns (tick to order
  handed to the venue or fill model).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import EVENT_ROUTES, HOSTED_CONSUMERS, RINGS, SIMULATOR, STAGES, SystemConfig


def ring_hop(ring: str, consumer: str) -> str:
    return f"{ring}->{consumer}"


#: every latency hop of the pipeline's stages, in pipeline order (the journal, a hosted consumer off the hot
#: path, is not one)
HOPS = ("feed",) + tuple(ring_hop(r, c) for r, (_, _, cons) in RINGS.items() for c in cons
                         if c not in HOSTED_CONSUMERS) + ("end_to_end",)
#: execution against a venue (sim/live): tick received -> the order's bytes on the socket; order record
#: published by risk -> bytes on the socket; bytes on the socket -> the venue's answer (the ack round trip)
VENUE_HOPS = ("tick_to_order", "order_to_wire", "ack_rtt")


@dataclass(frozen=True)
class ProcessRings:
    """The ring ends one process attaches."""

    inputs: tuple[tuple[str, str], ...]  # (ring, consuming stage) for every stage of the process
    outputs: tuple[tuple[str, str], ...]  # (ring, producing stage)
    external: tuple[str, ...]  # input rings produced by another process (what its idle strategy waits on)
    internal: tuple[str, ...]  # rings produced and consumed inside the process (drained by its duty cycle)


def process_rings(cfg: SystemConfig, process: str) -> ProcessRings:
    stages = set(cfg.placement[process].stages)
    inputs, outputs, external, internal = [], [], [], []
    for ring, (_dtype, producer, consumers) in RINGS.items():
        mine = [c for c in consumers if c in stages]
        for c in mine:
            inputs.append((ring, c))
        if producer in stages:
            outputs.append((ring, producer))
        if mine:
            (internal if producer in stages else external).append(ring)
    return ProcessRings(tuple(inputs), tuple(outputs), tuple(external), tuple(internal))


def stage_processes(cfg: SystemConfig) -> list[str]:
    """Processes that host stages, in pipeline order of their first stage."""
    return sorted((n for n, p in cfg.placement.items() if p.stages), key=lambda n: STAGES.index(cfg.placement[n].stages[0]))


def shutdown_plan(cfg: SystemConfig) -> list[tuple[str, tuple[str, ...]]]:
    """``[(process, rings to drain before stopping it)]``: producers stop before their consumers.

    A process is stopped once every ring it reads from another process has
    been drained; the rings inside a process are drained by its own duty
    cycle before it exits. The simulator (the venue) goes last.
    """
    plan = [(name, process_rings(cfg, name).external) for name in stage_processes(cfg)]
    if SIMULATOR in cfg.placement:
        plan.append((SIMULATOR, ()))
    return plan


def event_route(cfg: SystemConfig, event_type: str) -> str | None:
    """The process that must receive a stage's ``event_type`` as a command (``EVENT_ROUTES``), or None."""
    stage = EVENT_ROUTES.get(event_type)
    return None if stage is None else cfg.process_of(stage).name


def consumer_index(ring: str, stage: str) -> int:
    return RINGS[ring][2].index(stage)

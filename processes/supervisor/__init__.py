"""Supervisor: creates the rings, spawns and pins the processes, watches them, shuts down in order.

``python -m processes.supervisor --config PATH [--duration S] [--summary-json PATH] [--log-file PATH]``

Where things are (a newcomer's map):

==================  ============================================================
``cli.py``          the command line: config (exit 2 on an error), log sink, run, summary
``supervisor.py``   ``Supervisor``: rings, spawn/pin, the go, the run loop, metrics
``watch.py``        events, heartbeats, exit codes, restarts with backoff, event routing
``spare.py``        the warm spare process that replaces a crashed one in milliseconds
``shutdown.py``     the orderly stop, derived from the topology; kill on a second signal
``summary.py``      the exit summary (text, JSON) and the metrics view
``state.py``        ``Proc`` / ``Spare`` bookkeeping, counter folding across restarts
``logsink.py``      the merged JSON log stream
``statusview.py``   the live status table (a terminal, ``ctl.sh status``)
``control.py``      the operator's unix socket (halt, resume, reduce-only, flatten, status)
``sdnotify.py``     systemd's notify protocol (READY, WATCHDOG, STATUS, STOPPING)
``alerts.py``       alert webhooks, from a thread that never blocks trading
==================  ============================================================

Lifecycle
---------
1. Load the config (``ConfigError`` -> message naming the key, exit 2); in
   sim mode the simulator validates its own section.
2. Remove segments of this instance left by a killed run (owner pid gone),
   refuse to start if a live run of the same instance holds them, create the
   five rings (``core.config.RINGS``).
3. Spawn the processes of the ``placement`` with the ``spawn`` start method
   (the simulator first in ``sim`` mode, then the stage processes, last
   stage first), pin each to its CPUs, apply SCHED_FIFO where configured
   (mlockall happens inside the process), and wait for every ready event
   (``supervisor.ready_timeout_s``, sized for a cold numba compile; on a cold
   cache it says ``compiling numba kernels (first run only, ~N s)``; on
   timeout: an error naming the processes, orderly exit, code 1). Then the
   go: every process starts its duty cycle, and only from then on do
   heartbeats count against it.
4. Watch (``watch.py``): a process that exits, raises or stops heartbeating
   is restarted with every stage it hosts; the replacement is the spare when
   one is ready (``spare.py``). Metrics (``metrics.enabled``):
   ``processes.metrics`` serves Prometheus text from the ring headers and a
   view of the processes rebuilt twice a second.
5. SIGINT/SIGTERM (or ``--duration`` elapsed) -> orderly shutdown
   (``shutdown.py``); exit 0; every segment unlinked. A second signal kills
   what is left at once (exit 1).
6. Prints a summary (``summary.py``): records through each ring, drops/laps/
   stalls, processes with restarts (``recovery_ms`` = crash detected ->
   replacement ready, ``crash_to_ready_ms`` = exit seen (or last heartbeat
   of a hung process) -> ready) and idle fraction, stage counters, spares,
   per-hop and end-to-end latency percentiles from the records' trace fields;
   ``--summary-json`` writes it as JSON too.

Log stream: one JSON object per line (``ts`` ISO UTC, ``mono_ns``, ``proc``,
``level``, ``msg``, extras) from the supervisor and every process, to stdout
and optionally a file.

Exit codes: 0 clean, 1 start-up failure / too many restarts / forced, 2 config error.
"""

# Lazy: ``python -m processes.supervisor`` imports this package before the CLI has set NUMBA_CACHE_DIR
# (core.numba_cache), and the modules below import numba-compiled code.
_EXPORTS = {
    "LogSink": "processes.supervisor.logsink", "SinkHandler": "processes.supervisor.logsink",
    "format_summary": "processes.supervisor.summary", "Supervisor": "processes.supervisor.supervisor",
    "EXIT_OK": "processes.supervisor.supervisor", "EXIT_FAIL": "processes.supervisor.supervisor",
    "EXIT_CONFIG": "processes.supervisor.supervisor",
}


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'processes.supervisor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)


def main(argv=None) -> int:
    from processes.supervisor.cli import main as _main

    return _main(argv)


__all__ = [*_EXPORTS, "main"]

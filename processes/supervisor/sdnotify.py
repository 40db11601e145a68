"""What the supervisor tells systemd: the sd_notify protocol, spoken here without python-systemd.

Protocol (``sd_notify(3)``)
---------------------------
One ``AF_UNIX`` datagram per message to ``$NOTIFY_SOCKET``, newline-separated
``KEY=VALUE`` assignments. The address is a path, or ``@name`` for a name in
the abstract namespace (sent as a leading NUL byte). ``$WATCHDOG_USEC`` is the
unit's ``WatchdogSec=`` in microseconds; ``$WATCHDOG_PID``, when set, names the
process it is meant for (another pid's watchdog is not ours to ping).

When the supervisor says what
-----------------------------
=====================================  ===========================================================
start-up phases (``phase``)            ``STATUS=starting: ...`` + ``EXTEND_TIMEOUT_USEC`` = the
                                       phase's own bound (a cold numba compile, waiting for ready):
                                       the unit's ``TimeoutStartSec=`` covers a warm start, the
                                       config's ``ready_timeout_s`` a cold one, one number each
``READY=1`` (``ready``)                every process said ready, got the go and the operator's
                                       socket takes commands: the pipeline flows. ``systemctl
                                       start`` returns here, not when the interpreter started
``WATCHDOG=1`` (``tick``)              from the watch loop after each complete pass, at most every
                                       ``WATCHDOG_USEC / 2``. Not from a thread: a thread would go on
                                       pinging for a loop stuck in a pass, a blocking call or a lock;
                                       the loop stops pinging by itself, and systemd then aborts
                                       the service (``WatchdogSignal=``, SIGABRT) and restarts it
``STATUS=running: ...`` (``tick``)     processes up, restarts, records through the md ring and
                                       their rate, uptime; rebuilt every ``STATUS_PERIOD_S`` and
                                       sent when it changed (``systemctl status`` shows it)
``STOPPING=1`` (``stopping``)          the orderly shutdown begins, with ``STATUS=stopping: why``
                                       and ``EXTEND_TIMEOUT_USEC`` = its bound from the config
=====================================  ===========================================================

systemd enforces the watchdog only between ``READY=1`` and the stop (its
``service_set_state`` stops the timer outside the running states), so no ping
is needed, or sent, while starting or draining: ``TimeoutStartSec=`` and
``TimeoutStopSec=`` (extended as above) bound those.

Cost and failures
-----------------
With ``NOTIFY_SOCKET`` unset (no systemd, the tests, a shell) every method
returns at its first line: no socket, no status line built. The socket is
non-blocking: a send never waits on systemd (a full queue is a failed send).
A failed send is counted (``failures``) and logged once (the first); it never
raises into the watch loop. The three variables are removed from
``os.environ`` when read (``sd_notify``'s ``unset_environment``): the
processes the supervisor spawns are not the service's main process
(``NotifyAccess=main`` ignores them) and must not believe a watchdog waits on
them.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("ringtrader.supervisor")

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_PERIOD_S = 1.0  # the STATUS= line is rebuilt this often (sent only when it changed)
SLACK_S = 30.0  # added to each EXTEND_TIMEOUT_USEC: the steps between two messages (spawns, joins)


def notify_address(value: str) -> bytes | None:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address: a path, or ``@name`` -> ``b"\\0name"`` (abstract).

    ``None`` when unset or of a kind this module does not speak (``vsock:...``; logged by the caller).
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def watchdog_period_s(environ, pid: int | None = None) -> float | None:
    """Seconds between pings (``WATCHDOG_USEC / 2``), or None: no watchdog, or another pid's."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("sd_notify: WATCHDOG_USEC=%r is not an integer; no watchdog pings", usec)
        return None
    return value / 2e6 if value > 0 else None


def running_status(sup, now: float, last: tuple[float, int] | None) -> tuple[str, tuple[float, int]]:
    """The one-line ``STATUS=`` of a running supervisor, and the (time, md published) its rate starts from.

    ``running: 2/2 processes up, 0 restarts, md 51234 records (1002/s), up 51 s``; a process not
    running is named with its state (``degraded: 1/2 processes up (engine backoff), ...``).
    """
    procs = sup.procs.values()
    down = [f"{p.name} {p.state}" for p in procs if p.state != "running"]
    restarts = sum(len(p.restarts) for p in procs)
    md = sup.rings.get("md")
    published = md.published if md is not None else 0
    rate = ""
    if last is not None and now > last[0]:
        rate = f" ({(published - last[1]) / (now - last[0]):.0f}/s)"
    head = "running" if not down else "degraded"
    line = (f"{head}: {len(sup.procs) - len(down)}/{len(sup.procs)} processes up"
            f"{' (' + ', '.join(down) + ')' if down else ''}, {restarts} restart{'' if restarts == 1 else 's'}, "
            f"md {published} records{rate}, up {now - sup.t_start:.0f} s")
    return line, (now, published)


def stop_reason(sup) -> str:
    """Why the run is ending, for ``STATUS=stopping: ...``."""
    if sup.stop_signals:
        return "stop requested by signal"
    if not sup.started:
        return "start-up failed" if sup.exit_code else "stopped while starting"
    if sup.exit_code:
        return f"too many restarts (exit {sup.exit_code})"
    return "run finished"


def shutdown_bound_s(sup) -> float:
    """An upper bound of the orderly shutdown from the config: per process its drain, stop and kill waits."""
    sv = sup.cfg.supervisor
    per = sv.drain_timeout_s * 2 + sv.stop_timeout_s + 2.0  # drain its inputs, (its inner rings), stop, kill+join
    return len(sup.procs) * per + 2.0 + SLACK_S  # + the spare's stop


class SdNotifier:
    """The supervisor's sd_notify client (see the module docstring). Inert when ``NOTIFY_SOCKET`` is unset."""

    def __init__(self, environ=None, *, clock=time.monotonic, describe=running_status):
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = notify_address(raw)
        self.watchdog_s = watchdog_period_s(env) if self.address is not None else None
        for k in ENV_VARS:
            env.pop(k, None)
        if raw and self.address is None:
            log.warning("sd_notify: NOTIFY_SOCKET=%r is not a unix socket path or @name; not notifying systemd", raw)
        self.sent = 0  # datagrams sent
        self.failures = 0  # sends that failed (the first is logged)
        self.pings = 0  # WATCHDOG=1 sent
        self._clock = clock
        self._describe = describe
        self._sock: socket.socket | None = None
        self._ready = False
        self._stopping = False
        self._next_ping = 0.0
        self._next_status = 0.0
        self._status = ""
        self._rate_from: tuple[float, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # -- the messages -----------------------------------------------------------------

    def phase(self, text: str, bound_s: float) -> None:
        """A start-up phase that may take up to ``bound_s``: STATUS, and systemd's start timeout extended."""
        if self.address is None or self._ready:
            return
        self._send(f"EXTEND_TIMEOUT_USEC={int((bound_s + SLACK_S) * 1e6)}\nSTATUS=starting: {_one_line(text)}")

    def ready(self, sup) -> None:
        """The pipeline flows: READY=1 with the first running status; the watchdog pings start now."""
        if self.address is None:
            return
        now = self._clock()
        self._status, self._rate_from = self._describe(sup, now, None)
        self._ready = True
        self._next_status = now + STATUS_PERIOD_S
        self._next_ping = now  # the first ping on the loop's first pass
        self._send(f"READY=1\nSTATUS={_one_line(self._status)}")

    def tick(self, sup) -> None:
        """The watch loop's hook, called after each complete pass: WATCHDOG=1 when due, STATUS when changed."""
        if self.address is None or not self._ready or self._stopping:
            return
        now = self._clock()
        if self.watchdog_s is not None and now >= self._next_ping:
            self._next_ping = now + self.watchdog_s
            if self._send("WATCHDOG=1"):
                self.pings += 1
        if now >= self._next_status:
            self._next_status = now + STATUS_PERIOD_S
            line, self._rate_from = self._describe(sup, now, self._rate_from)
            if line != self._status:
                self._status = line
                self._send(f"STATUS={_one_line(line)}")

    def stopping(self, sup) -> None:
        """The orderly shutdown begins: STOPPING=1, why, and its bound; no more pings."""
        if self.address is None or self._stopping:
            return
        self._stopping = True
        self._send(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={int(shutdown_bound_s(sup) * 1e6)}\n"
                   f"STATUS=stopping: {_one_line(stop_reason(sup))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the socket ---------------------------------------------------------------------

    def _send(self, message: str) -> bool:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full queue on systemd's side fails the send, never waits
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("sd_notify: cannot send to %s: %s (further failures are counted, not logged)",
                            _show(self.address), exc, extra={"notify": message.split("\n", 1)[0]})
            return False
        self.sent += 1
        return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _show(address: bytes | None) -> str:
    if address is None:
        return "(none)"
    return "@" + address[1:].decode(errors="replace") if address[:1] == b"\0" else address.decode(errors="replace")

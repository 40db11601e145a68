"""The supervisor's sd_notify client: READY when the pipeline flows, watchdog pings from the watch loop,
STATUS lines, STOPPING on SIGTERM, against a real unix datagram socket standing in for systemd.

The first test runs the real supervisor (``python -m processes.supervisor``, synthetic source, no
simulator: ``test_supervisor.small_config``) with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, as
systemd would start it. The others drive ``SdNotifier`` directly.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from types import SimpleNamespace


from processes.supervisor.sdnotify import SdNotifier, notify_address, running_status, watchdog_period_s

from test_supervisor import Run, instance, msg, small_config  # noqa: F401

WATCHDOG_USEC = 2_000_000  # pings every 1 s


class NotifyListener:
    """A bound ``AF_UNIX`` datagram socket (what systemd listens on), each message kept with its arrival time."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[int, str]] = []  # (CLOCK_MONOTONIC ns at arrival, datagram)
        self._stop = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic_ns(), data.decode()))

    def wait_for(self, line: str, timeout: float) -> int:
        """Arrival time of the first message holding the assignment ``line``."""
        deadline = time.monotonic() + timeout
        while True:
            for t, m in list(self.messages):
                if line in m.split("\n"):
                    return t
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {line} within {timeout} s; got {[m for _, m in self.messages]}")

    def close(self):
        self._stop = True
        self._t.join(timeout=2)
        self.sock.close()


def arrivals(messages, line: str) -> list[int]:
    return [t for t, m in messages if line in m.split("\n")]


def statuses(messages) -> list[tuple[int, str]]:
    return [(t, a[len("STATUS="):]) for t, m in messages for a in m.split("\n") if a.startswith("STATUS=")]


def test_supervisor_says_ready_once_the_pipeline_flows_pings_the_watchdog_and_says_stopping_on_sigterm(
        tmp_path, instance):  # noqa: F811 - the fixture imported above
    # a short path: tmp_path can exceed the 108 bytes of a unix socket address
    sock_dir = tempfile.mkdtemp(prefix="rt-sd-", dir="/tmp")
    path = os.path.join(sock_dir, "notify")
    listener = NotifyListener(path)
    # no spare warming during the pings; a cold numba cache (RINGTRADER_TEST_NO_WARM=1) is compiled at start
    cfg = small_config(instance, **{"supervisor.spare_worker": False, "supervisor.ready_timeout_s": 420})
    run = Run(tmp_path, cfg, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        t_ready = listener.wait_for("READY=1", timeout=480)
        time.sleep(3.6)  # ~4 pings
        t_term = time.monotonic_ns()
        run.p.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        t_exit = time.monotonic_ns()
    finally:
        run.kill_group()
        listener.close()
        os.unlink(path)
        os.rmdir(sock_dir)
    msgs = listener.messages

    # READY=1: after the supervisor logged "all processes ready" (the go was sent), once
    ready_ev = next(ev for ev in run.events if msg("all processes ready")(ev))
    assert t_ready > ready_ev["mono_ns"]
    assert len(arrivals(msgs, "READY=1")) == 1
    # before it, the start-up phases: STATUS=starting with systemd's start timeout extended to the phase's bound
    before = [m for t, m in msgs if t < t_ready]
    assert any("STATUS=starting: waiting for 2 processes to be ready" in m.split("\n") for m in before), before
    assert all(re.search(r"^EXTEND_TIMEOUT_USEC=\d+$", m, re.M) for m in before), before

    # WATCHDOG=1: none before READY or after STOPPING; every WATCHDOG_USEC/2 in between
    t_stopping = listener.wait_for("STOPPING=1", timeout=0)
    pings = arrivals(msgs, "WATCHDOG=1")
    assert pings and all(t_ready <= t < t_stopping for t in pings), (t_ready, pings, t_stopping)
    assert len(pings) >= 3, pings
    gaps_s = [(b - a) / 1e9 for a, b in zip(pings, pings[1:])]
    period_s = WATCHDOG_USEC / 2e6
    # not faster than the period (arrival stamps jitter a little), never late enough to trip systemd's watchdog
    assert all(period_s * 0.75 <= g < WATCHDOG_USEC / 1e6 for g in gaps_s), gaps_s

    # STATUS=: the running summary with both processes up and records flowing
    running = [s for t, s in statuses(msgs) if s.startswith("running:")]
    assert running, statuses(msgs)
    assert all(s.startswith("running: 2/2 processes up, 0 restarts, md ") for s in running), running
    assert int(re.search(r"md (\d+) records", running[-1]).group(1)) > 0, running

    # STOPPING=1: after the SIGTERM, before the exit, saying why
    assert t_term < t_stopping < t_exit
    stop_msg = next(m for t, m in msgs if t == t_stopping)
    assert "STATUS=stopping: stop requested by signal" in stop_msg.split("\n")


def test_an_abstract_socket_name_is_reached_and_the_variables_are_taken_out_of_the_environment():
    name = f"ringtrader-test-{uuid.uuid4().hex[:8]}"
    assert notify_address("@" + name) == b"\0" + name.encode()
    listener = NotifyListener("\0" + name)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    try:
        sd = SdNotifier(env, describe=lambda sup, now, last: ("running: test", None))
        assert sd.enabled and sd.watchdog_s == 2.0
        assert env == {"KEEP": "1"}  # the processes it spawns do not inherit a watchdog that is not theirs
        sd.ready(None)
        sd.tick(None)
        listener.wait_for("WATCHDOG=1", timeout=5)
    finally:
        listener.close()
    assert [m for _, m in listener.messages] == ["READY=1\nSTATUS=running: test", "WATCHDOG=1"]
    assert sd.sent == 2 and sd.failures == 0


def test_without_notify_socket_nothing_is_built_or_sent():
    def describe(*_):
        raise AssertionError("the status line is built only for systemd")

    sd = SdNotifier({}, describe=describe)
    assert not sd.enabled
    sd.phase("compiling", 300)
    sd.ready(None)
    for _ in range(3):
        sd.tick(None)
    sd.stopping(None)
    assert sd._sock is None and sd.sent == 0 and sd.failures == 0
    assert not SdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled  # a kind not spoken here: off, not an error


def test_a_send_that_fails_is_counted_and_logged_once_never_raised(caplog):
    gone = os.path.join(tempfile.gettempdir(), f"rt-sd-{uuid.uuid4().hex[:8]}")  # nobody listens there
    clock = [0.0]
    sd = SdNotifier({"NOTIFY_SOCKET": gone, "WATCHDOG_USEC": "1000000"}, clock=lambda: clock[0],
                    describe=lambda sup, now, last: (f"running {now}", None))
    with caplog.at_level(logging.WARNING, logger="ringtrader.supervisor"):
        sd.ready(None)
        for i in range(5):
            clock[0] = float(i + 1)
            sd.tick(None)
    assert sd.sent == 0 and sd.pings == 0
    assert sd.failures == 11  # READY, then per tick a ping and a changed STATUS
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1 and gone in warnings[0].getMessage()


def test_watchdog_pings_follow_the_loop_every_half_period_and_stop_with_it():
    clock = [100.0]
    sd = SdNotifier({"NOTIFY_SOCKET": "@unused", "WATCHDOG_USEC": "2000000"}, clock=lambda: clock[0],
                    describe=lambda sup, now, last: ("same", None))
    sent = []
    sd._send = lambda m: sent.append((clock[0], m)) or True
    sd.tick(None)
    assert sent == []  # not before READY: systemd does not watch a starting service
    sd.ready(None)
    for t in (100.0, 100.4, 100.9, 101.0, 101.5, 102.2, 102.3):  # passes of a healthy loop
        clock[0] = t
        sd.tick(None)
    clock[0] = 110.0  # the loop was stuck from 102.3 on: nothing was sent meanwhile
    assert [t for t, m in sent if m == "WATCHDOG=1"] == [100.0, 101.0, 102.2]
    sd.stopping(SimpleNamespace(stop_signals=1, started=True, exit_code=0, procs={"feed": 0},
                                cfg=SimpleNamespace(supervisor=SimpleNamespace(drain_timeout_s=2, stop_timeout_s=5))))
    assert sent[-1][1].startswith("STOPPING=1\nEXTEND_TIMEOUT_USEC=")
    sd.tick(None)
    assert sent[-1][1].startswith("STOPPING=1")  # no ping after STOPPING: systemd no longer watches
    # a WATCHDOG_PID naming another process: that watchdog is not ours to ping
    assert watchdog_period_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=4242) is None
    assert watchdog_period_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, pid=4242) == 1.0


def test_the_running_status_names_processes_that_are_down_and_the_md_rate():
    procs = {"feed": SimpleNamespace(name="feed", state="running", restarts=[1.0]),
             "engine": SimpleNamespace(name="engine", state="backoff", restarts=[])}
    sup = SimpleNamespace(procs=procs, rings={"md": SimpleNamespace(published=3000)}, t_start=0.0)
    line, mark = running_status(sup, 12.0, (10.0, 1000))
    assert line == "degraded: 1/2 processes up (engine backoff), 1 restart, md 3000 records (1000/s), up 12 s"
    assert mark == (12.0, 3000)

"""Operator control: the supervisor's unix socket (the kill switch) and its client, ``scripts/ctl.sh``.

Protocol
--------
A unix stream socket; newline-delimited JSON, one request line -> one reply
line, several requests per connection allowed (answered in order)::

    -> {"cmd": "halt"}           halt | resume | reduce-only | flatten | status
    <- {"ok": true, "cmd": "halt", "sent_to": "engine", "confirmed": true, "state": "HALTED", ...}
    <- {"ok": false, "error": "unknown command 'hat' (known: halt, resume, reduce-only, flatten, status)"}

``halt``/``resume``/``reduce-only``/``flatten`` become the risk stage's
commands (``halt``, ``resume``, ``reduce_only``, ``flatten``: see
``processes.risk``) on the control queue of the process hosting ``risk``.
The reply waits (at most ``CONFIRM_S``) for a heartbeat of that process whose
risk counters show the new state: ``confirmed: true`` with the state, or
``confirmed: false`` with the last state seen (sent, but not confirmed in
time; a risk process that restarts meanwhile comes back REDUCE_ONLY, not
HALTED, whatever was sent: ``processes.risk``). ``status``: trading state, breaker trip, decisions (approved, denied
by reason...), positions and P&L per symbol as decimal strings, every
process's state, pid and restarts, and ``table``: the live status table's
snapshot (``statusview.snapshot``; absent while starting or stopping), which
the client prints with the same ``render`` the supervisor draws on a terminal. A malformed line, an unknown command, a
peer of another uid (the socket is 0600 anyway), or a command while the
system is still starting or already stopping, gets ``{"ok": false, "error":
...}``; nothing a client sends can take the server down. Every request is
logged with the peer's uid and pid (``SO_PEERCRED``): commands that change
trading at WARNING, ``status`` at INFO.

Socket path
-----------
``supervisor.control_socket`` when set (absolute). Otherwise
``$XDG_RUNTIME_DIR/ringtrader-<instance>.sock`` (a per-user 0700 directory on
systemd hosts), or ``/tmp/ringtrader-<instance>.sock`` where XDG_RUNTIME_DIR is
unset: ``default_socket_paths``. The client, given only an instance, tries
both in that order (a supervisor started by a service without
XDG_RUNTIME_DIR, a client in a login shell with it). A systemd unit with
``PrivateTmp=yes`` has its own /tmp: give it an explicit
``supervisor.control_socket`` (e.g. under ``RuntimeDirectory=``).

At start (after the rings, before any process is spawned): a path held by a
live server (it accepts a connection) refuses the start (exit 1) - a second
system on one socket would take the operator's commands; a socket nobody
serves (a killed run's) is removed; anything else at the path (a regular
file, another user's socket) refuses the start rather than being deleted.
The socket is created under umask 0177 (never visible with wider modes) and
chmod 0600; it is removed on every exit path, unless another server has
replaced it meanwhile (device and inode are compared).

Threads
-------
One thread (``_Server``) does all socket I/O with ``selectors``: accept,
peer credentials, reading lines, writing replies. It acts on nothing: a
valid request is queued for the supervisor's main loop, which takes it in
``OperatorControl.service()`` (every watch tick, 10 ms), reads process state
and sends commands there, and hands the reply back (``_Server.answer``: a
locked outbox plus a wake-up byte on a socketpair). While the supervisor is
starting (a cold numba compile can take minutes) or stopping, its main loop
is elsewhere: the thread answers ``status`` itself from plain attributes of
the processes (their state, pid, restarts: no dict the main thread mutates is
iterated) and refuses commands at once. A request the main loop has not taken
within ``HANDOFF_S`` is refused the same way (nothing is sent later behind the
operator's back).

Client exit codes (``main``): 0 ok; 1 refused (``ok: false``, a permission
problem, no reply in time); 2 usage error; 3 no system running (no socket, or
a socket nobody serves); 4 a command was sent but its new state was not
confirmed within ``CONFIRM_S`` (a wrapper that pages on a failed halt must not
read that as success).

This module imports only the standard library at module level: the client
starts in tens of milliseconds (no numba), even from a broken venv.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("ringtrader.supervisor")

#: operator command -> the risk stage's command type (``RiskStage.on_command``); ``status`` is answered here
RISK_COMMANDS = {"halt": "halt", "resume": "resume", "reduce-only": "reduce_only", "flatten": "flatten"}
COMMANDS = (*RISK_COMMANDS, "status")
ALIASES = {"reduce_only": "reduce-only"}  # the risk stage's spelling is accepted too
CONFIRM_S = 2.0  # a state command waits this long for a heartbeat that shows the new state
HANDOFF_S = 3.0  # a request the main loop has not taken within this is answered "busy" (the loop ticks every 10 ms)
MAX_LINE = 64 * 1024  # a request line longer than this is refused and the connection closed
MAX_CLIENTS = 16
CLIENT_IDLE_S = 60.0  # a connection silent this long (nothing in flight) is closed
SELECT_S = 0.2  # the I/O thread's housekeeping period
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NO_SYSTEM = 3
EXIT_UNCONFIRMED = 4

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ControlError(Exception):
    """The control socket cannot be served (path taken by a live server, not a socket, not removable...)."""


def default_socket_paths(instance: str, environ=None) -> list[str]:
    """Where an instance's socket is when ``supervisor.control_socket`` is unset, in the order to try.

    The supervisor serves the first; a client tries each in turn.
    """
    env = os.environ if environ is None else environ
    name = f"ringtrader-{instance}.sock"
    paths = []
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        paths.append(os.path.join(xdg, name))
    paths.append(os.path.join("/tmp", name))
    return paths


def socket_path(cfg, environ=None) -> str:
    """The path the supervisor of ``cfg`` serves."""
    return cfg.supervisor.control_socket or default_socket_paths(cfg.instance, environ)[0]


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a unix socket (Linux ``SO_PEERCRED``)."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def _who(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


# ---------------------------------------------------------------------------
# Server: the socket and its I/O thread
# ---------------------------------------------------------------------------


class _Request:
    """One parsed request between the I/O thread and the main loop."""

    __slots__ = ("cmd", "conn", "pid", "uid", "user", "t_recv", "state")

    def __init__(self, cmd: str, conn: int, pid: int, uid: int, user: str):
        self.cmd = cmd
        self.conn = conn  # the connection's id in the I/O thread (the reply goes there)
        self.pid, self.uid, self.user = pid, uid, user
        self.t_recv = time.monotonic()
        self.state = "queued"  # queued -> taken (main loop) | expired (I/O thread): under _Server.lock


class _Conn:
    __slots__ = ("sock", "pid", "uid", "user", "rbuf", "wbuf", "busy", "eof", "close_after", "last", "events")

    def __init__(self, sock: socket.socket, pid: int, uid: int, user: str):
        self.sock = sock
        self.pid, self.uid, self.user = pid, uid, user
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.busy = False  # a request of this connection is with the main loop: later lines wait (replies in order)
        self.eof = False  # the peer closed its side: answer what it sent, then close
        self.close_after = False  # close once wbuf is written (a refused peer, an oversized line)
        self.last = time.monotonic()
        self.events = selectors.EVENT_READ  # what the selector watches for it (0: not registered)


class _Server:
    """The listening socket and the thread that serves it (see the module docstring)."""

    def __init__(self, path: str, offline):
        self.path = path
        self.offline = offline  # (request) -> reply for the phases when the main loop is not serving
        self.phase = "starting"  # starting | running | stopping: set by the main thread
        self.lock = threading.Lock()
        self.inbox: collections.deque[_Request] = collections.deque()  # for the main loop
        self.outbox: collections.deque[tuple[int, dict]] = collections.deque()  # (conn id, reply) from it
        self.conns: dict[int, _Conn] = {}
        self.errors = 0  # unexpected exceptions caught in the I/O thread
        self._ids = 0
        self._sel = selectors.DefaultSelector()
        self._stop = False
        self._closed = False
        self._ident = None  # (st_dev, st_ino) of the socket file this server created
        self._listener = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="ringtrader-control", daemon=True)

    # -- setup / teardown (main thread) ------------------------------------------

    def open(self) -> None:
        _claim_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # the file never exists with a wider mode, not even between bind and chmod
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._ident = (st.st_dev, st.st_ino)
            sock.listen(MAX_CLIENTS)
        except OSError as exc:
            sock.close()
            self._unlink()
            raise ControlError(f"cannot listen on {self.path}: {exc}") from exc
        sock.setblocking(False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()

    def close(self) -> None:
        """Stop the thread, close every connection and the listener, remove the socket file if it is ours."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        for c in list(self.conns.values()):
            _close_quietly(c.sock)
        self.conns.clear()
        if self._listener is not None:
            _close_quietly(self._listener)
            self._listener = None
        self._unlink()
        for s in (self._wake_r, self._wake_w):
            _close_quietly(s)
        self._sel.close()

    def _unlink(self) -> None:
        if self._ident is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except OSError:
            pass
        self._ident = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the main loop's side ---------------------------------------------------------

    def take(self) -> list[_Request]:
        """Requests for the main loop (cheap when there are none)."""
        if not self.inbox:
            return []
        out = []
        with self.lock:
            while self.inbox:
                r = self.inbox.popleft()
                if r.state == "queued":
                    r.state = "taken"
                    out.append(r)
        return out

    def answer(self, req: _Request, reply: dict) -> None:
        """Hand a reply to the I/O thread (any thread)."""
        with self.lock:
            self.outbox.append((req.conn, reply))
        self._wake()

    def set_phase(self, phase: str, why: str = "") -> None:
        """Leaving ``running``: the requests the main loop has not taken are answered at once."""
        with self.lock:
            self.phase = phase
            left = [r for r in self.inbox if r.state == "queued"]
            if phase != "running":
                for r in left:
                    r.state = "expired"
                    self.outbox.append((r.conn, {"ok": False, "cmd": r.cmd, "error": why or f"the system is {phase}"}))
                self.inbox.clear()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed (shutting down)

    # -- the I/O thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            try:
                for key, mask in self._sel.select(SELECT_S):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        _drain_wake(self._wake_r)
                    else:
                        self._on_conn(key.data, mask)
                self._flush_outbox()
                self._housekeeping()
            except Exception:  # noqa: BLE001 - the kill switch must outlive any bug in one request's handling
                self.errors += 1
                log.exception("control socket: unexpected error (serving continues)")
                time.sleep(0.05)
        try:
            self._flush_outbox()  # what set_phase("stopping") answered just before close()
        except Exception:  # noqa: BLE001 - closing anyway
            log.exception("control socket: could not send the last replies")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE...: the connection stays in the backlog, retried shortly
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("control socket: accept failed: %s (%d errors)", exc, self.errors)
                time.sleep(0.1)  # the listener stays readable: do not spin on it
                return
            sock.setblocking(False)
            try:
                pid, uid, _gid = peer_cred(sock)
            except OSError:
                pid, uid = 0, -1
            self._ids += 1
            c = _Conn(sock, pid, uid, _who(uid) if uid >= 0 else "?")
            self.conns[self._ids] = c
            self._sel.register(sock, selectors.EVENT_READ, self._ids)
            if uid not in (os.geteuid(), 0):
                log.warning("control socket: refused a connection from uid %d (pid %d): only uid %d and root may "
                            "control this system", uid, pid, os.geteuid(), extra={"uid": uid, "peer_pid": pid})
                self._send(self._ids, {"ok": False, "error": f"uid {uid} may not control this system"}, close=True)
            elif len(self.conns) > MAX_CLIENTS:
                log.warning("control socket: too many connections (%d); refused one from uid %d (pid %d)",
                            len(self.conns), uid, pid, extra={"uid": uid, "peer_pid": pid})
                self._send(self._ids, {"ok": False, "error": f"too many control connections (max {MAX_CLIENTS})"},
                           close=True)

    def _on_conn(self, cid: int, mask: int) -> None:
        c = self.conns.get(cid)
        if c is None:
            return
        if mask & selectors.EVENT_READ and not c.eof:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(cid)
                return
            if data == b"":
                c.eof = True
                if c.rbuf.strip():
                    c.rbuf += b"\n"  # a last request without its newline (``printf '{"cmd":"status"}' | socat``)
                self._interest(cid, c)
            elif data:
                c.rbuf += data
                c.last = time.monotonic()
        if mask & selectors.EVENT_WRITE:
            self._write(cid)
        if cid in self.conns:
            self._lines(cid)

    def _lines(self, cid: int) -> None:
        """Serve the complete lines of a connection, one at a time (replies stay in request order)."""
        c = self.conns[cid]
        while cid in self.conns and not c.busy and not c.close_after:
            nl = c.rbuf.find(b"\n")
            if nl < 0:
                if len(c.rbuf) > MAX_LINE:
                    log.warning("control socket: request line over %d bytes from uid %d (pid %d); closing",
                                MAX_LINE, c.uid, c.pid, extra={"uid": c.uid, "peer_pid": c.pid})
                    c.rbuf.clear()
                    self._send(cid, {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}, close=True)
                break
            line = bytes(c.rbuf[:nl]).strip()
            del c.rbuf[:nl + 1]
            if line:
                self._request(cid, c, line)
        self._maybe_close(cid)

    def _request(self, cid: int, c: _Conn, line: bytes) -> None:
        cmd, err = parse_request(line)
        if err is not None:
            log.warning("control socket: bad request from uid %d (pid %d): %s", c.uid, c.pid, err,
                        extra={"uid": c.uid, "peer_pid": c.pid, "request": line[:200].decode("utf-8", "replace")})
            self._send(cid, {"ok": False, "error": err})
            return
        req = _Request(cmd, cid, c.pid, c.uid, c.user)
        with self.lock:
            serving = self.phase == "running"
            if serving:
                self.inbox.append(req)
        if serving:
            c.busy = True
            return
        reply = self.offline(req)
        (log.info if cmd == "status" or reply.get("ok") else log.warning)(
            "operator %s from %s (uid %d, pid %d) while %s: %s", cmd, c.user, c.uid, c.pid, self.phase,
            "answered" if reply.get("ok") else reply.get("error"),
            extra={"command": cmd, "uid": c.uid, "peer_pid": c.pid, "phase": self.phase})
        self._send(cid, reply)

    def _flush_outbox(self) -> None:
        if not self.outbox:
            return
        with self.lock:
            items = list(self.outbox)
            self.outbox.clear()
        for cid, reply in items:
            c = self.conns.get(cid)
            if c is None:
                continue  # the client left before its answer
            c.busy = False
            self._send(cid, reply)
            if cid in self.conns:
                self._lines(cid)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        expired = []
        with self.lock:
            while self.inbox and now - self.inbox[0].t_recv > HANDOFF_S:
                r = self.inbox.popleft()
                if r.state == "queued":
                    r.state = "expired"
                    expired.append(r)
        for r in expired:
            log.warning("control socket: %s from uid %d not taken by the supervisor within %.0f s; refused",
                        r.cmd, r.uid, HANDOFF_S, extra={"command": r.cmd, "uid": r.uid})
            c = self.conns.get(r.conn)
            if c is not None:
                c.busy = False
                self._send(r.conn, {"ok": False, "cmd": r.cmd, "error": f"the supervisor is busy ({self.phase}) "
                                    f"and did not take the request within {HANDOFF_S:.0f} s; nothing was sent"})
        for cid, c in list(self.conns.items()):
            if not c.busy and not c.wbuf and now - c.last > CLIENT_IDLE_S:
                self._drop(cid)

    def _send(self, cid: int, reply: dict, close: bool = False) -> None:
        c = self.conns.get(cid)
        if c is None:
            return  # gone (a failed write dropped it)
        c.wbuf += json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"
        c.close_after = c.close_after or close
        c.last = time.monotonic()
        self._write(cid)

    def _write(self, cid: int) -> None:
        c = self.conns.get(cid)
        if c is None:
            return
        while c.wbuf:
            try:
                n = c.sock.send(c.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(cid)
                return
            del c.wbuf[:n]
        self._interest(cid, c)
        self._maybe_close(cid)

    def _interest(self, cid: int, c: _Conn) -> None:
        """Watch for reads until the peer's EOF (a socket at EOF is always readable: no busy loop on it), and
        for writes while a reply is only partly sent."""
        want = (0 if c.eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if c.wbuf else 0)
        if want == c.events:
            return
        if c.events == 0:
            self._sel.register(c.sock, want, cid)
        elif want == 0:
            self._sel.unregister(c.sock)
        else:
            self._sel.modify(c.sock, want, cid)
        c.events = want

    def _maybe_close(self, cid: int) -> None:
        c = self.conns.get(cid)
        if c is None or c.wbuf or c.busy:
            return
        if c.close_after or (c.eof and b"\n" not in c.rbuf):
            self._drop(cid)

    def _drop(self, cid: int) -> None:
        c = self.conns.pop(cid, None)
        if c is None:
            return
        if c.events:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
        _close_quietly(c.sock)


def parse_request(line: bytes) -> tuple[str | None, str | None]:
    """``(command, None)`` for a valid request line, ``(None, reason)`` otherwise."""
    try:
        req = json.loads(line)
    except ValueError as exc:
        return None, f"malformed JSON: {exc}"
    if not isinstance(req, dict):
        return None, f"a request is a JSON object like {{\"cmd\": \"status\"}}, got {type(req).__name__}"
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        return None, "missing \"cmd\" (a string: " + ", ".join(COMMANDS) + ")"
    cmd = ALIASES.get(cmd, cmd)
    if cmd not in COMMANDS:
        return None, f"unknown command {cmd[:40]!r} (known: {', '.join(COMMANDS)})"
    return cmd, None


def _claim_path(path: str) -> None:
    """Make ``path`` free for a new socket, or raise ``ControlError`` (see "Socket path" above)."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ControlError(f"cannot create the directory of {path}: {exc}") from exc
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it (remove it, or set "
                           f"supervisor.control_socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody serves it: a killed run's socket
    except OSError as exc:  # EACCES (another user's), a timeout (a live server with a full backlog)...
        raise ControlError(f"{path} exists (owner uid {st.st_uid}) and cannot be probed ({exc}); refusing to "
                           f"replace it") from exc
    else:
        raise ControlError(f"another ringtrader supervisor is serving {path}: stop it, or give this one its own "
                           f"supervisor.control_socket (or instance)")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except OSError as exc:
        raise ControlError(f"cannot remove the stale socket {path} (owner uid {st.st_uid}): {exc}") from exc
    log.warning("removed a stale control socket (a killed run's): %s", path, extra={"socket": path})


def _drain_wake(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _close_quietly(sock) -> None:
    try:
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------------------
# The supervisor's side: commands to the risk stage, confirmations, status
# ---------------------------------------------------------------------------


def decimal_text(value: int) -> str:
    """Fixed point (``core.records.FIXED_SCALE``) as the shortest exact decimal string: 150000000 -> "1.5"."""
    from core.fixedpoint import to_decimal

    return format(to_decimal(int(value)).normalize(), "f")


class OperatorControl:
    """The control socket of one ``Supervisor`` (``sup``): ``start``, ``service`` every tick, ``close``.

    Everything but ``_offline`` runs on the supervisor's main thread.
    """

    def __init__(self, sup, environ=None):
        from core.risk_kernels import ACTIVE, HALTED, REDUCE_ONLY, STATE_NAMES, TRIP_NAMES

        self.sup = sup
        self.path = socket_path(sup.cfg, environ)
        self.risk_proc = sup.cfg.process_of("risk").name
        self.state_names, self.trip_names = STATE_NAMES, TRIP_NAMES
        #: command -> the risk states that confirm it (flatten keeps a halt: REDUCE_ONLY, or HALTED if it was)
        self.expect = {"halt": {HALTED}, "resume": {ACTIVE}, "reduce-only": {REDUCE_ONLY},
                       "flatten": {REDUCE_ONLY, HALTED}}
        self.server = _Server(self.path, self._offline)
        # state commands awaiting a confirming heartbeat: (request, sent at, deadline (monotonic s), the risk
        # process's incarnation when sent)
        self.pending: list[tuple[_Request, float, float, int]] = []
        self.opened = False
        self._dead_logged = False
        self._table_prev: dict | None = None  # the last status's table snapshot (the next one's rates)

    def start(self) -> None:
        """Serve the socket (raises ``ControlError`` when it cannot)."""
        self.server.open()
        self.opened = True
        log.info("control socket listening", extra={"socket": self.path, "mode": "0600"})

    def set_running(self) -> None:
        self.server.set_phase("running")

    def set_stopping(self) -> None:
        """The main loop is done: what is queued or waiting for confirmation is answered now."""
        self.server.set_phase("stopping", "the system is shutting down; nothing was sent")
        for req, *_ in self.pending:
            self.server.answer(req, self._state_reply(req, confirmed=False,
                                                      warning="sent; the system began shutting down before the "
                                                              "new state was confirmed"))
        self.pending.clear()

    def close(self) -> None:
        if self.pending or self.server.phase != "stopping":
            self.set_stopping()
        self.server.close()
        if self.opened:
            self.opened = False
            log.info("control socket closed", extra={"socket": self.path})

    # -- every tick ----------------------------------------------------------------------

    def service(self) -> None:
        for req in self.server.take():
            self._handle(req)
        if self.pending:
            self._confirm()
        if not self._dead_logged and not self.server.alive:
            self._dead_logged = True
            log.error("control socket thread is gone: operator commands are unavailable for this run",
                      extra={"socket": self.path})

    def _handle(self, req: _Request) -> None:
        who = {"command": req.cmd, "uid": req.uid, "user": req.user, "peer_pid": req.pid}
        if req.cmd == "status":
            log.info("operator status from %s (uid %d, pid %d)", req.user, req.uid, req.pid, extra=who)
            self.server.answer(req, self.status())
            return
        p = self.sup.procs[self.risk_proc]
        msg = {"type": RISK_COMMANDS[req.cmd], "stage": "risk", "origin": "operator", "uid": req.uid}
        sent = p.cmd_q is not None and p.state in ("starting", "running") and p.cmd_q.put_nowait(msg)
        if not sent:
            why = (f"the risk stage's process {p.name} is {p.state}" if p.state not in ("starting", "running")
                   else f"the control queue of {p.name} is full")
            log.error("operator %s from %s (uid %d, pid %d) NOT sent: %s", req.cmd, req.user, req.uid, req.pid,
                      why, extra=who)
            self.server.answer(req, {"ok": False, "cmd": req.cmd, "error": f"{why}; nothing was sent"})
            return
        log.warning("operator %s from %s (uid %d, pid %d): sent to %s", req.cmd, req.user, req.uid, req.pid,
                    p.name, extra={**who, "worker": p.name})
        # the operator's standing state order survives a restart of the risk process (watch._on_ready re-sends)
        if msg["type"] in ("halt", "reduce_only", "flatten"):
            self.sup.operator_state = {"type": "halt" if msg["type"] == "halt" else "reduce_only", "stage": "risk",
                                       "origin": "operator", "uid": req.uid}
        elif msg["type"] == "resume":
            self.sup.operator_state = None
        now = time.monotonic()
        self.pending.append((req, now, now + CONFIRM_S, p.incarnation))

    def _confirm(self) -> None:
        """Answer the state commands whose new state a heartbeat shows, or whose time is up."""
        p = self.sup.procs[self.risk_proc]
        now = time.monotonic()
        left = []
        for req, t0, deadline, inc in self.pending:
            state = (p.stage_stats.get("risk") or {}).get("state")
            if p.incarnation != inc:
                self.server.answer(req, self._state_reply(
                    req, confirmed=False, warning=f"{p.name} restarted before it confirmed; a restarted risk stage "
                                                  f"comes back REDUCE_ONLY: check status and repeat the command"))
                log.error("operator %s: %s restarted before confirming it", req.cmd, p.name,
                          extra={"command": req.cmd, "uid": req.uid})
            elif p.last_hb > t0 and state in self.expect[req.cmd]:
                self.server.answer(req, self._state_reply(req, confirmed=True, took_ms=(now - t0) * 1000))
                log.info("operator %s confirmed: risk state %s", req.cmd, self.state_names[state],
                         extra={"command": req.cmd, "uid": req.uid, "confirm_ms": round((now - t0) * 1000, 1)})
            elif now >= deadline:
                self.server.answer(req, self._state_reply(
                    req, confirmed=False, warning=f"sent to {p.name}, but no heartbeat showed the new state within "
                                                  f"{CONFIRM_S:.0f} s"))
                log.error("operator %s sent to %s but not confirmed within %.0f s (risk state %s)", req.cmd, p.name,
                          CONFIRM_S, self._state_name(state), extra={"command": req.cmd, "uid": req.uid})
            else:
                left.append((req, t0, deadline, inc))
        self.pending = left

    def _state_name(self, state) -> str | None:
        return self.state_names[state] if isinstance(state, int) and 0 <= state < len(self.state_names) else None

    def _state_reply(self, req: _Request, *, confirmed: bool, took_ms: float | None = None,
                     warning: str | None = None) -> dict:
        risk = self._risk()
        out = {"ok": True, "cmd": req.cmd, "sent_to": self.risk_proc, "confirmed": confirmed,
               "state": risk["state"], "trip": risk["trip"], "cancel_all": risk["cancel_all"]}
        if took_ms is not None:
            out["confirm_ms"] = round(took_ms, 1)
        if warning:
            out["warning"] = warning
        if req.cmd == "flatten":
            out["positions"] = risk["positions"]
        return out

    # -- status ------------------------------------------------------------------------------

    def _risk(self) -> dict:
        """The risk stage as its process's heartbeats tell it.

        The state, trip and positions are the current incarnation's (a gauge, and a restarted risk starts
        flat: summing them over incarnations would be wrong); decisions are totals over every incarnation.
        """
        p = self.sup.procs[self.risk_proc]
        cur = p.stage_stats.get("risk") or {}
        tot = p.stage_counters("risk")
        trip = cur.get("trip", 0)
        syms = [i.symbol for i in self.sup.cfg.instruments]
        return {
            "state": self._state_name(cur.get("state")),
            "trip": (self.trip_names[trip] if 0 <= trip < len(self.trip_names) else str(trip)) if trip else None,
            **{k: int(tot.get(k, 0)) for k in ("signals", "approved", "denied", "exits", "cancel_all", "fills",
                                                "rejects")},
            "denied_by_reason": {k.split(".", 1)[1]: int(v) for k, v in sorted(tot.items())
                                 if k.startswith("denied.")},
            "positions": {s: decimal_text(cur.get(f"position.{s}", 0)) for s in syms},
            "pnl": {s: {k: decimal_text(cur.get(f"{k}.{s}", 0))
                        for k in ("avg_entry", "realized", "realized_net", "unrealized")} for s in syms},
            "heartbeat_age_s": round(time.monotonic() - p.last_hb, 3) if p.last_hb and cur else None,
        }

    def _processes(self) -> dict:
        now = time.monotonic()
        out = {}
        for p in list(self.sup.procs.values()):
            proc = p.proc
            out[p.name] = {"state": p.state, "up": p.state == "running" and p.alive,
                           "pid": proc.pid if proc is not None else None, "incarnation": p.incarnation,
                           "restarts": len(p.restarts), "stages": list(p.stages),
                           "heartbeat_age_s": round(now - p.last_hb, 3) if p.state == "running" and p.last_hb
                           else None}
        return out

    def _header(self) -> dict:
        sup = self.sup
        return {"ok": True, "cmd": "status", "instance": sup.cfg.instance, "mode": sup.cfg.mode,
                "pid": os.getpid(), "phase": self.server.phase,
                "uptime_s": round(time.monotonic() - sup.t_start, 1), "socket": self.path}

    def status(self) -> dict:
        """The status reply: the keys above, and ``table``, the live status table's snapshot
        (``statusview.snapshot``), which ``format_status`` renders."""
        out = {**self._header(), **self._risk(), "processes": self._processes()}
        table = self._table()
        if table is not None:
            out["table"] = table
        return out

    def _table(self) -> dict | None:
        """The status table's snapshot; its rates are over the time since the table's last frame (when the
        supervisor draws one) or since the previous ``status`` (at least 0.2 s ago), else since the go."""
        from processes.supervisor.statusview import MIN_RATE_WINDOW_S, snapshot

        live = getattr(self.sup, "status", None)
        prev = live.prev if live is not None else self._table_prev
        try:
            snap = snapshot(self.sup, prev)
        except Exception:  # noqa: BLE001 - a status answers without its table rather than not at all
            log.exception("status: the table's snapshot failed (answered without it)")
            return None
        if live is None and (prev is None or snap["t"] - prev["t"] >= MIN_RATE_WINDOW_S):
            self._table_prev = snap
        return snap

    def _offline(self, req: _Request) -> dict:
        """The I/O thread's answer while the main loop is not serving (start-up, shutdown).

        Reads only plain attributes of the processes (no dict the main thread mutates is iterated).
        """
        if req.cmd != "status":
            return {"ok": False, "cmd": req.cmd,
                    "error": f"the system is {self.server.phase}"
                             + ("; the pipeline is not running yet: nothing was sent (try again once status "
                                "says running)" if self.server.phase == "starting" else "; nothing was sent")}
        return {**self._header(), "state": None, "trip": None, "processes": self._processes()}


# ---------------------------------------------------------------------------
# Client: ``python -m processes.supervisor.control`` (``scripts/ctl.sh``)
# ---------------------------------------------------------------------------


class NoSystem(Exception):
    """No supervisor serves the socket (exit 3)."""


class Refused(Exception):
    """The request could not be made or answered (exit 1)."""


def request(path: str, cmd: str, timeout: float = 10.0) -> dict:
    """Send one command to the supervisor at ``path``; its reply. Raises ``NoSystem`` or ``Refused``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise NoSystem(f"no control socket at {path}") from exc
        except ConnectionRefusedError as exc:
            raise NoSystem(f"nothing serves {path} (a stale socket: the supervisor is not running)") from exc
        except PermissionError as exc:
            raise Refused(f"permission denied on {path}: the system runs as another user (the socket is 0600)") \
                from exc
        except OSError as exc:
            raise Refused(f"cannot connect to {path}: {exc}") from exc
        _pid, uid, _gid = peer_cred(sock)
        me = os.geteuid()
        if me != 0 and uid not in (me, 0):
            raise Refused(f"{path} is served by uid {uid}, not by you (uid {me}) or root; not sending to it")
        sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise Refused(f"no reply from {path} within {timeout:.0f} s (the command may still have been "
                              f"sent: check status)") from exc
            if not chunk:
                raise Refused(f"the supervisor closed the connection without a reply ({path})")
            buf += chunk
        try:
            reply = json.loads(bytes(buf[:buf.index(b"\n")]))
        except ValueError as exc:
            raise Refused(f"malformed reply from {path}: {exc}") from exc
        if not isinstance(reply, dict):
            raise Refused(f"malformed reply from {path}: not an object")
        return reply
    finally:
        sock.close()


def _env_override(environ, *keys: str):
    """The value of ``RINGTRADER__<KEYS>`` the way ``core.config`` reads it (JSON when it parses)."""
    want = "__".join(("RINGTRADER", *keys)).upper()
    for k, v in environ.items():
        if k.upper() == want:
            try:
                return json.loads(v)
            except ValueError:
                return v
    return None


def client_paths(args, environ=None) -> list[str]:
    """The socket paths to try: ``--socket``; ``--instance``'s defaults; else the config's (default
    ``config/system.json``) ``supervisor.control_socket`` or its instance's defaults, with the same environment
    overrides the supervisor applies."""
    env = os.environ if environ is None else environ
    if args.socket:
        return [args.socket]
    if args.instance:
        return default_socket_paths(args.instance, env)
    cfg_path = Path(args.config) if args.config else PROJECT_ROOT / "config" / "system.json"
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        if args.config:
            raise Refused(f"cannot read {cfg_path}: {exc}") from exc
        data = {}
    data = data if isinstance(data, dict) else {}
    sup = data.get("supervisor") if isinstance(data.get("supervisor"), dict) else {}
    path = _env_override(env, "SUPERVISOR", "CONTROL_SOCKET") or sup.get("control_socket")
    if isinstance(path, str) and path:
        return [path]
    inst = _env_override(env, "INSTANCE") or data.get("instance") or "main"
    return default_socket_paths(str(inst), env)


def format_status(s: dict) -> str:
    """The status reply as text: the live status table (``statusview.render``) when the reply carries it;
    otherwise (the system is starting or stopping, or an older supervisor) the keys of the reply."""
    if isinstance(s.get("table"), dict):
        from processes.supervisor.statusview import render

        return render(s["table"])
    lines = [f"ringtrader instance {s.get('instance')} (mode {s.get('mode')}, supervisor pid {s.get('pid')}, "
             f"{s.get('phase')}, up {s.get('uptime_s')} s)"]
    trip = s.get("trip")
    lines.append(f"trading:   {s.get('state') or 'unknown (no risk heartbeat yet)'}"
                 + (f"   circuit breaker tripped: {trip}" if trip else "   breaker: ok"))
    if "approved" in s:
        denied = s.get("denied_by_reason") or {}
        lines.append(f"decisions: signals {s.get('signals', 0)}  approved {s.get('approved', 0)}  denied "
                     f"{s.get('denied', 0)}" + (" (" + ", ".join(f"{k} {v}" for k, v in denied.items()) + ")"
                                                if denied else "")
                     + f"  exits {s.get('exits', 0)}  cancel-all {s.get('cancel_all', 0)}  fills {s.get('fills', 0)}"
                       f"  rejects {s.get('rejects', 0)}")
    pos = s.get("positions") or {}
    if pos:
        pnl = s.get("pnl") or {}
        lines.append("")
        lines.append(f"{'symbol':<12}{'position':>16}{'avg entry':>16}{'realized':>16}{'net':>16}{'unrealized':>16}")
        for sym, q in pos.items():
            p = pnl.get(sym) or {}
            lines.append(f"{sym:<12}{q:>16}" + "".join(f"{p.get(k, '-'):>16}" for k in (
                "avg_entry", "realized", "realized_net", "unrealized")))
    procs = s.get("processes") or {}
    if procs:
        lines.append("")
        lines.append(f"{'process':<12}{'state':<10}{'up':<5}{'pid':>8}{'restarts':>10}  stages")
        for name, p in procs.items():
            stages = ",".join(p.get("stages") or []) or "-"
            lines.append(f"{name:<12}{p.get('state', '?'):<10}{'yes' if p.get('up') else 'no':<5}"
                         f"{p.get('pid') or '-':>8}{p.get('restarts', 0):>10}  {stages}")
    return "\n".join(lines)


def _format_reply(r: dict) -> str:
    text = f"{r['cmd']}: sent to {r.get('sent_to')}; risk state {r.get('state') or 'unknown'}"
    if r.get("confirmed"):
        text += f" (confirmed in {r.get('confirm_ms')} ms)"
    if r.get("trip"):
        text += f"; circuit breaker: {r['trip']}"
    if r["cmd"] == "halt":
        text += f"; cancel-alls this run: {r.get('cancel_all', 0)}"
    if r.get("positions"):
        text += "; positions " + " ".join(f"{k}={v}" for k, v in r["positions"].items())
    return text


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="scripts/ctl.sh", description="Control a running ringtrader through its supervisor's socket.",
        epilog="exit codes: 0 ok, 1 refused, 2 usage, 3 no system running, 4 sent but the new state not confirmed")
    ap.add_argument("command", choices=COMMANDS + tuple(ALIASES), metavar="{" + ",".join(COMMANDS) + "}",
                    help="halt (HALTED + cancel-all), resume (ACTIVE; clears a breaker trip), reduce-only, "
                         "flatten (REDUCE_ONLY + an exit per position), status")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--instance", help="the instance's default socket ($XDG_RUNTIME_DIR or /tmp)")
    where.add_argument("--socket", help="the socket path (supervisor.control_socket)")
    where.add_argument("--config", help="read instance / supervisor.control_socket from this config "
                                        "(default config/system.json)")
    ap.add_argument("--json", action="store_true", help="print the reply as JSON")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default 10)")
    args = ap.parse_args(argv)
    cmd = ALIASES.get(args.command, args.command)
    try:
        paths = client_paths(args)
        path = next((p for p in paths if os.path.exists(p)), paths[0])
        reply = request(path, cmd, args.timeout)
    except NoSystem as exc:
        why = f"no control socket at {' or '.join(paths)}" if not any(map(os.path.exists, paths)) else str(exc)
        sys.stderr.write(f"ctl: no ringtrader system is running: {why}. Start it with scripts/start.sh, or point "
                         f"at it with --instance / --socket / --config.\n")
        return EXIT_NO_SYSTEM
    except Refused as exc:
        sys.stderr.write(f"ctl: {exc}\n")
        return EXIT_REFUSED
    if args.json:
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
    if not reply.get("ok"):
        sys.stderr.write(f"ctl: {cmd} refused: {reply.get('error', 'no reason given')}\n")
        return EXIT_REFUSED
    if not args.json:
        sys.stdout.write((format_status(reply) if cmd == "status" else _format_reply(reply)) + "\n")
    if cmd != "status" and not reply.get("confirmed"):
        sys.stderr.write(f"ctl: WARNING: {reply.get('warning') or 'the new state was not confirmed'}; check "
                         f"status\n")
        return EXIT_UNCONFIRMED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

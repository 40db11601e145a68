"""Operator control: ``scripts/ctl.sh`` against the supervisor's control socket.

Most tests share one real system (``python -m processes.supervisor``, the
synthetic pipeline, no simulator, no metrics) with its socket in a temporary
directory: status, halt/resume, reduce-only, flatten, a 0600 socket, bad
requests answered without harm, a second supervisor on the same socket
refused, and SIGTERM removing the socket (the last test: it stops the
system). The paths no healthy run takes (the risk process restarting, a
command nobody confirms, a stale or foreign file at the socket path) drive
``OperatorControl`` over a real socket with a stand-in supervisor.

The instance names use the ``sv-`` prefix of ``test_supervisor.py`` rather
than conftest's shared ``test-<pid>-`` one: a concurrently running pytest
session sweeps every new ``ringtrader.test-*`` segment as its own leak, which
would pull the rings from under a live run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from ringbuffers.ring import list_segments

from test_supervisor import Run, msg, small_config

ROOT = Path(__file__).resolve().parents[2]
CTL = ROOT / "scripts" / "ctl.sh"


def ctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(CTL), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ctl_json(sock: Path, cmd: str) -> dict:
    r = ctl(cmd, "--socket", str(sock), "--json")
    assert r.returncode == 0, f"ctl {cmd} exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout)


def ctl_config(instance: str, sock: Path) -> dict:
    return small_config(instance, **{"metrics.enabled": False, "supervisor.spare_worker": False,
                                     "supervisor.control_socket": str(sock)})


def raw_exchange(sock: Path, payload: bytes, replies: int, timeout: float = 10) -> list[dict]:
    """Send bytes as they are; read ``replies`` reply lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < replies:
            chunk = s.recv(65536)
            assert chunk, f"connection closed before {replies} replies: {buf!r}"
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def remove_segments(instance: str) -> None:
    for seg in list_segments(instance):
        os.unlink(os.path.join("/dev/shm", seg))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """One running system for the module: its Run, socket path and instance."""
    tmp = tmp_path_factory.mktemp("ctl")
    inst = f"sv-{uuid.uuid4().hex[:10]}"
    sock = tmp / "ctl.sock"
    cfg = ctl_config(inst, sock)
    # every kernel of the synthetic pipeline loaded (or compiled once) before the run, whose ready timeout is short
    (tmp / "warm.json").write_text(json.dumps(cfg))
    subprocess.run([sys.executable, "-m", "core.numba_cache", "--warm", str(tmp / "warm.json")], cwd=ROOT,
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    run = Run(tmp, cfg)
    try:
        run.wait_event(msg("all processes ready"), 120)
        yield SimpleNamespace(run=run, sock=sock, instance=inst, tmp=tmp)
    finally:
        run.kill_group()
        remove_segments(inst)


def wait_status(sock: Path, pred, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = ctl_json(sock, "status")
        if pred(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def test_status_reports_an_active_system_its_positions_and_processes(system):
    s = wait_status(system.sock, lambda s: s["state"] is not None
                    and "md->book" in (s.get("table") or {}).get("latency", {}))  # risk and latency reported
    assert s["ok"] and s["phase"] == "running" and s["instance"] == system.instance
    assert s["state"] == "ACTIVE" and s["trip"] is None
    assert set(s["positions"]) == {"BTCUSDT", "ETHUSDT"}
    for sym, qty in s["positions"].items():
        Decimal(qty)  # an exact decimal string
        assert set(s["pnl"][sym]) == {"avg_entry", "realized", "realized_net", "unrealized"}
    assert isinstance(s["approved"], int) and isinstance(s["denied"], int)
    assert {n: (p["state"], p["up"], p["restarts"]) for n, p in s["processes"].items()} == {
        "feed": ("running", True, 0), "engine": ("running", True, 0)}
    t = s["table"]  # the live status table's snapshot (processes/supervisor/statusview.py)
    assert set(t["rings"]) == {"md", "book", "signals", "orders", "reports"}
    assert set(t["books"]["symbols"]) == {"BTCUSDT", "ETHUSDT"} and t["trading"]["state"] == "ACTIVE"
    assert t["rings"]["md"]["published"] > 0 and t["latency"]["md->book"]["count"] > 0
    r = ctl("status", "--socket", str(system.sock))  # the same table the supervisor draws on a terminal
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"ringtrader {system.instance}  mode sim  running")
    assert lines[1].startswith("trading ACTIVE  breaker ok  restarts 0")
    for first in ("md", "book", "signals", "orders", "reports", "BTCUSDT", "ETHUSDT", "md->book", "feed", "engine"):
        assert any(line.split()[:1] == [first] for line in lines), f"no {first} row in:\n{r.stdout}"
    assert max(map(len, lines)) <= 100
    # off a terminal the supervisor draws no table: its stdout is the JSON log, line by line, as always
    assert system.run.lines and all(line.startswith("{") for line in system.run.lines), system.run.lines[:5]
    assert not any("status table" in ev.get("msg", "") for ev in system.run.events)


def test_socket_is_a_0600_socket_of_the_supervisor_user(system):
    st = os.stat(system.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_halt_stops_trading_sends_cancel_all_and_resume_reactivates(system):
    before = ctl_json(system.sock, "status")["cancel_all"]
    r = ctl("halt", "--socket", str(system.sock))
    assert r.returncode == 0, r.stderr
    assert "HALTED" in r.stdout and "confirmed" in r.stdout
    s = wait_status(system.sock, lambda s: s["cancel_all"] > before, timeout=3)
    assert s["state"] == "HALTED"
    assert s["cancel_all"] > before, "halt sent no cancel-all"
    ev = system.run.wait_event(lambda e: e.get("msg", "").startswith("operator halt from"), 5)
    assert ev["level"] == "WARNING" and ev["uid"] == os.geteuid()
    assert system.run.wait_event(lambda e: e.get("msg") == "operator command halt: state HALTED", 5)["proc"] == "engine"
    reply = ctl_json(system.sock, "resume")
    assert reply["confirmed"] and reply["state"] == "ACTIVE"
    assert ctl_json(system.sock, "status")["state"] == "ACTIVE"


def test_reduce_only_and_flatten_leave_only_reducing_orders(system):
    reply = ctl_json(system.sock, "reduce-only")
    assert reply["confirmed"] and reply["state"] == "REDUCE_ONLY"
    assert ctl_json(system.sock, "status")["state"] == "REDUCE_ONLY"
    assert ctl_json(system.sock, "resume")["state"] == "ACTIVE"
    reply = ctl_json(system.sock, "flatten")
    assert reply["confirmed"] and reply["state"] == "REDUCE_ONLY"
    assert set(reply["positions"]) == {"BTCUSDT", "ETHUSDT"}
    assert ctl_json(system.sock, "halt")["state"] == "HALTED"
    assert ctl_json(system.sock, "flatten")["state"] == "HALTED", "flatten lifted a halt"
    assert ctl_json(system.sock, "resume")["state"] == "ACTIVE"


def test_bad_requests_get_an_error_and_the_server_keeps_serving(system):
    replies = raw_exchange(system.sock, b'not json\n{"cmd": "hat"}\n[1]\n{"nocmd": 1}\n\n{"cmd": "status"}\n', 5)
    assert [r["ok"] for r in replies] == [False, False, False, False, True]
    assert "malformed JSON" in replies[0]["error"]
    assert "unknown command 'hat'" in replies[1]["error"]
    assert replies[4]["state"] == "ACTIVE"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # half a request, then gone
        s.connect(str(system.sock))
        s.sendall(b'{"cmd": "ha')
    # a last request without its newline, the sending side then shut (``printf ... | socat``): still answered
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(system.sock))
        s.sendall(b'{"cmd": "status"}')
        s.shutdown(socket.SHUT_WR)
        assert json.loads(s.makefile().readline())["ok"] is True
    assert ctl_json(system.sock, "status")["state"] == "ACTIVE"
    assert system.run.p.poll() is None


def test_a_second_supervisor_on_the_same_socket_is_refused(system, tmp_path):
    ident = os.stat(system.sock).st_ino
    inst = f"sv-{uuid.uuid4().hex[:10]}"
    second = Run(tmp_path, ctl_config(inst, system.sock))
    try:
        assert second.wait(60) == 1
        assert any("another ringtrader supervisor is serving" in line for line in second.lines), \
            "".join(second.lines[-20:])
    finally:
        second.kill_group()
        remove_segments(inst)
    assert os.stat(system.sock).st_ino == ident, "the refused supervisor replaced the socket"
    assert ctl_json(system.sock, "status")["instance"] == system.instance


def test_usage_errors_exit_2():
    assert ctl("bogus").returncode == 2
    assert ctl().returncode == 2
    assert ctl("status", "--instance", "a", "--socket", "/tmp/b.sock").returncode == 2


def test_no_system_running_exits_3(tmp_path):
    r = ctl("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 3 and "no ringtrader system is running" in r.stderr
    stale = tmp_path / "stale.sock"  # a killed run's socket: the file is there, nobody listens
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    r = ctl("halt", "--socket", str(stale))
    assert r.returncode == 3 and "not running" in r.stderr
    r = ctl("status", "--instance", f"sv-none-{uuid.uuid4().hex[:6]}")
    assert r.returncode == 3


def test_sigterm_stops_the_system_and_removes_the_socket(system):
    """Stops the module's system: keep it last."""
    system.run.p.send_signal(signal.SIGTERM)
    assert system.run.wait(60) == 0
    assert not system.sock.exists()
    assert ctl("status", "--socket", str(system.sock)).returncode == 3


# ---------------------------------------------------------------------------
# Paths a healthy run does not take: OperatorControl with a stand-in supervisor
# ---------------------------------------------------------------------------


class FakeQueue:
    def __init__(self):
        self.sent: list[dict] = []

    def put_nowait(self, m: dict) -> bool:
        self.sent.append(m)
        return True


@pytest.fixture
def fake(tmp_path):
    """An ``OperatorControl`` serving ``tmp_path/ctl.sock`` for a supervisor whose main loop is a thread here."""
    from core.config import load_config
    from processes.supervisor.control import OperatorControl
    from processes.supervisor.state import Proc

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(ctl_config("sv-fake", tmp_path / "ctl.sock")))
    cfg = load_config(str(path))
    sup = SimpleNamespace(cfg=cfg, t_start=time.monotonic(),
                          procs={n: Proc(n, stages=cfg.placement[n].stages) for n in ("feed", "engine")})
    oc = OperatorControl(sup)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            oc.service()
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    yield SimpleNamespace(sup=sup, control=oc, sock=tmp_path / "ctl.sock", start=lambda: (oc.start(), t.start()))
    stop.set()
    if t.is_alive():
        t.join(timeout=2)
    oc.close()


def test_a_command_while_the_risk_process_restarts_is_refused_with_exit_1(fake):
    fake.start()
    fake.control.set_running()
    fake.sup.procs["engine"].state = "backoff"
    r = ctl("halt", "--socket", str(fake.sock))
    assert r.returncode == 1
    assert "engine is backoff" in r.stderr and "nothing was sent" in r.stderr


def test_a_command_no_heartbeat_confirms_exits_4_after_two_seconds(fake):
    fake.start()
    fake.control.set_running()
    eng = fake.sup.procs["engine"]
    eng.state, eng.cmd_q = "running", FakeQueue()
    t0 = time.monotonic()
    r = ctl("halt", "--socket", str(fake.sock))
    assert r.returncode == 4, r.stderr
    assert time.monotonic() - t0 >= 2.0
    assert "not confirmed" in r.stderr or "no heartbeat" in r.stderr
    # the shape the runtime routes to a stage (processes.runtime._dispatch)
    assert eng.cmd_q.sent == [{"type": "halt", "stage": "risk", "origin": "operator", "uid": os.geteuid()}]


def test_commands_before_the_pipeline_runs_are_refused_and_status_answers(fake):
    fake.start()  # phase "starting": the supervisor's main loop is not serving yet
    r = ctl("flatten", "--socket", str(fake.sock))
    assert r.returncode == 1 and "starting" in r.stderr
    s = ctl_json(fake.sock, "status")
    assert s["phase"] == "starting" and s["state"] is None and set(s["processes"]) == {"feed", "engine"}


def test_a_stale_socket_is_replaced_and_a_foreign_file_is_left_alone(fake):
    from processes.supervisor.control import ControlError, OperatorControl

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(fake.sock))
    s.close()  # a killed run's socket
    fake.start()
    assert stat.S_IMODE(os.stat(fake.sock).st_mode) == 0o600
    assert ctl_json(fake.sock, "status")["ok"]
    fake.control.close()
    assert not fake.sock.exists()
    fake.sock.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        OperatorControl(fake.sup).start()
    assert fake.sock.read_text() == "not a socket"


# ---------------------------------------------------------------------------
# Where the socket is
# ---------------------------------------------------------------------------


def test_default_socket_is_in_xdg_runtime_dir_else_tmp_and_the_client_follows_the_config(tmp_path):
    from processes.supervisor.control import client_paths, default_socket_paths

    def paths(env, **args):
        return client_paths(SimpleNamespace(**{"socket": None, "instance": None, "config": None, **args}), env)

    assert default_socket_paths("main", {"XDG_RUNTIME_DIR": "/run/user/1000"}) == [
        "/run/user/1000/ringtrader-main.sock", "/tmp/ringtrader-main.sock"]
    assert default_socket_paths("main", {}) == ["/tmp/ringtrader-main.sock"]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"instance": "paper1", "supervisor": {}}))
    assert paths({}, config=str(cfg)) == ["/tmp/ringtrader-paper1.sock"]
    # the supervisor's environment overrides, read the way core.config reads them
    assert paths({"RINGTRADER__INSTANCE": "x"}, config=str(cfg)) == ["/tmp/ringtrader-x.sock"]
    assert paths({"RINGTRADER__SUPERVISOR__CONTROL_SOCKET": "/run/rt/ctl.sock"}, config=str(cfg)) == [
        "/run/rt/ctl.sock"]
    assert paths({}, instance="b") == ["/tmp/ringtrader-b.sock"]
    assert paths({}, socket="/s.sock", instance="b") == ["/s.sock"]


@pytest.mark.parametrize("value, problem", [("ctl.sock", "absolute path"), ("/" + "x" * 120, "at most 107 bytes")])
def test_a_bad_control_socket_path_is_a_config_error_naming_the_key(tmp_path, value, problem):
    from core.config import load_config
    from core.errors import ConfigError

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(small_config("sv-cfg", **{"supervisor.control_socket": value})))
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(str(path))
    assert err.value.path == "supervisor.control_socket"

"""Alert webhooks (processes/supervisor/alerts.py) against a local HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from processes.supervisor.alerts import WebhookAlerter

from test_restart_recovery import trading_config
from test_supervisor import Run


class Receiver:
    """A webhook endpoint: records every JSON body; answers ``codes`` in turn (then 200); ``hang_s`` delays."""

    def __init__(self, codes=(), hang_s: float = 0.0):
        self.bodies: list[dict] = []
        self.codes = list(codes)
        self.hang_s = hang_s
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                if outer.hang_s:
                    time.sleep(outer.hang_s)
                code = outer.codes.pop(0) if outer.codes else 200
                if code == 200:
                    outer.bodies.append(body)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.t = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.t.start()

    def wait(self, n: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_alert_is_posted_with_slack_and_discord_text_fields_and_5xx_are_retried():
    rx = Receiver(codes=(500, 503))
    a = WebhookAlerter(rx.url, instance="main", retries=3, backoff_s=0.01)
    try:
        assert a.post({"type": "alert", "kind": "circuit_breaker", "reason": "daily_loss", "proc": "engine"})
        (body,) = rx.wait(1)
        assert body["text"] == body["content"] == "ringtrader main: circuit_breaker: daily_loss"
        assert body["kind"] == "circuit_breaker" and body["event"]["proc"] == "engine"
        assert a.stats["sent"] == 1 and a.stats["retries"] == 2 and a.stats["failed"] == 0
    finally:
        a.close()
        rx.close()


def test_a_dead_or_slow_webhook_never_blocks_the_caller_overflow_is_counted():
    dead = WebhookAlerter("http://127.0.0.1:9/hook", instance="main", retries=1, backoff_s=0.01, timeout_s=0.5)
    rx = Receiver(hang_s=1.0)
    slow = WebhookAlerter(rx.url, instance="main", queue_max=2, timeout_s=5.0)
    try:
        assert dead.post({"kind": "venue", "reason": "418"})
        posted = [slow.post({"kind": "k", "reason": str(i)}) for i in range(6)]
        # the thread holds at most one in flight: the queue takes two, the rest are dropped and counted
        assert posted[:2] == [True, True] and slow.stats["dropped"] >= 3
        deadline = time.monotonic() + 10
        while dead.stats["failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dead.stats["failed"] == 1 and dead.stats["retries"] == 1 and dead.stats["sent"] == 0
    finally:
        dead.close(0.5)
        slow.close(0.5)
        rx.close()


def test_a_breaker_trip_in_a_running_system_reaches_the_webhook(tmp_path, instance):
    """Trading with a tiny daily-loss limit: the first round trip's fees trip the breaker; the alert event
    goes through the supervisor to the webhook."""
    rx = Receiver()
    cfg = trading_config(instance, tmp_path / "journal", every=2)
    cfg["risk"]["max_daily_loss"] = "0.01"
    cfg["alerts"] = {"webhook_url": rx.url, "format": "json"}
    run = Run(tmp_path, cfg, "--duration", "15")
    try:
        bodies = rx.wait(1, timeout=240)
        assert bodies, "no alert reached the webhook:\n" + "".join(run.lines[-20:])
        assert bodies[0]["kind"] == "circuit_breaker" and bodies[0]["reason"] == "daily_loss"
        assert bodies[0]["instance"] == instance
        assert run.wait(120) == 0
    finally:
        run.kill_group()
        rx.close()
    risk = run.summary()["stages"]["risk"]["counters"]
    assert risk["state"] == 2 and risk["cancel_all"] >= 1  # HALTED, and cancel-all sent
    assert rx.url not in "".join(run.lines)  # the URL (it may hold a token) is not logged

"""Alert webhooks: the supervisor posts every ``alert`` event to a configured URL, off its watch loop.

Stages raise alerts as events (``ctx.event("alert", kind=..., reason=...)``: the risk breaker tripping, a
venue ban); the supervisor's watch loop hands each to ``WebhookAlerter.post``, which only appends it to a
bounded queue and returns. A daemon thread sends them with ``httpx``: a POST of a JSON object, retried
with exponential backoff on a connection error, a time-out or a 5xx (``alerts.retries`` times). A webhook
that is down, slow or refusing never blocks trading: at worst the queue fills and further alerts are
dropped and counted (``stats``), and the alert is in the log anyway.

Payload (``alerts.format``):

* ``json`` (generic): ``{"text": ..., "content": ..., "instance", "kind", "reason", "proc", "ts",
  "event": {every field of the event}}``. ``text`` is what Slack's incoming webhooks show, ``content``
  what Discord's do, so one URL of either works without a translation layer.
* ``text``: ``{"text": ...}`` only (Slack-compatible, minimal).
"""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import threading
import time

import httpx

log = logging.getLogger("ringtrader.alerts")


class _HideUrl(logging.Filter):
    """Drops httpx's own "HTTP Request: POST <url>" lines for the webhook: its URL may carry a token."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        return self.url not in record.getMessage()


class WebhookAlerter:
    def __init__(self, url: str, *, instance: str, fmt: str = "json", timeout_s: float = 2.0, retries: int = 3,
                 queue_max: int = 1000, backoff_s: float = 0.2):
        self.url = url
        self.instance = instance
        self.fmt = fmt
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.queue: collections.deque = collections.deque()
        self.queue_max = queue_max
        self.stats = collections.Counter(sent=0, failed=0, dropped=0, retries=0)
        self._hide = _HideUrl(url)
        logging.getLogger("httpx").addFilter(self._hide)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def post(self, event: dict) -> bool:
        """Queue one alert event (any thread; never blocks). False when the queue is full (dropped)."""
        if len(self.queue) >= self.queue_max:
            self.stats["dropped"] += 1
            return False
        self.queue.append(dict(event))
        self._wake.set()
        return True

    def payload(self, ev: dict) -> dict:
        kind = ev.get("kind", "alert")
        reason = ev.get("reason", "")
        text = f"ringtrader {self.instance}: {kind}" + (f": {reason}" if reason else "")
        if self.fmt == "text":
            return {"text": text}
        return {"text": text, "content": text, "instance": self.instance, "kind": kind, "reason": reason,
                "proc": ev.get("proc"), "ts": ev.get("ts") or _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "event": {k: v for k, v in ev.items() if isinstance(v, (str, int, float, bool, type(None)))}}

    def close(self, timeout_s: float = 3.0) -> None:
        """Send what is queued (bounded by ``timeout_s``), then stop the thread."""
        deadline = time.monotonic() + timeout_s
        while self.queue and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        logging.getLogger("httpx").removeFilter(self._hide)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                while self.queue and not self._stop.is_set():
                    self._send(http, self.queue.popleft())

    def _send(self, http: httpx.Client, ev: dict) -> None:
        body = self.payload(ev)
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                r = http.post(self.url, json=body)
                if r.status_code < 500:
                    if r.status_code >= 400:  # the receiver refuses this payload: retrying will not help
                        self.stats["failed"] += 1
                        log.warning("alert webhook refused the alert (HTTP %d): %s", r.status_code, r.text[:200])
                    else:
                        self.stats["sent"] += 1
                    return
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                self.stats["retries"] += 1
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, 5.0)
        self.stats["failed"] += 1
        log.warning("alert webhook failed after %d attempts (%s); the alert is in this log only", self.retries + 1,
                    why, extra={"alert": body.get("text")})

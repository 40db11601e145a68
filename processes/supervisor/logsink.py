"""The merged log stream: one JSON object per line from the supervisor and every process."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections import deque

from processes.runtime import _STD_LOG_ATTRS, iso_now

RECENT = 3  # the latest warnings and errors kept for the live status table's footer
_LOUD = frozenset({"WARNING", "ERROR", "CRITICAL"})


class LogSink:
    """Writes JSON lines (supervisor's and processes' events) to stdout and/or a file.

    ``stream``: where the ``stdout`` lines go instead of ``sys.stdout`` (``sys.stderr`` while the live status
    table holds stdout: ``cli.py``). ``recent`` keeps the last ``RECENT`` warnings and errors as
    ``(ts, proc, level, msg)`` for that table.
    """

    def __init__(self, stdout: bool = True, path: str | None = None, stream=None):
        self.stdout = stdout
        self.stream = stream  # None: sys.stdout, looked up at each write
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives as long as the run
        self.recent: deque[tuple] = deque(maxlen=RECENT)

    def write(self, event: dict) -> None:
        line = json.dumps(event, default=str, separators=(",", ":"))
        if self.stdout:
            out = self.stream if self.stream is not None else sys.stdout
            out.write(line + "\n")
            out.flush()
        if self.file is not None:
            self.file.write(line + "\n")
        if event.get("level") in _LOUD:
            self.recent.append((event.get("ts"), event.get("proc"), event.get("level"), str(event.get("msg", ""))))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class SinkHandler(logging.Handler):
    """The supervisor's own log records, as ``proc = "supervisor"`` lines."""

    def __init__(self, sink: LogSink):
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        ev = {"ts": iso_now(record.created), "mono_ns": time.monotonic_ns(), "proc": "supervisor",
              "level": record.levelname, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_LOG_ATTRS and not k.startswith("_"):
                ev[k] = v
        if record.exc_info:
            ev["exc"] = "".join(traceback.format_exception(*record.exc_info))
        self.sink.write(ev)


def process_log_line(proc: str, m: dict) -> dict:
    """A ``{"type": "log", ...}`` event from a process, as a line of the merged stream."""
    ev = {"ts": m.pop("ts", None), "mono_ns": m.pop("mono_ns", None), "proc": proc,
          "level": m.pop("level", "INFO"), "msg": m.pop("msg", "")}
    m.pop("type", None)
    ev.update(m)
    return ev

"""Control-plane queues (supervisor <-> workers) over faster-fifo, payloads in orjson.

Low rate, off the hot path: commands (``shutdown``, ``halt``, ``resync``...)
and events (``ready``, ``heartbeat``, ``log``, ``error``, ``stats``). Each
message is a JSON object with at least ``"type"``; the queue adds nothing.
A ``ControlQueue`` is picklable, so it can be handed to a ``spawn``ed worker.
"""

from __future__ import annotations

import queue as _queue

import faster_fifo
import orjson


def _dumps(obj) -> bytes:
    return orjson.dumps(obj)


def _loads(data) -> dict:
    return orjson.loads(bytes(data))


class ControlQueue:
    """A multi-producer, multi-consumer queue of JSON-able dicts."""

    def __init__(self, max_size_bytes: int = 1 << 20):
        self._q = faster_fifo.Queue(max_size_bytes=max_size_bytes, loads=_loads, dumps=_dumps)

    def put(self, msg: dict, timeout: float = 1.0) -> bool:
        """Enqueue; returns False (never raises) if the queue stays full for ``timeout``."""
        try:
            self._q.put(msg, timeout=timeout)
            return True
        except _queue.Full:
            return False

    def put_nowait(self, msg: dict) -> bool:
        try:
            self._q.put_nowait(msg)
            return True
        except _queue.Full:
            return False

    def get(self, timeout: float = 0.1) -> dict | None:
        """One message, or None after ``timeout`` seconds."""
        try:
            return self._q.get(timeout=timeout)
        except _queue.Empty:
            return None

    def get_many(self, timeout: float = 0.1, max_messages: int = 1000) -> list[dict]:
        """Up to ``max_messages`` messages; waits up to ``timeout`` for the first one."""
        try:
            return self._q.get_many(timeout=timeout, max_messages_to_get=max_messages)
        except _queue.Empty:
            return []

    def close(self) -> None:
        self._q.close()

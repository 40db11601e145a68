"""Control-plane queues (supervisor <-> workers) over faster-fifo, payloads in orjson.

Low rate, off the hot path: commands (``shutdown``, ``halt``, ``resync``...)
and events (``ready``, ``heartbeat``, ``log``, ``error``, ``stats``). Each
message is a JSON object with at least ``"type"``; the queue adds nothing.
A ``ControlQueue`` is picklable, so it can be handed to a ``spawn``ed worker.
"""

from __future__ import annotations

import mmap
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

    def __setstate__(self, state: dict) -> None:
        # Unpickled in another process (a spawned worker): map the shared buffer there now.
        self.__dict__.update(state)
        self.prefault()

    def prefault(self) -> int:
        """Map every page of the queue's shared buffer into this process now (reads only); returns the pages.

        faster-fifo keeps messages in one shared circular buffer of
        ``max_size_bytes``. The creating process zero-fills it, so all of it is
        resident there; a process that receives the queue by pickling maps
        each page on first touch. Without this, a worker's RSS (RssShmem) grows
        by every byte it sends until the buffer has wrapped once (a 4 MB
        event queue at ~9 KB/s of heartbeats: +0.5 MB/min for ~8 minutes),
        which a soak cannot tell from a leak, and each new page is a fault on
        the control path. Reading one byte per page is enough; it never
        writes, since another process may be using the queue.
        """
        pages = 0
        for buf in (self._q.shared_memory, self._q.queue_obj_buffer):
            view = memoryview(buf).cast("B")
            sum(view[::mmap.PAGESIZE])
            pages += -(-len(view) // mmap.PAGESIZE)
        return pages

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

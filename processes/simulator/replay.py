"""Replay mode: play recorded sessions to WebSocket clients, serve their recorded snapshots.

Inputs (``simulator.replay`` / ``--replay``), played one after the other:
- a file: hftbacktest ``.gz``, a cryptofeed raw file or a ringtrader
  recording (``core.recordings.iter_frames`` detects which); consecutive
  files form one continuous session (hftbacktest splits at midnight);
- a folder: one cryptofeed recording (``iter_recording_dir``, venue BINANCE),
  or a folder of ringtrader recordings (``*.gz``, in name order).

What clients get:
- every recorded WebSocket frame, in recorded order, on the stream it was
  recorded on: a combined client receives the recorded envelope byte for
  byte, a raw client the recorded ``data`` bytes (sliced, not re-encoded);
- ``GET /api/v3/depth?symbol=S`` answers, only when asked, with the recorded
  snapshot body of S, byte for byte: the latest one the replay has passed, or
  if none yet the next one ahead (a client connecting at the start buffers
  the diffs before it, as Binance's procedure says). ``limit`` is ignored:
  the body is what was recorded;
- ``GET /api/v3/exchangeInfo`` answers with the recorded body if the
  recording holds one.

Timing: playback starts when the first client subscribes; frames go out at
their recorded spacing divided by ``replay_speed`` (0 = as fast as possible,
waiting only for slow clients' queues to drain, so nothing is dropped).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from pathlib import Path
from typing import Any, Iterator

import orjson

from core.recordings import (
    KIND_EXCHANGE_INFO,
    KIND_SNAPSHOT,
    KIND_WS,
    Frame,
    ReaderStats,
    iter_recording_dir,
    iter_session,
)
from processes.simulator.config import SimulatorConfig
from processes.simulator.streams import canonical_stream

log = logging.getLogger("ringtrader.simulator.replay")

_ENVELOPE_HEAD = b'{"stream":"'
_ENVELOPE_MID = b'","data":'
BATCH_MAX = 512  # frames per broadcast at full speed
BACKLOG_HIGH = 64  # client batches queued before a full-speed replay waits
RAW_STREAM_OF_EVENT = {
    "depthUpdate": "depth@100ms",  # a raw recording cannot tell 100 ms from 1000 ms diffs: 100 ms assumed
    "trade": "trade",
    "aggTrade": "aggTrade",
}


def split_ws_frame(payload: bytes) -> tuple[str, bytes] | None:
    """(stream name, raw event bytes) of a recorded WS frame; None for replies/unknown frames.

    A combined envelope ``{"stream":"x","data":<raw>}`` is sliced, so the raw
    bytes are exactly the recorded ones; a raw event gets its stream name from
    its fields.
    """
    if payload.startswith(_ENVELOPE_HEAD):
        end = payload.find(b'"', len(_ENVELOPE_HEAD))
        if end > 0 and payload.startswith(_ENVELOPE_MID, end) and payload.endswith(b"}"):
            return payload[len(_ENVELOPE_HEAD) : end].decode("ascii"), payload[end + len(_ENVELOPE_MID) : -1]
        try:  # an envelope with other spacing/key order: re-encode the data (combined stays byte-exact)
            obj = orjson.loads(payload)
            return str(obj["stream"]), orjson.dumps(obj["data"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "s" not in obj:
        return None  # e.g. {"result":null,"id":1}
    sym = str(obj["s"]).lower()
    e = obj.get("e")
    if e in RAW_STREAM_OF_EVENT:
        return f"{sym}@{RAW_STREAM_OF_EVENT[e]}", payload
    if e == "kline" and isinstance(obj.get("k"), dict):
        return f"{sym}@kline_{obj['k'].get('i')}", payload
    if e is None and {"u", "b", "B", "a", "A"} <= obj.keys():
        return f"{sym}@bookTicker", payload
    return None


def iter_inputs(paths: tuple[str, ...], stats: ReaderStats) -> Iterator[Frame]:
    """Frames of every configured input, in order; consecutive files are one session."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if files:
                yield from iter_session(files, stats)
                files = []
            own = sorted(p.glob("*.gz"))
            if own and not any(p.glob("*.0")):
                yield from iter_session(own, stats)
            else:
                yield from iter_recording_dir(p, "BINANCE", stats)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"replay input not found: {p}")
    if files:
        yield from iter_session(files, stats)


class ReplaySource:
    """Plays loaded frames to the hub; answers snapshot requests from the recording."""

    def __init__(self, cfg: SimulatorConfig, hub: Any, paths: tuple[str, ...] | None = None):
        self.cfg = cfg
        self.hub = hub
        self.speed = cfg.replay_speed
        self.reader_stats = ReaderStats()
        self.frames: list[tuple[int, str, bytes]] = []  # (recv_ns, stream, raw)
        self._snapshots: dict[str, tuple[list[int], list[bytes]]] = {}  # symbol -> (positions, bodies)
        self.exchange_info: bytes | None = None
        self.skipped_frames = 0
        self.cursor = 0  # index of the next frame to send
        self.done = False
        self._load(tuple(paths if paths is not None else cfg.replay))
        self.streams = sorted({s for _, s, _ in self.frames})

    def _load(self, paths: tuple[str, ...]) -> None:
        for fr in iter_inputs(paths, self.reader_stats):
            if fr.kind == KIND_WS:
                split = split_ws_frame(fr.payload)
                if split is None:
                    self.skipped_frames += 1
                    continue
                name = split[0]
                self.frames.append((fr.recv_ns, canonical_stream(name) or name, split[1]))
            elif fr.kind == KIND_SNAPSHOT and fr.symbol:
                pos, bodies = self._snapshots.setdefault(fr.symbol.upper(), ([], []))
                pos.append(len(self.frames))  # served once the replay passed this point
                bodies.append(fr.payload)
            elif fr.kind == KIND_EXCHANGE_INFO and self.exchange_info is None:
                self.exchange_info = fr.payload
        log.info("replay loaded %d frames (%d skipped), snapshots for %s, streams: %s", len(self.frames),
                 self.skipped_frames, sorted(self._snapshots), ", ".join(sorted({s for _, s, _ in self.frames})))  # fmt: skip

    def symbols(self) -> list[str]:
        syms = {s.split("@", 1)[0].upper() for _, s, _ in self.frames} | set(self._snapshots)
        return sorted(syms)

    def snapshot(self, symbol: str, limit: int) -> bytes | None:
        found = self._snapshots.get(symbol)
        if found is None:
            return None
        positions, bodies = found
        i = bisect.bisect_right(positions, self.cursor) - 1
        return bodies[max(i, 0)]

    async def run(self) -> None:
        started = asyncio.Event()
        if self.hub.wanted:
            started.set()
        else:
            self.hub.on_first_client = started.set
        await started.wait()
        loop = asyncio.get_running_loop()
        frames = self.frames
        if not frames:
            self.done = True
            return
        t0_ns = frames[0][0]
        wall0 = loop.time()
        n = len(frames)
        while self.cursor < n:
            if self.speed > 0:
                due = wall0 + (frames[self.cursor][0] - t0_ns) / 1e9 / self.speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = loop.time()
                limit_ns = t0_ns + int((now - wall0) * self.speed * 1e9)
                end = self.cursor
                while end < n and frames[end][0] <= limit_ns and end - self.cursor < BATCH_MAX:
                    end += 1
                end = max(end, self.cursor + 1)
            else:
                while self.hub.max_backlog() > min(BACKLOG_HIGH, self.hub.max_queue // 2):
                    await asyncio.sleep(0.001)
                end = min(n, self.cursor + BATCH_MAX)
            self.hub.broadcast([(s, raw) for _, s, raw in frames[self.cursor : end]])
            self.cursor = end
            if self.speed == 0:
                await asyncio.sleep(0)
        self.done = True
        log.info("replay finished: %d frames", n)

    def stats(self) -> dict[str, Any]:
        return {
            "replay_frames": len(self.frames),
            "replay_sent": self.cursor,
            "replay_done": self.done,
            "replay_skipped": self.skipped_frames + self.reader_stats.skipped,
        }

"""Recorded Binance sessions: readers for three line formats and ringtrader's writer.

Every reader yields ``Frame``s: the exact bytes Binance sent (a WebSocket text
frame, a REST body) with the recorder's receive time in nanoseconds.

Formats (detected from the first non-blank line; gzip detected by its magic):

hftbacktest (``btcusdt_20240808.gz``)
    ``<recv> <json>``. ``<recv>`` is epoch ns (2024 files) or epoch us (2023);
    a value below 1e17 is taken as us (1e17 ns is 1973, 1e17 us is year 5138).
    ``{"stream":..}`` lines are ``ws`` frames; a bare ``{"lastUpdateId":..}``
    line is a REST depth snapshot whose symbol comes from the file name.
cryptofeed raw text (``BINANCE.ws.1.0``)
    ``<url> <-> <secs>`` (connection opened), ``<url> -> <secs>: <body>`` (REST
    response: depth snapshot or exchangeInfo), ``<secs>: <frame>`` (WS frame),
    ``configuration: {..}`` (recorder settings; skipped, counted as ignored).
    ``<secs>`` is decimal epoch seconds, converted to ns exactly (no float).
ringtrader (``RecordingWriter``; ``<prefix>.<utc>.<seq>.gz``)
    ``# ringtrader-recording v1 ...`` header, then
    ``<recv_ns> <kind> <SYMBOL or -> <payload>``. Binance frames are one-line
    JSON; the writer refuses (and counts) a payload with CR or LF rather
    than change its bytes.

A line that does not fit its format is counted in ``ReaderStats`` (by reason)
and skipped; a file whose gzip stream is cut short yields every whole line
before the cut and counts ``truncated_file``. Readers never raise on bad
content; an unrecognisable file raises ``RecordingFormatError``.
"""

from __future__ import annotations

import gzip
import heapq
import logging
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from core.errors import RingtraderError

log = logging.getLogger(__name__)

KIND_WS = "ws"  # a WebSocket text frame exactly as sent (combined envelope or raw event)
KIND_SNAPSHOT = "depth_snapshot"  # REST /api/v3/depth body
KIND_EXCHANGE_INFO = "exchange_info"  # REST /api/v3/exchangeInfo body
KIND_CONNECT = "connect"  # a connection was opened; payload = url
FRAME_KINDS = (KIND_WS, KIND_SNAPSHOT, KIND_EXCHANGE_INFO, KIND_CONNECT)

FORMAT_HFTBACKTEST = "hftbacktest"
FORMAT_CRYPTOFEED = "cryptofeed"
FORMAT_RINGTRADER = "ringtrader"

OWN_HEADER = b"# ringtrader-recording v1"
_US_BELOW = 10**17  # hftbacktest: receive times below this are microseconds
_DETECT_LINES = 20  # non-blank lines looked at to recognise a format


class RecordingFormatError(RingtraderError, ValueError):
    """A file that is not a recording in any known format."""


@dataclass(frozen=True, slots=True)
class Frame:
    recv_ns: int  # recorder's local receive time, epoch ns (converted from us / float seconds where needed)
    kind: str  # one of FRAME_KINDS
    payload: bytes  # the exact bytes (frame, REST body, or connect url)
    symbol: str | None  # upper-case symbol when known


@dataclass(slots=True)
class ReaderStats:
    """What a reader saw; one object may accumulate over several files."""

    lines: int = 0  # lines read (including blank and skipped)
    frames: int = 0  # frames yielded
    blank: int = 0  # empty lines (cryptofeed files end with some): not errors
    ignored: int = 0  # well-formed recorder lines that carry no frame (configuration, comments)
    skipped: int = 0  # corrupt lines, counted and skipped
    reasons: dict[str, int] = field(default_factory=dict)  # skipped, by reason
    by_kind: dict[str, int] = field(default_factory=dict)  # frames, by kind

    def skip(self, reason: str, path, line_no: int, line: bytes) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if self.reasons[reason] == 1:
            log.warning("recording %s line %d: %s (logged once per reason): %r", path, line_no, reason, line[:120])


class _Corrupt(ValueError):
    def __init__(self, reason: str):
        self.reason = reason


# ---------------------------------------------------------------------------
# line parsers: bytes line (no newline) -> Frame | None (ignored) | raise _Corrupt
# ---------------------------------------------------------------------------
_STREAM_SYMBOL = re.compile(rb'^\{"stream":"([a-z0-9]+)@')
_RAW_SYMBOL = re.compile(rb'"s":"([A-Z0-9]+)"')
_URL_SYMBOL = re.compile(rb"[?&]symbol=([A-Za-z0-9]+)")
_DIGITS = re.compile(rb"^[0-9]+$")
_SECONDS = re.compile(rb"^([0-9]+)(?:\.([0-9]*))?$")


def _ws_symbol(payload: bytes) -> str | None:
    m = _STREAM_SYMBOL.match(payload)
    if m is None:
        m = _RAW_SYMBOL.search(payload, 0, 256)
    return m.group(1).decode("ascii").upper() if m else None


def _json_object(payload: bytes) -> bytes:
    # a cheap framing check; the decoder validates the JSON itself
    if len(payload) < 2 or payload[:1] != b"{" or payload[-1:] != b"}":
        raise _Corrupt("not_a_json_object")
    return payload


def seconds_to_ns(text: bytes) -> int:
    """``b"1617566591.326123"`` -> 1617566591326123000, exactly."""
    m = _SECONDS.match(text)
    if m is None:
        raise _Corrupt("bad_timestamp")
    frac = (m.group(2) or b"")[:9].ljust(9, b"0")
    return int(m.group(1)) * 1_000_000_000 + int(frac)


def _hft_parser(path: Path) -> Callable[[bytes], Frame | None]:
    file_symbol = path.name.split("_", 1)[0].upper() if "_" in path.name else None

    def parse(line: bytes) -> Frame | None:
        ts, sep, payload = line.partition(b" ")
        if not sep or not _DIGITS.match(ts):
            raise _Corrupt("bad_timestamp")
        recv = int(ts)
        if recv < _US_BELOW:
            recv *= 1000
        _json_object(payload)
        if payload.startswith(b'{"lastUpdateId"'):
            return Frame(recv, KIND_SNAPSHOT, payload, file_symbol)
        return Frame(recv, KIND_WS, payload, _ws_symbol(payload))

    return parse


def _cryptofeed_parser(path: Path) -> Callable[[bytes], Frame | None]:
    def parse(line: bytes) -> Frame | None:
        if line.startswith(b"configuration: "):
            return None
        if line.startswith(b"wss://") or line.startswith(b"ws://"):
            url, sep, ts = line.partition(b" <-> ")
            if not sep:
                raise _Corrupt("bad_connect_line")
            return Frame(seconds_to_ns(ts), KIND_CONNECT, url, None)
        if line.startswith(b"http://") or line.startswith(b"https://"):
            url, sep, rest = line.partition(b" -> ")
            ts, sep2, body = rest.partition(b": ")
            if not sep or not sep2:
                raise _Corrupt("bad_rest_line")
            recv = seconds_to_ns(ts)
            _json_object(body)
            path_part = url.split(b"?", 1)[0]
            if path_part.endswith(b"/depth"):
                m = _URL_SYMBOL.search(url)
                return Frame(recv, KIND_SNAPSHOT, body, m.group(1).decode("ascii").upper() if m else None)
            if path_part.endswith(b"/exchangeInfo"):
                return Frame(recv, KIND_EXCHANGE_INFO, body, None)
            raise _Corrupt("unknown_rest_url")
        ts, sep, payload = line.partition(b": ")
        if not sep:
            raise _Corrupt("unrecognised_line")
        recv = seconds_to_ns(ts)
        _json_object(payload)
        return Frame(recv, KIND_WS, payload, _ws_symbol(payload))

    return parse


_OWN_KINDS = {k.encode(): k for k in FRAME_KINDS}


def _own_parser(path: Path) -> Callable[[bytes], Frame | None]:
    def parse(line: bytes) -> Frame | None:
        if line.startswith(b"#"):
            return None
        parts = line.split(b" ", 3)
        if len(parts) != 4:
            raise _Corrupt("too_few_fields")
        ts, kind, sym, payload = parts
        if not _DIGITS.match(ts):
            raise _Corrupt("bad_timestamp")
        k = _OWN_KINDS.get(kind)
        if k is None:
            raise _Corrupt("unknown_kind")
        if sym == b"-":
            symbol = None
        elif sym.isascii() and sym.isalnum():
            symbol = sym.decode("ascii")
        else:
            raise _Corrupt("bad_symbol")
        if k != KIND_CONNECT:
            _json_object(payload)
        if symbol is None and k == KIND_WS:
            symbol = _ws_symbol(payload)  # the feed records ws frames without one
        return Frame(int(ts), k, payload, symbol)

    return parse


_OWN_LINE = re.compile(rb"^[0-9]+ (ws|depth_snapshot|exchange_info|connect) \S+ ")
_HFT_LINE = re.compile(rb"^[0-9]+ \{")
_CF_LINE = re.compile(rb"^(wss?://|https?://|configuration: |[0-9]+(\.[0-9]*)?: )")


def _detect(line: bytes) -> str | None:
    if line.startswith(OWN_HEADER) or _OWN_LINE.match(line):
        return FORMAT_RINGTRADER
    if _HFT_LINE.match(line):
        return FORMAT_HFTBACKTEST
    if _CF_LINE.match(line):
        return FORMAT_CRYPTOFEED
    return None


_PARSERS = {FORMAT_HFTBACKTEST: _hft_parser, FORMAT_CRYPTOFEED: _cryptofeed_parser, FORMAT_RINGTRADER: _own_parser}


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _lines(path: Path, stats: ReaderStats) -> Iterator[bytes]:
    """Lines without their line ending; a cut gzip stream ends the file (counted)."""
    f = _open(path)
    try:
        while True:
            try:
                line = f.readline()
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
                stats.skip("truncated_file", path, stats.lines, repr(exc).encode())
                return
            if not line:
                return
            yield line.rstrip(b"\r\n")
    finally:
        f.close()


def detect_format(path: str | os.PathLike) -> str | None:
    """The recording format of ``path``, or None if no known format (or empty)."""
    path = Path(path)
    seen = 0
    for line in _lines(path, ReaderStats()):
        if not line:
            continue
        fmt = _detect(line)
        if fmt is not None:
            return fmt
        seen += 1
        if seen >= _DETECT_LINES:
            break
    return None


def iter_frames(path: str | os.PathLike, stats: ReaderStats | None = None) -> Iterator[Frame]:
    """Frames of one recording file in file order (auto-detects the format).

    ``stats`` (optional) accumulates line counts and skipped lines.
    Raises ``RecordingFormatError`` if the file is not empty and no known
    format matches its first lines.
    """
    path = Path(path)
    stats = stats if stats is not None else ReaderStats()
    fmt = detect_format(path)
    if fmt is None:
        with _open(path) as f:
            try:
                empty = not f.read(4096).strip()
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
                empty = False
        if empty:
            return
        raise RecordingFormatError(f"{path}: not a hftbacktest, cryptofeed or ringtrader recording")
    parse = _PARSERS[fmt](path)
    for line_no, line in enumerate(_lines(path, stats), 1):
        stats.lines += 1
        if not line:
            stats.blank += 1
            continue
        try:
            frame = parse(line)
        except _Corrupt as bad:
            stats.skip(bad.reason, path, line_no, line)
            continue
        if frame is None:
            stats.ignored += 1
            continue
        stats.frames += 1
        stats.by_kind[frame.kind] = stats.by_kind.get(frame.kind, 0) + 1
        yield frame


def iter_session(paths: Iterable[str | os.PathLike], stats: ReaderStats | None = None) -> Iterator[Frame]:
    """Several files as one continuous session, in the order given."""
    for path in paths:
        yield from iter_frames(path, stats)


def iter_merged(paths: Iterable[str | os.PathLike], stats: ReaderStats | None = None) -> Iterator[Frame]:
    """Frames of several files merged by ``recv_ns``; ties keep the order of ``paths``.

    Each file must itself be in receive order (every recorder writes that way).
    """
    return heapq.merge(*(iter_frames(p, stats) for p in paths), key=lambda f: f.recv_ns)


_CF_SPLIT = re.compile(r"^(?P<venue>[A-Z_]+)(?:\.(?P<part>http|ws)\.(?P<n>[0-9]+))?\.0$")
_CF_SINGLE = re.compile(r"^(?P<venue>[A-Z_]+)-[0-9a-f]+\.0$")


def recording_dir_files(folder: str | os.PathLike, venue: str = "BINANCE") -> list[Path]:
    """The cryptofeed files of ``venue`` in ``folder``: ``X.0``, ``X.http.N.0``, ``X.ws.N.0`` or ``X-<id>.0``."""
    folder = Path(folder)
    found = []
    for p in folder.iterdir():
        m = _CF_SPLIT.match(p.name) or _CF_SINGLE.match(p.name)
        if m is None or m.group("venue") != venue:
            continue
        part = m.groupdict().get("part")
        order = {None: 0, "http": 1, "ws": 2}[part]
        found.append((order, int(m.groupdict().get("n") or 0), p.name, p))
    return [p for *_, p in sorted(found)]


def iter_recording_dir(folder: str | os.PathLike, venue: str = "BINANCE",
                       stats: ReaderStats | None = None) -> Iterator[Frame]:
    """One cryptofeed recording (all files of ``venue`` in ``folder``) in receive-time order.

    The split files (exchangeInfo, REST snapshots, stream) are merged by
    ``recv_ns``, stably (ties: exchangeInfo file, then http, then ws), so a
    snapshot lands among the diffs where the recorder received it.
    """
    files = recording_dir_files(folder, venue)
    if not files:
        raise FileNotFoundError(f"no {venue} cryptofeed recording files in {folder}")
    return iter_merged(files, stats)


# ---------------------------------------------------------------------------
# ringtrader's own recording: writer
# ---------------------------------------------------------------------------
class RecordingWriter:
    """Append frames to rotating gzip files ``<directory>/<prefix>.<utc>.<seq>.gz``.

    A file is closed (flushed, gzip trailer written) before the next one is
    opened, so rotation never loses or splits a frame. Files of one writer
    share the UTC start stamp and count up ``seq``; sorted file names are
    session order (``files()``). ``rotate_bytes`` counts uncompressed bytes;
    ``rotate_seconds`` is measured on ``clock`` (monotonic seconds).

    A disk that fails (full, an I/O error) never reaches the caller: the feed
    calls ``write`` before it decodes a frame, and an exception there would
    drop the frame from the market data too. The writer counts the error
    (``errors``), abandons the file it was writing (cut short: readers keep
    every whole line before the cut and count ``truncated_file``), drops
    frames (``dropped``, ``write`` returns False) and tries a new file
    ``retry_s`` later, until the disk takes it. Logged when it fails and
    when a new file takes frames again (at most once per ``retry_s``).

    Not thread-safe: one writer per thread.
    """

    def __init__(self, directory: str | os.PathLike, prefix: str, rotate_bytes: int = 256 << 20,
                 rotate_seconds: float = 3600.0, *, compresslevel: int = 1,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 retry_s: float = 5.0):
        if not prefix or not re.fullmatch(r"[A-Za-z0-9_\-]+", prefix):
            raise ValueError(f"prefix must be [A-Za-z0-9_-]+, got {prefix!r}")
        if rotate_bytes <= 0 or rotate_seconds <= 0:
            raise ValueError(f"rotate_bytes and rotate_seconds must be > 0, got {rotate_bytes}, {rotate_seconds}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.compresslevel = compresslevel
        self._clock = clock
        self._stamp = datetime.fromtimestamp(wall_clock(), timezone.utc).strftime("%Y%m%dT%H%M%S")
        self._seq = 0
        self._file = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self.written = 0  # frames written
        self.rejected = 0  # frames refused (CR/LF in payload)
        self.errors = 0  # OSErrors from the disk (each abandons the current file)
        self.dropped = 0  # frames not recorded because the disk failed
        self.retry_s = retry_s
        self._down_until: float | None = None  # the disk failed: no write before this (clock seconds)
        self._outage = False  # between a disk error and the next frame written
        self.paths: list[Path] = []  # files this writer created, in order

    def _open_next(self) -> None:
        while True:
            path = self.directory / f"{self.prefix}.{self._stamp}.{self._seq:06d}.gz"
            self._seq += 1
            try:
                raw = open(path, "xb")  # never clobber another writer's file
            except FileExistsError:
                continue
            break
        self._file = gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=self.compresslevel)
        self._raw = raw
        self._path = path
        self.paths.append(path)
        self._opened_at = self._clock()
        header = OWN_HEADER + b" created_utc=" + self._stamp.encode() + b"\n"
        self._file.write(header)
        self._bytes = len(header)

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()  # writes the gzip trailer
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            self._file = None

    def write(self, recv_ns: int, kind: str, payload: bytes, symbol: str | None = None) -> bool:
        """Append one frame. Returns False (and counts ``rejected``) if ``payload`` has CR/LF."""
        if kind not in FRAME_KINDS:
            raise ValueError(f"kind must be one of {FRAME_KINDS}, got {kind!r}")
        if symbol is None:
            sym = b"-"
        elif isinstance(symbol, str) and symbol.isascii() and symbol.isalnum():
            sym = symbol.encode("ascii")
        else:
            raise ValueError(f"symbol must be ASCII alphanumeric or None, got {symbol!r}")
        if type(payload) is not bytes:
            payload = bytes(payload)  # memoryview/bytearray: `in` must search bytes, not items
        if b"\n" in payload or b"\r" in payload:
            self.rejected += 1
            if self.rejected == 1:
                log.warning("recording: refused a %s payload containing CR/LF (logged once): %r",
                            kind, payload[:120])
            return False
        line = b"%d %s %s %s\n" % (int(recv_ns), kind.encode(), sym, payload)
        if self._down_until is not None:
            if self._clock() < self._down_until:
                self.dropped += 1
                return False
            self._down_until = None
        try:
            if self._file is None:
                self._open_next()
            elif self._bytes + len(line) > self.rotate_bytes or self._clock() - self._opened_at >= self.rotate_seconds:
                self._close_current()
                self._open_next()
            self._file.write(line)
        except OSError as exc:  # a full or failing disk: recording stops for retry_s, the market data does not
            self._disk_failed(exc)
            return False
        if self._outage:
            self._outage = False
            log.warning("recording: writing again to %s (%d frames dropped in all)", self._path, self.dropped)
        self._bytes += len(line)
        self.written += 1
        return True

    def _disk_failed(self, exc: OSError) -> None:
        self.errors += 1
        self.dropped += 1
        if not self._outage:  # once per outage
            self._outage = True
            log.error("recording: %s writing %s: frames are dropped (the market data is not); a new file is "
                      "tried every %.0f s", exc, self._path, self.retry_s)
        if self._file is not None:  # abandoned, cut short: no trailer (it would fail the same way)
            gz, raw = self._file, self._raw
            self._file = None
            gz.fileobj = None  # so its close (or its finalizer) writes nothing more
            try:
                raw.close()  # the fd is closed even when the flush of its buffer fails
            except OSError:
                pass
        self._bytes = 0
        self._down_until = self._clock() + self.retry_s

    def flush(self) -> None:
        """Make everything written so far readable by a concurrent reader (gzip sync flush)."""
        if self._file is not None:
            try:
                self._file.flush()
                self._raw.flush()
            except OSError as exc:
                self._disk_failed(exc)

    def close(self) -> None:
        try:
            self._close_current()
        except OSError as exc:
            self._disk_failed(exc)

    def files(self) -> list[Path]:
        """All ``<prefix>.*.gz`` files in the directory (this and earlier writers), in session order."""
        return list_recording_files(self.directory, self.prefix)

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_recording_files(directory: str | os.PathLike, prefix: str) -> list[Path]:
    """ringtrader recording files ``<prefix>.<utc>.<seq>.gz`` in ``directory``, oldest first."""
    pat = re.compile(re.escape(prefix) + r"\.[0-9]{8}T[0-9]{6}\.[0-9]{6}\.gz$")
    return sorted(p for p in Path(directory).iterdir() if pat.match(p.name))


__all__ = [
    "FRAME_KINDS", "KIND_CONNECT", "KIND_EXCHANGE_INFO", "KIND_SNAPSHOT", "KIND_WS", "Frame",
    "ReaderStats", "RecordingFormatError", "RecordingWriter", "detect_format", "iter_frames",
    "iter_merged", "iter_recording_dir", "iter_session", "list_recording_files", "recording_dir_files",
    "seconds_to_ns",
]

"""Recording readers (hftbacktest, cryptofeed, ringtrader) and the rotating writer.

Counts are the ones in ../shared/data/SOURCES.md, so a reader that drops,
duplicates or misclassifies a line fails here.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson
import pytest

from core.recordings import (
    KIND_CONNECT,
    KIND_EXCHANGE_INFO,
    KIND_SNAPSHOT,
    KIND_WS,
    Frame,
    ReaderStats,
    RecordingFormatError,
    RecordingWriter,
    detect_format,
    iter_frames,
    iter_merged,
    iter_recording_dir,
    iter_session,
    list_recording_files,
    recording_dir_files,
    seconds_to_ns,
)


def stream_counts(frames) -> Counter:
    """(symbol, stream type) -> count for ws frames; ("snap", symbol) for snapshots."""
    c = Counter()
    for f in frames:
        if f.kind == KIND_WS:
            obj = orjson.loads(f.payload)
            data = obj["data"]
            etype = data.get("e", "bookTicker")
            c[(data["s"], etype)] += 1
            assert f.symbol == data["s"], "Frame.symbol must be the event's symbol"
        else:
            c[(f.kind, f.symbol)] += 1
    return c


# ---------------------------------------------------------------------------
# hftbacktest
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sym, day1, day2, snap_id, trades, tickers",
    [
        ("BTCUSDT", 3451, 3044, 50093239218, (9757, 10147), (28040, 45134)),
        ("ETHUSDT", 3434, 3036, 35346513512, (6106, 8409), (24077, 34681)),
    ],
)
def test_hftbacktest_2024_counts_match_sources(shared_data, sym, day1, day2, snap_id, trades, tickers):
    d = shared_data / "hftbacktest"
    f1 = list(iter_frames(d / f"{sym.lower()}_20240808.gz"))
    f2 = list(iter_frames(d / f"{sym.lower()}_20240809.gz"))
    c1, c2 = stream_counts(f1), stream_counts(f2)
    assert (c1[(sym, "depthUpdate")], c2[(sym, "depthUpdate")]) == (day1, day2)
    assert (c1[(sym, "trade")], c2[(sym, "trade")]) == trades
    assert (c1[(sym, "bookTicker")], c2[(sym, "bookTicker")]) == tickers
    snaps = [f for f in f1 + f2 if f.kind == KIND_SNAPSHOT]
    assert len(snaps) == 1
    assert snaps[0].symbol == sym  # from the file name: the line carries none
    assert orjson.loads(snaps[0].payload)["lastUpdateId"] == snap_id
    # receive times are ns, non-decreasing over the two files as one session
    session = list(iter_session([d / f"{sym.lower()}_20240808.gz", d / f"{sym.lower()}_20240809.gz"]))
    assert len(session) == len(f1) + len(f2)
    assert all(a.recv_ns <= b.recv_ns for a, b in zip(session, session[1:]))
    assert 1_723_161_000 * 10**9 < session[0].recv_ns < session[-1].recv_ns < 1_723_162_000 * 10**9


def test_hftbacktest_btc_snapshot_is_line_8_with_exact_bytes(shared_data):
    path = shared_data / "hftbacktest" / "btcusdt_20240808.gz"
    frames = list(iter_frames(path))
    with gzip.open(path, "rb") as f:
        raw = f.read().split(b"\n")[7]
    ts, _, body = raw.partition(b" ")
    assert frames[7] == Frame(int(ts), KIND_SNAPSHOT, body, "BTCUSDT")
    body_obj = orjson.loads(frames[7].payload)
    assert len(body_obj["bids"]) == 1000 and len(body_obj["asks"]) == 1000


def test_hftbacktest_2023_microseconds_become_ns(shared_data):
    stats = ReaderStats()
    frames = list(iter_frames(shared_data / "hftbacktest" / "btcusdt_20230405.dat.gz", stats))
    assert frames[0].recv_ns == 1680652800004107 * 1000
    c = stream_counts(frames)
    assert c[("BTCUSDT", "depthUpdate")] == 3929
    assert c[("BTCUSDT", "trade")] == 3144
    assert c[("BTCUSDT", "bookTicker")] == 8015
    assert not any(f.kind == KIND_SNAPSHOT for f in frames)
    assert stats.skipped == 0 and stats.frames == len(frames) == 15088


# ---------------------------------------------------------------------------
# cryptofeed
# ---------------------------------------------------------------------------
def test_cryptofeed_2021_04_04_single_file_counts(shared_data):
    stats = ReaderStats()
    folder = shared_data / "cryptofeed" / "2021-04-04_2997020"
    frames = list(iter_recording_dir(folder, "BINANCE", stats))
    c = stream_counts(frames)
    diffs = tuple(c[(s, "depthUpdate")] for s in ("BTCUSDT", "ETHUSDT", "DOTUSDT"))
    assert diffs == (899, 909, 880)
    assert (c[("BTCUSDT", "aggTrade")], c[("ETHUSDT", "aggTrade")], c[("DOTUSDT", "aggTrade")]) == (1227, 506, 177)
    assert sum(v for (s, e), v in c.items() if e == "kline") == 118
    snaps = {f.symbol: orjson.loads(f.payload)["lastUpdateId"] for f in frames if f.kind == KIND_SNAPSHOT}
    assert snaps == {"BTCUSDT": 9893033066, "ETHUSDT": 6591598839, "DOTUSDT": 1513939277}
    connects = [f for f in frames if f.kind == KIND_CONNECT]
    assert len(connects) == 1 and connects[0].payload.startswith(b"wss://stream.binance.com:9443/stream?streams=")
    assert connects[0].recv_ns == 1617566590378895000  # "<-> 1617566590.378895", exactly
    assert frames[1].recv_ns == 1617566591326123000  # "1617566591.326123: {...}"
    assert stats.skipped == 0


@pytest.mark.parametrize(
    "folder, venue, diffs, snaps, tickers, aggs, klines",
    [
        ("2021-04-05_7136ce8", "BINANCE", 4709, 10, 5408, 1240, 0),
        ("2021-04-05_7136ce8", "BINANCE_US", 3196, 10, 2624, 188, 0),
        ("2021-04-17_be4e5c8", "BINANCE", 614, 10, 570, 24, 20),
        ("2021-04-17_be4e5c8", "BINANCE_US", 807, 10, 458, 18, 0),
        ("2021-08-14_cb63e8d", "BINANCE", 546, 4, 412, 28, 17),
        ("2021-08-14_cb63e8d", "BINANCE_US", 361, 4, 241, 3, 3),
        ("2021-10-12_ce58c2a", "BINANCE", 177, 4, 84, 2, 2),
        ("2021-10-12_ce58c2a", "BINANCE_US", 336, 4, 128, 11, 5),
    ],
)
def test_cryptofeed_recordings_counts_and_time_order(shared_data, folder, venue, diffs, snaps, tickers, aggs, klines):
    stats = ReaderStats()
    frames = list(iter_recording_dir(shared_data / "cryptofeed" / folder, venue, stats))
    c = stream_counts(frames)
    per_type = Counter()
    for (_, e), v in c.items():
        per_type[e] += v
    assert per_type["depthUpdate"] == diffs
    assert per_type["bookTicker"] == tickers
    assert per_type["aggTrade"] == aggs
    assert per_type["kline"] == klines
    assert stats.by_kind.get(KIND_SNAPSHOT, 0) == snaps
    assert all(a.recv_ns <= b.recv_ns for a, b in zip(frames, frames[1:]))
    assert stats.skipped == 0
    files = recording_dir_files(shared_data / "cryptofeed" / folder, venue)
    if len(files) == 3:  # split recording: exchangeInfo, http, ws
        assert [f.name.split(".")[1] for f in files] == ["0", "http", "ws"]
        assert stats.by_kind[KIND_EXCHANGE_INFO] == 1
        assert frames[0].kind == KIND_EXCHANGE_INFO  # fetched first, so merged first


def test_cryptofeed_split_merge_puts_each_snapshot_where_the_diffs_bridge_it(shared_data):
    """Merged by receive time, every snapshot is followed by the diff that bridges it (U <= L+1 <= u)."""
    frames = list(iter_recording_dir(shared_data / "cryptofeed" / "2021-04-17_be4e5c8", "BINANCE"))
    checked = 0
    for i, f in enumerate(frames):
        if f.kind != KIND_SNAPSHOT:
            continue
        last_id = orjson.loads(f.payload)["lastUpdateId"]
        for g in frames[i + 1:]:
            if g.kind == KIND_WS and g.symbol == f.symbol and b"depthUpdate" in g.payload:
                d = orjson.loads(g.payload)["data"]
                if d["u"] <= last_id:
                    continue
                assert d["U"] <= last_id + 1 <= d["u"], f"{f.symbol}: first diff after snapshot does not bridge it"
                checked += 1
                break
    assert checked == 10


def test_recording_dir_does_not_mix_venues(shared_data):
    folder = shared_data / "cryptofeed" / "2021-04-17_be4e5c8"
    assert [p.name for p in recording_dir_files(folder, "BINANCE")] == [
        "BINANCE.0", "BINANCE.http.0.0", "BINANCE.ws.1.0"]
    assert [p.name for p in recording_dir_files(folder, "BINANCE_US")] == [
        "BINANCE_US.0", "BINANCE_US.http.2.0", "BINANCE_US.ws.3.0"]
    with pytest.raises(FileNotFoundError):
        iter_recording_dir(folder, "KRAKEN")


def test_seconds_to_ns_is_exact():
    assert seconds_to_ns(b"1617566592.1065369") == 1617566592106536900
    assert seconds_to_ns(b"1618677408.2868") == 1618677408286800000
    assert seconds_to_ns(b"1618677408") == 1618677408000000000
    with pytest.raises(ValueError):
        seconds_to_ns(b"16186x7408.1")


# ---------------------------------------------------------------------------
# corrupt input
# ---------------------------------------------------------------------------
def _real_lines(path: Path, n: int) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return [f.readline().rstrip(b"\n") for _ in range(n)]


def test_corrupt_hftbacktest_lines_are_counted_and_skipped(shared_data, tmp_path):
    good = _real_lines(shared_data / "hftbacktest" / "ethusdt_20240808.gz", 8)
    bad = [
        b"17231612540246195x {\"stream\":\"x\"}",  # bad timestamp
        b"1723161254024619568",  # no payload
        good[2][:60],  # line cut mid-JSON
        b"\xff\xfe\x00garbage",
    ]
    lines = good[:3] + bad[:2] + good[3:6] + bad[2:] + good[6:]
    path = tmp_path / "ethusdt_20240808.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    stats = ReaderStats()
    frames = list(iter_frames(path, stats))
    assert [f.payload for f in frames] == [ln.partition(b" ")[2] for ln in good]
    assert stats.skipped == 4
    assert stats.reasons == {"bad_timestamp": 3, "not_a_json_object": 1}
    assert [f.symbol for f in frames if f.kind == KIND_SNAPSHOT] == ["ETHUSDT"]


def test_corrupt_cryptofeed_lines_are_counted_and_skipped(shared_data, tmp_path):
    good = _real_lines(shared_data / "cryptofeed" / "2021-04-04_2997020" / "BINANCE-ee25be.0", 8)
    bad = [
        b"1617566591.3x6123: {\"stream\":1}",  # bad timestamp
        b"https://www.binance.com/api/v1/depth?symbol=BTCUSDT&limit=1000 1617566592.1: {}",  # no ' -> '
        b"wss://stream.binance.com:9443/stream?streams=x 1617566590.3",  # no ' <-> '
        b"https://api.binance.com/api/v3/ticker/price -> 1617566592.1: {\"a\":1}",  # REST we do not record
        b"what is this line",
        good[1][:50],  # cut mid-frame
    ]
    path = tmp_path / "BINANCE-deadbe.0"
    path.write_bytes(b"\n".join(good[:4] + bad + good[4:]) + b"\n\n")
    stats = ReaderStats()
    frames = list(iter_frames(path, stats))
    assert len(frames) == 8
    assert stats.skipped == len(bad)
    assert stats.reasons["unknown_rest_url"] == 1 and stats.reasons["bad_timestamp"] == 1
    assert stats.blank == 1


def test_truncated_gzip_yields_the_whole_lines_before_the_cut(shared_data, tmp_path):
    src = shared_data / "hftbacktest" / "btcusdt_20230405.dat.gz"
    data = src.read_bytes()
    cut = tmp_path / "btcusdt_20230405.dat.gz"
    cut.write_bytes(data[: len(data) // 2])
    stats = ReaderStats()
    frames = list(iter_frames(cut, stats))
    full = list(iter_frames(src))
    assert 1000 < len(frames) < len(full)
    # the last line before the cut may itself be cut: it is skipped, not yielded torn
    assert frames == full[: len(frames)]
    assert stats.reasons.get("truncated_file") == 1


def test_unknown_file_format_raises_and_empty_file_yields_nothing(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"hello\nworld\n")
    with pytest.raises(RecordingFormatError):
        list(iter_frames(junk))
    empty = tmp_path / "empty.gz"
    empty.write_bytes(gzip.compress(b""))
    assert list(iter_frames(empty)) == []


# ---------------------------------------------------------------------------
# ringtrader's own format
# ---------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_writer_reader_round_trip_with_size_rotation(shared_data, tmp_path):
    frames = list(iter_recording_dir(shared_data / "cryptofeed" / "2021-10-12_ce58c2a", "BINANCE"))
    kinds = {f.kind for f in frames}
    assert kinds == {KIND_WS, KIND_SNAPSHOT, KIND_EXCHANGE_INFO, KIND_CONNECT}
    with RecordingWriter(tmp_path, "md", rotate_bytes=20_000) as w:
        for f in frames:
            assert w.write(f.recv_ns, f.kind, f.payload, f.symbol)
    files = list_recording_files(tmp_path, "md")
    assert files == w.paths and len(files) >= 5
    for p in files:
        raw = gzip.decompress(p.read_bytes())  # every file is a complete gzip member
        assert raw.endswith(b"\n")
        lines = raw.count(b"\n")
        assert len(raw) <= 20_000 or lines == 2, "rotation keeps files under rotate_bytes unless one frame is bigger"
        assert detect_format(p) == "ringtrader"
    stats = ReaderStats()
    back = list(iter_session(files, stats))
    assert back == frames  # recv_ns, kind, exact payload bytes, symbol (None included)
    assert stats.skipped == 0 and stats.ignored == len(files)  # one header per file
    assert w.written == len(frames)


def test_writer_rotates_by_time_and_never_clobbers(tmp_path):
    clock = FakeClock()
    w = RecordingWriter(tmp_path, "md", rotate_seconds=10, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    payload = b'{"stream":"btcusdt@trade","data":{}}'
    for k in range(6):
        w.write(k, KIND_WS, payload, "BTCUSDT")
        clock.t += 4  # a file spans 10 s: frames at 0, 4, 8 | 12, 16, 20 ...
    w.close()
    assert len(w.paths) == 2
    # a second writer started in the same second must not overwrite the first one's files
    w2 = RecordingWriter(tmp_path, "md", rotate_seconds=10, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    w2.write(99, KIND_CONNECT, b"wss://127.0.0.1:9443/stream?streams=btcusdt@trade")
    w2.close()
    files = list_recording_files(tmp_path, "md")
    assert len(files) == 3 and files[:2] == w.paths
    back = list(iter_session(files))
    assert [f.recv_ns for f in back] == [0, 1, 2, 3, 4, 5, 99]
    assert back[-1] == Frame(99, KIND_CONNECT, b"wss://127.0.0.1:9443/stream?streams=btcusdt@trade", None)


class FillingDisk:
    """``open`` for ``core.recordings`` whose files refuse every write with ENOSPC while ``full`` is set."""

    def __init__(self):
        self.full = False

    def __call__(self, path, mode="r", *a, **k):
        import builtins
        import errno

        if "r" in mode:
            return builtins.open(path, mode, *a, **k)
        f = builtins.open(path, mode, *a, buffering=0, **k)  # unbuffered: each gzip write reaches the disk
        disk = self

        class File:
            def write(self, b):
                if disk.full:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return f.write(b)

            def __getattr__(self, name):
                return getattr(f, name)

        return File()


def test_a_full_disk_drops_recorded_frames_never_raises_and_recording_resumes_in_a_new_file(tmp_path, monkeypatch,
                                                                                          caplog):
    """The feed records a frame before it decodes it: an OSError out of ``write`` would drop the frame from the
    market data as well (it did, with a traceback per frame, in scripts/chaos.py's disk_full scenario)."""
    import core.recordings as recordings

    disk = FillingDisk()
    monkeypatch.setattr(recordings, "open", disk, raising=False)
    clock = FakeClock()
    w = RecordingWriter(tmp_path, "md", clock=clock, retry_s=5.0)
    payload = b'{"stream":"btcusdt@trade","data":{"x":"%s"}}'
    assert all(w.write(k, KIND_WS, payload % str(k).encode()) for k in range(3))
    w.flush()
    disk.full = True
    results = [w.write(10 + k, KIND_WS, payload % b"x" * 50) for k in range(200)]  # no exception, ever
    assert results.count(False) >= 1 and w.errors == 1  # one error: then dropped without touching the disk
    assert w.dropped == results.count(False) and not any(results[results.index(False):])
    clock.t += 5.0
    disk.full = False
    assert w.write(500, KIND_WS, payload % b"again")
    w.close()
    assert len(w.paths) == 2  # the failed file was abandoned, a new one took the frames after the outage
    stats = ReaderStats()
    back = [f.recv_ns for f in iter_session(w.paths, stats)]
    assert back[:3] == [0, 1, 2] and back[-1] == 500  # whole lines before the cut survive, then the new file
    logged = [(r.levelname, r.getMessage().split(" ")[1]) for r in caplog.records
              if r.getMessage().startswith("recording: ")]
    assert logged == [("ERROR", "[Errno"), ("WARNING", "writing")]  # one line as it failed, one as it resumed


def test_own_format_ws_frame_written_without_symbol_reads_back_with_it(tmp_path):
    frame = b'{"stream":"ethusdt@trade","data":{"e":"trade","s":"ETHUSDT"}}'
    with RecordingWriter(tmp_path, "md") as w:
        w.write(1, KIND_WS, frame)  # what the feed does: it does not look inside the frame
    (back,) = list(iter_session(w.paths))
    assert back == Frame(1, KIND_WS, frame, "ETHUSDT")


def test_writer_refuses_payload_with_newline_and_bad_arguments(tmp_path):
    with RecordingWriter(tmp_path, "md") as w:
        assert w.write(1, KIND_WS, b'{"a":\n1}') is False
        assert w.write(2, KIND_WS, b'{"a":1}\r') is False
        assert w.write(3, KIND_WS, b'{"a":1}', "BTCUSDT") is True
        assert w.write(4, KIND_WS, memoryview(b'{"a":\n2}')) is False  # picows hands out memoryviews
        assert w.write(5, KIND_WS, memoryview(b'{"a":2}')) is True
        with pytest.raises(ValueError):
            w.write(6, "kline", b"{}")
        with pytest.raises(ValueError):
            w.write(7, KIND_WS, b"{}", "BTC USDT")
    assert w.rejected == 3 and w.written == 2
    assert [f.recv_ns for f in iter_session(w.paths)] == [3, 5]


def test_corrupt_own_format_lines_are_counted_and_skipped(tmp_path):
    lines = [
        b"# ringtrader-recording v1 created_utc=20240101T000000",
        b'1 ws BTCUSDT {"a":1}',
        b'2 kline BTCUSDT {"a":1}',  # unknown kind
        b"3 ws BTCUSDT",  # no payload
        b'x4 ws - {"a":1}',  # bad timestamp
        b'5 depth_snapshot B%D {"a":1}',  # bad symbol
        b'6 ws - {"a":1',  # cut
        b'7 depth_snapshot BTCUSDT {"lastUpdateId":1,"bids":[],"asks":[]}',
    ]
    path = tmp_path / "md.20240101T000000.000000.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    stats = ReaderStats()
    frames = list(iter_frames(path, stats))
    assert [(f.recv_ns, f.kind, f.symbol) for f in frames] == [(1, KIND_WS, "BTCUSDT"), (7, KIND_SNAPSHOT, "BTCUSDT")]
    assert stats.skipped == 5
    assert stats.reasons == {"unknown_kind": 1, "too_few_fields": 1, "bad_timestamp": 1, "bad_symbol": 1,
                             "not_a_json_object": 1}


def test_merged_hftbacktest_files_interleave_by_time(shared_data):
    d = shared_data / "hftbacktest"
    merged = list(iter_merged([d / "btcusdt_20230405.dat.gz", d / "btcusdt_20230405.dat.gz"]))
    assert len(merged) == 2 * 15088
    assert all(a.recv_ns <= b.recv_ns for a, b in zip(merged, merged[1:]))
    assert merged[0] == merged[1]  # ties keep both, in path order

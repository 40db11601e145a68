"""Shared fixtures: the recorded data folder, and a guarantee that no test leaves
shared-memory segments behind (even when it fails)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from core.numba_cache import configure, ensure_compiled

# Before anything imports numba: the keyed cache dir (absolute, in os.environ,
# so processes that tests start in other working directories share it).
configure()
# Every pipeline kernel compiled by one process before any test starts several (a no-op when the venv set-up
# or an earlier run already did it): concurrent compiles of one function can corrupt numba's cache.
# RINGTRADER_TEST_NO_WARM=1 skips it for a focused run of tests that start no pipeline process (unit tests of
# one module's kernels, compiled by this pytest process alone).
if os.environ.get("RINGTRADER_TEST_NO_WARM") != "1":
    ensure_compiled(str(Path(__file__).resolve().parents[1] / "config" / "system.json"))

from ringbuffers.ring import SEGMENT_PREFIX, SHM_DIR  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (PROJECT_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"recorded data not found at {SHARED_DATA} (expected ../shared/data beside the project)")
    return SHARED_DATA


# Instances made by this pytest run share this prefix, so concurrent runs never
# judge (or clean) each other's segments.
INSTANCE_PREFIX = f"test-{os.getpid()}-"


def new_instance() -> str:
    """A unique ring instance name for this run (use it in tests that start processes)."""
    return f"{INSTANCE_PREFIX}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def instance() -> str:
    """A unique ring instance name; every segment of it is removed after the test."""
    name = new_instance()
    yield name
    for seg in os.listdir(SHM_DIR):
        if seg.startswith(f"{SEGMENT_PREFIX}{name}."):
            os.unlink(os.path.join(SHM_DIR, seg))


def _ours() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith(SEGMENT_PREFIX + INSTANCE_PREFIX)}


@pytest.fixture(autouse=True, scope="session")
def no_segments_left_behind():
    """After the whole session: fail if a test segment survived, and remove it."""
    before = _ours()
    yield
    leaked = _ours() - before
    for name in leaked:
        os.unlink(os.path.join(SHM_DIR, name))
    assert not leaked, f"tests left shared-memory segments behind: {sorted(leaked)}"


JOURNAL_DIR = PROJECT_ROOT / "var" / "journal"


@pytest.fixture(autouse=True, scope="session")
def no_journals_left_behind():
    """Stage processes started by tests journal under var/journal/<instance>.sqlite (configs built from
    config/system.json): remove every journal file this session created (the developer's own stay)."""
    def files() -> set:
        return set(JOURNAL_DIR.glob("*.sqlite*")) if JOURNAL_DIR.is_dir() else set()

    existed = JOURNAL_DIR.is_dir()
    before = files()
    yield
    for f in files() - before:
        try:
            f.unlink()
        except OSError:
            pass
    if not existed and JOURNAL_DIR.is_dir() and not any(JOURNAL_DIR.iterdir()):
        JOURNAL_DIR.rmdir()
        if not any(JOURNAL_DIR.parent.iterdir()):
            JOURNAL_DIR.parent.rmdir()

"""Attach checks, permissions, cleanup of segments left by dead owners."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from ringbuffers.errors import RingMismatchError, RingNotFoundError
from core.records import BENCH, MD_EVENT
from ringbuffers.ring import (
    H_OWNER_PID,
    H_VERSION,
    LAYOUT_VERSION,
    Ring,
    list_segments,
    remove_stale,
    segment_name,
)


def test_attach_to_missing_segment_names_it(instance):
    name = segment_name(instance, "nothing")
    with pytest.raises(RingNotFoundError, match=name):
        Ring.attach(name, BENCH, 0)


def test_attach_with_other_dtype_names_both_sides(instance):
    name = segment_name(instance, "md")
    with Ring.create(name, MD_EVENT, 16, 1):
        with pytest.raises(RingMismatchError) as err:
            Ring.attach(name, BENCH, 0)
        msg = str(err.value)
        assert name in msg and "fingerprint" in msg
        assert "(recv_ns, pub_ns, seq, ..., checksum)" in msg  # the caller's BENCH, by its fields


def test_attach_with_other_layout_version_is_refused(instance):
    name = segment_name(instance, "ver")
    with Ring.create(name, BENCH, 16, 1) as r:
        r.ctrl[H_VERSION] = 99
        with pytest.raises(RingMismatchError, match=f"layout version: segment 99, this code {LAYOUT_VERSION}"):
            Ring.attach(name, BENCH, 0)


def test_attach_checks_capacity_and_consumer_index(instance):
    name = segment_name(instance, "cap")
    with Ring.create(name, BENCH, 16, 2):
        c = Ring.attach(name, BENCH, 1)
        with pytest.raises(RingMismatchError, match="capacity: segment 16, caller 32"):
            c.expect_capacity(32)
        c.close()
        with pytest.raises(RingMismatchError, match="consumer index 2 not in 0..1"):
            Ring.attach(name, BENCH, 2)


def test_segment_is_private_to_the_user(instance):
    name = segment_name(instance, "perm")
    with Ring.create(name, BENCH, 16, 1):
        mode = stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode)
        assert mode == 0o600


def test_close_and_unlink_leave_nothing(instance):
    name = segment_name(instance, "gone")
    r = Ring.create(name, BENCH, 16, 1)
    c = Ring.attach(name, BENCH, 0)
    c.close()
    r.close()
    r.unlink()
    assert list_segments(instance) == []


def test_attaching_process_exit_does_not_unlink_the_segment(instance):
    """Python's resource tracker must not delete a ring when a worker exits."""
    name = segment_name(instance, "tracker")
    with Ring.create(name, BENCH, 16, 1):
        code = (
            "from core.records import BENCH; from ringbuffers.ring import Ring;"
            f"r = Ring.attach({name!r}, BENCH, 0); r.close()"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
        assert name in list_segments(instance)


def test_remove_stale_removes_only_segments_of_dead_owners(instance):
    dead = segment_name(instance, "dead")
    live = segment_name(instance, "live")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    r_dead = Ring.create(dead, BENCH, 16, 1)
    r_dead.ctrl[H_OWNER_PID] = dead_pid  # as if created by a process that was killed
    r_dead.close()
    with Ring.create(live, BENCH, 16, 1):
        removed = remove_stale(instance)
        assert removed == [dead]
        assert list_segments(instance) == [live]


def test_zero_copy_claim_is_invisible_until_commit(instance):
    name = segment_name(instance, "claim")
    with Ring.create(name, BENCH, 16, 1) as r:
        c = Ring.attach(name, BENCH, 0)
        view = r.claim(4)
        view["seq"] = np.arange(4)
        assert len(c.poll(10).records) == 0
        c.release()
        r.commit(3)
        p = c.poll(10)
        assert p.records["seq"].tolist() == [0, 1, 2]
        c.release()
        c.close()


def test_prefault_maps_every_page_of_an_attached_ring_without_changing_it(instance):
    from ringbuffers.ring import segment_name

    ring = Ring.create(segment_name(instance, "pf"), BENCH, 1 << 14, 1)
    try:
        ring.publish_batch(np.ones(10, BENCH))
        reader = Ring.attach(ring.name, BENCH, 0)
        before = reader.ctrl.copy(), reader.slots.copy()
        pages = reader.prefault()
        assert pages * 4096 >= 1 << 20  # 16384 records of 64 bytes, plus the header
        assert np.array_equal(reader.ctrl, before[0]) and np.array_equal(reader.slots, before[1])
        assert reader.poll(20).records.shape == (10,)
        reader.release()
        reader.close()
    finally:
        ring.close()
        ring.unlink()

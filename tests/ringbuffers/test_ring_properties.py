"""Publish/poll semantics of the ring in one process, against a list model.

Hypothesis drives random interleavings of single publishes, batch publishes,
claim->write->commit, numba-kernel publishes, and polls (Python views and the
numba copy kernel) by several consumers, across wrap-around, for both
policies. The model says what each consumer must see.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringbuffers.errors import RingError
from core.records import BENCH
from ringbuffers.ring import FULL, Ring, nb_poll_copy, nb_publish_copy, segment_name


def make(seqs) -> np.ndarray:
    recs = np.zeros(len(seqs), BENCH)
    recs["seq"] = seqs
    recs["checksum"] = np.asarray(seqs) * 7 + 1
    return recs


op = st.one_of(
    st.tuples(st.just("pub1"), st.integers(1, 1)),
    st.tuples(st.just("batch"), st.integers(1, 40)),
    st.tuples(st.just("claim"), st.integers(1, 20)),
    st.tuples(st.just("nbpub"), st.integers(1, 16)),
    st.tuples(st.just("poll"), st.integers(0, 2), st.integers(1, 50)),
    st.tuples(st.just("nbpoll"), st.integers(0, 2), st.integers(1, 50)),
)


class Harness:
    def __init__(self, instance, policy, capacity, consumers=3):
        name = segment_name(instance, f"prop-{policy}")
        self.prod = Ring.create(name, BENCH, capacity, consumers, policy)
        self.cons = [Ring.attach(name, BENCH, i) for i in range(consumers)]
        self.capacity = capacity
        self.policy = policy
        self.next_seq = 0
        self.seen = [[] for _ in range(consumers)]
        self.lost = [0] * consumers

    def close(self):
        for c in self.cons:
            c.close()
        self.prod.close()
        self.prod.unlink()

    def oldest_unread(self):
        return min(c.cursor for c in self.cons)

    def room(self):
        if self.policy == "overwrite":
            return self.capacity
        return self.capacity - (self.next_seq - self.oldest_unread())

    def publish(self, kind, n):
        room = self.room()
        seqs = list(range(self.next_seq, self.next_seq + n))
        if kind == "pub1":
            got = self.prod.publish(make(seqs)[0])
            if room >= 1:
                assert got == self.next_seq
                self.next_seq += 1
            else:
                assert got == FULL
        elif kind == "batch":
            done = self.prod.publish_batch(make(seqs))
            assert done == min(n, room)
            self.next_seq += done
        elif kind == "nbpub":
            got = nb_publish_copy(self.prod.ctrl, self.prod.slots, make(seqs))
            if n <= room:
                assert got == n
                self.next_seq += n
            else:
                assert got == FULL
        elif kind == "claim":
            view = self.prod.claim(n)
            contiguous = self.capacity - (self.next_seq % self.capacity)
            expect = min(n, room, contiguous)
            if expect <= 0:
                assert view is None
                return
            assert len(view) == expect
            view[:] = make(range(self.next_seq, self.next_seq + expect))
            # nothing is visible before commit
            for c in self.cons:
                assert c.lag() == self.next_seq - c.cursor
            self.prod.commit()
            self.next_seq += expect
        assert self.prod.published == self.next_seq

    def poll(self, kind, i, max_n):
        c = self.cons[i]
        before = c.cursor
        if kind == "poll":
            p = c.poll(max_n)
            seqs = p.records["seq"].tolist()
            ok = (p.records["checksum"] == p.records["seq"] * 7 + 1).all()
            lost = p.lost
            c.release()
        else:
            out = np.zeros(max_n, BENCH)
            n, lost = nb_poll_copy(c.ctrl, c.slots, i, out)
            seqs = out["seq"][:n].tolist()
            ok = (out["checksum"][:n] == out["seq"][:n] * 7 + 1).all()
        assert ok, "a torn or foreign record was returned"
        expected_first = before + lost
        assert seqs == list(range(expected_first, expected_first + len(seqs)))
        if self.policy == "block":
            assert lost == 0
            avail = self.next_seq - before
            assert len(seqs) <= min(max_n, avail)
            assert len(seqs) > 0 or avail == 0
        else:
            # lapped: exactly the records no longer in the ring are reported lost
            assert lost == max(0, self.next_seq - self.capacity - before)
        self.seen[i].extend(seqs)
        self.lost[i] += lost
        assert c.cursor == before + lost + len(seqs)

    def drain_and_check(self):
        for i, c in enumerate(self.cons):
            while c.lag():
                self.poll("poll", i, 1000)
            # every record published is either seen once, in order, or counted lost
            assert len(self.seen[i]) + self.lost[i] == self.next_seq
            assert self.seen[i] == sorted(set(self.seen[i]))
            if self.policy == "block":
                assert self.seen[i] == list(range(self.next_seq))
            st_ = self.prod.stats()
            assert st_.lost[i] == self.lost[i]


@pytest.mark.parametrize("policy", ["block", "overwrite"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=120), capacity=st.sampled_from([2, 4, 8, 16, 64]))
def test_random_interleavings_match_the_model(instance, policy, ops, capacity):
    h = Harness(instance, policy, capacity)
    try:
        for o in ops:
            if o[0] in ("poll", "nbpoll"):
                h.poll(o[0], o[1], o[2])
            else:
                n = min(o[1], capacity)
                h.publish(o[0], n)
        h.drain_and_check()
    finally:
        h.close()


def test_block_producer_never_overwrites_an_unread_slot(instance):
    h = Harness(instance, "block", 8, consumers=2)
    try:
        h.publish("batch", 8)
        assert h.prod.publish(make([8])[0]) == FULL
        assert h.prod.stats().stalls >= 1
        h.poll("poll", 0, 8)  # consumer 1 still holds every slot
        assert h.prod.publish(make([8])[0]) == FULL
        h.poll("poll", 1, 3)
        assert h.prod.publish_batch(make(range(8, 12))) == 3
        h.next_seq += 3
        h.drain_and_check()
    finally:
        h.close()


def test_overwrite_lapped_consumer_gets_exact_lost_count(instance):
    h = Harness(instance, "overwrite", 8, consumers=1)
    try:
        h.prod.publish_batch(make(range(8)))
        h.prod.publish_batch(make(range(8, 8 + 8)))
        h.prod.publish_batch(make(range(16, 16 + 5)))
        p = h.cons[0].poll(100)
        assert p.lost == 13 and p.lapped
        assert p.records["seq"].tolist() == list(range(13, 21))
        h.cons[0].release()
        assert h.prod.stats().lapped == (1,)
    finally:
        h.close()


def test_overwrite_discards_records_overwritten_during_the_copy(instance):
    """Simulate the producer claiming slots while the consumer copies (seqlock check)."""
    h = Harness(instance, "overwrite", 8, consumers=1)
    try:
        h.prod.publish_batch(make(range(8)))
        # producer announces it is rewriting seq 8..10 (slots of 0..2) but has not published
        from ringbuffers.ring import P_CLAIM

        h.prod.ctrl[P_CLAIM] = 11
        p = h.cons[0].poll(100)
        assert p.lost == 3
        assert p.records["seq"].tolist() == list(range(3, 8))
        h.cons[0].release()
    finally:
        h.close()


def test_handler_that_raises_does_not_jam_the_ring(instance):
    h = Harness(instance, "block", 8, consumers=1)
    try:
        h.prod.publish_batch(make(range(8)))

        def bad(records, lost):
            raise ValueError("strategy bug")

        with pytest.raises(ValueError):
            h.cons[0].consume(bad, max_n=5)
        assert h.cons[0].cursor == 5  # the batch was released in finally
        assert h.prod.publish_batch(make(range(8, 13))) == 5  # producer can proceed
        seen = []
        h.cons[0].consume(lambda r, lost: seen.extend(r["seq"].tolist()), max_n=100)
        assert seen == [5, 6, 7]
    finally:
        h.close()


def test_misuse_raises_errors_naming_the_value(instance):
    name = segment_name(instance, "misuse")
    with pytest.raises(RingError, match="power of two"):
        Ring.create(name, BENCH, 12, 1)
    with pytest.raises(RingError, match="policy"):
        Ring.create(name, BENCH, 8, 1, "drop")
    with Ring.create(name, BENCH, 8, 1) as r:
        assert r.publish_batch(make(range(9))) == 8  # a batch larger than the ring is published as far as it fits
        with pytest.raises(RingError, match="consumer handle"):
            r.poll(1)
        c = Ring.attach(name, BENCH, 0)
        c.poll(1)
        with pytest.raises(RingError, match="release"):
            c.poll(1)
        c.release()
        c.close()

"""The key scheduler: one record per key at a time, in offset order; counts that gate intake; revoke."""

from confluent_kafka import Message

from processors.runtime.keys import KeyScheduler, key_of


def msg(offset: int, key: bytes | None, partition: int = 0) -> Message:
    return Message(topic="t", partition=partition, offset=offset, key=key, value=b"")


def offsets(scheduler: KeyScheduler) -> list[int]:
    return [m.offset() for _key, m, _epoch in scheduler.take_started()]


def test_one_record_per_key_at_a_time_in_offset_order():
    scheduler = KeyScheduler(max_in_flight=10, max_buffered=10)
    for offset, key in enumerate([b"a", b"b", b"a", b"a", None, None]):
        scheduler.accept(msg(offset, key), epoch=1)
    assert offsets(scheduler) == [0, 1, 4, 5], "the second and third `a` wait; records without a key never do"
    assert (scheduler.in_flight, scheduler.waiting) == (4, 2)
    a = key_of(msg(0, b"a"))
    scheduler.finished(a, epoch=1)
    assert offsets(scheduler) == [2] and (scheduler.in_flight, scheduler.waiting) == (4, 1)
    scheduler.finished(a, epoch=1)
    assert offsets(scheduler) == [3]
    scheduler.finished(a, epoch=1)
    assert offsets(scheduler) == [] and scheduler.in_flight == 3
    scheduler.accept(msg(6, b"a"), epoch=1)
    assert offsets(scheduler) == [6], "an idle key starts at once"


def test_intake_stops_at_either_limit():
    busy = KeyScheduler(max_in_flight=2, max_buffered=10)
    busy.accept(msg(0, b"a"), epoch=1)
    assert busy.has_room()
    busy.accept(msg(1, b"b"), epoch=1)
    assert not busy.has_room(), "two in flight"
    hot = KeyScheduler(max_in_flight=10, max_buffered=1)
    hot.accept(msg(0, b"a"), epoch=1)
    hot.accept(msg(1, b"a"), epoch=1)
    assert hot.in_flight == 1 and not hot.has_room(), "one waiting behind a hot key"


def test_forget_drops_the_revoked_partitions_waiting_and_counts():
    scheduler = KeyScheduler(max_in_flight=10, max_buffered=10)
    for offset, key in [(0, b"a"), (1, b"a"), (2, b"b")]:
        scheduler.accept(msg(offset, key, partition=0), epoch=1)
    scheduler.accept(msg(0, b"a", partition=1), epoch=1)
    scheduler.take_started()
    scheduler.forget({("t", 0)}, unfinished=3)  # a@0 and b@2 running, a@1 waiting
    assert (scheduler.in_flight, scheduler.waiting) == (1, 0)
    scheduler.accept(msg(1, b"a", partition=0), epoch=2)
    assert offsets(scheduler) == [1], "the partition's keys start afresh when it comes back"

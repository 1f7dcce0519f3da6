"""Key scheduling: which consumed records may start now, so one key's records run in order.

**Ordering.** Records with the same key (same input topic and partition) are processed one
after another, in offset order; different keys run in parallel. A record without a key is its
own key (its offset): no ordering constraint.

**Counting.** A record is *in flight* from the moment it may start (:meth:`KeyScheduler.accept`
found its key idle, or :meth:`~KeyScheduler.finished` handed it the key) until its result is
collected; a record behind a running one of its key is *waiting* and does not count as in flight,
so one hot key never takes the slots of the others. :meth:`~KeyScheduler.has_room` is the
runtime's intake gate: at most ``max_in_flight`` in flight, and at most ``max_buffered`` waiting.

**Starting.** Records that may start are collected in a list the runtime hands to the event loop
in one wake-up (:meth:`~KeyScheduler.take_started`), not one cross-thread call per record.

**Revoke.** :meth:`~KeyScheduler.forget` drops the waiting queues of revoked partitions and
takes their unfinished records out of the counts; results of their running records still arrive
and are dropped by the runtime (assignment epochs).

Everything here runs on the consumer thread: no lock.
"""

from __future__ import annotations

from collections import deque

from confluent_kafka import Message

Key = tuple  # (topic, partition, key bytes) or, for a record without a key, (topic, partition, offset)
Started = tuple[Key, Message, int]  # a record that may run now, with its key and assignment epoch


def key_of(msg: Message) -> Key:
    return (msg.topic(), msg.partition(), msg.key()) if msg.key() is not None else (msg.topic(), msg.partition(), msg.offset())


class KeyScheduler:
    def __init__(self, max_in_flight: int, max_buffered: int):
        self.max_in_flight = max_in_flight
        self.max_buffered = max_buffered
        self._keys: dict[Key, deque[Message]] = {}  # key -> records waiting behind the running one
        self.in_flight = 0  # records being processed (or about to be)
        self.waiting = 0  # records queued behind a running record of their key
        self._starting: list[Started] = []  # started, not yet handed to the event loop

    def has_room(self) -> bool:
        """May the runtime accept one more consumed record?"""
        return self.in_flight < self.max_in_flight and self.waiting < self.max_buffered

    def accept(self, msg: Message, epoch: int) -> None:
        """A consumed record of a partition owned at ``epoch``: start it, or queue it behind its key."""
        key = key_of(msg)
        waiting = self._keys.get(key)
        if waiting is not None:  # a record of this key is running: queue behind it
            waiting.append(msg)
            self.waiting += 1
        else:
            self._keys[key] = deque()
            self._start(key, msg, epoch)

    def finished(self, key: Key, epoch: int) -> None:
        """A record of ``key`` finished (its partition still owned at ``epoch``): start the next of its key."""
        self.in_flight -= 1
        waiting = self._keys.get(key)
        if waiting:
            self.waiting -= 1
            self._start(key, waiting.popleft(), epoch)
        else:
            self._keys.pop(key, None)

    def waiting_partitions(self) -> set[tuple[str, int]]:
        """The partitions with records queued behind a running record of their key."""
        return {(k[0], k[1]) for k, waiting in self._keys.items() if waiting}

    def take_started(self) -> list[Started]:
        """The records started since the last call, in start order."""
        batch, self._starting = self._starting, []
        return batch

    def forget(self, partitions: set[tuple[str, int]], unfinished: int) -> None:
        """Partitions taken away; ``unfinished``: their records consumed and not finished (running,
        starting or waiting), which leave the counts now."""
        waiting = sum(len(self._keys.pop(k)) for k in [k for k in self._keys if (k[0], k[1]) in partitions])
        self.waiting -= waiting
        self.in_flight -= unfinished - waiting  # their results are dropped on arrival (epochs)

    def _start(self, key: Key, msg: Message, epoch: int) -> None:
        self.in_flight += 1
        self._starting.append((key, msg, epoch))

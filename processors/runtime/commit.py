"""Committers: how outputs and input offsets become durable together, one class per guarantee.

The runtime chooses its committer once, from ``RuntimeOptions.guarantee`` (:func:`committer_for`),
and from then on never asks which guarantee it runs under: the producer's configuration, the
transactions, the dead letters of a tick, every commit and the shutdown go through the
committer. The runtime calls it in this order:

1. :meth:`Committer.producer_config` — before the producer is created.
2. :meth:`Committer.start` — after ``Stage.start`` and before the consumer subscribes; again, with
   a new producer, after a lost transaction (**Watchdog** below).
3. :meth:`Committer.delivery` — for every output handed to the producer.
4. :meth:`Committer.flush_dead_letters` — in a tick, after the stage's dead letters were handed
   to the producer and before its other outputs; :meth:`Committer.tick_produced` — after a tick
   produced anything.
5. :meth:`Committer.commit` — every ``commit_interval_s`` (:attr:`Moment.interval`), for the revoked
   partitions in the revoke callback (:attr:`Moment.revoke`), and once after the last drain
   (:attr:`Moment.shutdown`). A failure raises: the runtime stops and commits nothing more; a
   :class:`TransactionLost` instead makes it start over from the committed offsets.
6. :meth:`Committer.close` — always, last, after a clean stop or a failure.

**at_least_once** (:class:`AtLeastOnceCommitter`). Every released output carries a delivery
callback; a record counts as done when the broker acknowledged all its outputs, and the
committed offset is the one after the last record of the unbroken done prefix (``acked_to``;
asynchronous commits, so the loop never waits on the broker). On revoke and shutdown the
producer is flushed first and the commit is synchronous. A crash before a commit replays the
uncommitted records (duplicates downstream, never loss). A delivery failure stops the runtime
before it commits past it. A tick's dead letters are flushed before its other outputs are
produced: a record saying "dead-lettered" (the joiner's state) is never durable before its dead
letter, and a crash before either is delivered loses only what the stage derives again from its
durable state after a restart.

**exactly_once** (:class:`ExactlyOnceCommitter`). Outputs are produced inside a transaction that
is always open; ``send_offsets_to_transaction`` adds the released offsets (``released_to``) and
``commit_transaction`` publishes outputs and offsets atomically; a new transaction begins at
once. A tick's outputs belong to no input offset: they join the open transaction, which the next
commit publishes even when no offset moved. A transaction that fails is lost, never retried:
the committer raises :class:`TransactionLost`, and the runtime starts over (below). ``read_committed``
readers therefore never see an output twice.

**Committed offsets past markers.** A record's mark is the offset after it; on a transactional input
partition that offset holds the upstream transaction's commit marker, which no consumer ever
receives, so a group committed there would show a lag of 1 forever (``kafka-consumer-groups
--describe``, any lag alert, the drain check). When every consumed record of a partition is released
(and, under at_least_once, acknowledged) and none waits in the runtime's buffer, the runtime moves
its marks to the consumer's ``position()``, which is past the markers and aborted records it skipped
(:meth:`PartitionBook.settle`); both guarantees then commit there.

**Watchdog** (exactly_once). librdkafka does not always honour the timeout of a transactional call:
after a broker restart the coordinator request of ``send_offsets_to_transaction`` is never timed out
(librdkafka issues #5456, #5511) and the call blocks forever, with the broker healthy again. So every
transactional call (``init_transactions``, ``begin_transaction``, ``send_offsets_to_transaction``,
``commit_transaction``, ``abort_transaction``) runs on a worker thread of its own (:func:`watched`;
the client releases the GIL inside them), and the consumer thread waits for it up to
:data:`WATCHDOG_S`, a little longer than the timeout passed to the call. A call that outlives its
watchdog, or raises, raises :class:`TransactionLost`. The runtime then starts over:

1. it drops the producer without waiting for it (a call may still run inside it: the worker thread's
   reference keeps it alive until the call returns, so librdkafka never frees it under the call);
2. it drops every book, key and buffered record, as if every partition had been lost;
3. it creates a new producer with the same transactional id and :meth:`Committer.start` runs on it:
   its ``init_transactions`` fences the old producer (its pending requests are refused, its open
   transaction is aborted), so nothing of the lost transaction ever becomes visible;
4. it re-reads the stage's tables and seeks every owned partition back to its committed offset.

Each attempt that fails (the broker still down) is tried again, a second apart, until
``broker_timeout_s``; then the runtime raises ``BrokerUnavailable`` and exits non-zero with one line,
for a supervisor to restart it. The limits: a lost transaction's work is done again (its outputs
were aborted, so nothing shows twice); a stuck call leaves a worker thread blocked until librdkafka
returns, if ever (a daemon thread: it never holds the process up at exit); a lost transaction at
shutdown is not started over, its work is redone by the next owner. The group membership is kept
throughout: a watchdog never costs a rebalance. A stuck call costs :data:`WATCHDOG_S` of stall
(measured: a broker down 12 s hung two or three of the six stages of ``handoff run`` in each of
five runs; each resumed about 1 s after its watchdog fired). Another process with the same
transactional id (two instances given one name) is fenced the same way; their consumers' static
memberships fence each other too, and that error is fatal.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from processors.runtime.options import Guarantee
from processors.runtime.partition import Books, PartitionBook

TIMEOUT_S = 30  # per broker call of a commit, a transaction step or a final flush
ABORT_TIMEOUT_S = 5  # closing: the broker aborts a transaction left open anyway, when the id is reused or times out
WATCHDOG_S = TIMEOUT_S + 5  # a transactional call that has not returned by then never will (see Watchdog)


class DeliveryFailed(RuntimeError):
    """The producer could not deliver a released output; offsets were not committed."""


class TransactionLost(RuntimeError):
    """A transactional call raised or outlived its watchdog: the open transaction can never commit.
    The runtime starts over from the committed offsets with a new producer (module docstring)."""


def watched(call: Callable[..., Any], *args: Any, limit: float = WATCHDOG_S) -> Any:
    """``call(*args)`` on a daemon thread, waited for up to ``limit`` seconds: its result, or
    :class:`TransactionLost` if it raised ``KafkaException`` or had not returned by then."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call(*args)
        except KafkaException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=f"watched-{call.__name__}", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise TransactionLost(f"{call.__name__} did not return within {limit:.0f}s (librdkafka #5456)")
    if "error" in outcome:
        raise TransactionLost(f"{call.__name__} failed: {outcome['error']}") from outcome["error"]
    return outcome.get("result")


class Moment(Enum):
    """When a commit happens: it decides how final the commit must be."""

    interval = "interval"
    """Every ``commit_interval_s``: commit what is durable already, without waiting."""
    revoke = "revoke"
    """Partitions are being taken away: wait for what they released, commit synchronously."""
    shutdown = "shutdown"
    """After the last drain: like revoke, for every partition, and even when no offset moved."""


class Committer(ABC):
    """One guarantee's commit protocol (see the module docstring for the order of calls)."""

    refusals_dead_lettered = True
    """When the broker refuses one output for what it is (too large, invalid: ``limits.REFUSED``), the
    runtime produces a dead letter of its input in its place, which acks the record when delivered."""

    changelog_may_lead = False
    """True when a record's changelog entry can be in the log while the record's other outputs are not
    (each output is acknowledged on its own): a restore must then skip the entries of records at or past
    the committed offset, which run again and write them anew (:meth:`Table.assign`)."""

    def __init__(self) -> None:
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        self.delivery_errors: list[str] = []

    def producer_config(self, member: str) -> dict:
        """Called before the producer exists, with this process's stable member name (group id and
        instance): what the guarantee needs in the producer's configuration."""
        return {}

    def start(self, producer: Producer, consumer: Consumer) -> None:
        """Called on the consumer thread, after ``Stage.start`` and before the consumer subscribes (so
        before any record), and again with a new producer after a :class:`TransactionLost`. Raises
        :class:`TransactionLost` (tried again) or what the broker raises (fatal: the stage stops)."""
        self.producer, self.consumer = producer, consumer

    def delivery(self, book: PartitionBook | None, offset: int | None) -> Callable:
        """The delivery callback of one output: of the record at ``offset`` in ``book``, or of no
        record (a tick's output). Served by ``producer.poll``/``flush`` on the consumer thread; a
        failure is kept for the next commit (or dead-letter flush) to raise, never retried here."""
        def delivered(err, msg) -> None:
            if err is not None:
                self.delivery_errors.append(f"{msg.topic()}: {err}")
            elif book is not None:
                book.ack(offset)

        return delivered

    @abstractmethod
    def flush_dead_letters(self) -> None:
        """Called in a tick, on the consumer thread, after the stage's dead letters were handed to the
        producer and before its other outputs. Raises :class:`DeliveryFailed`."""

    def tick_produced(self) -> None:
        """Called after a tick handed any output to the producer (outputs of no input offset)."""

    @abstractmethod
    def commit(self, books: Books, moment: Moment) -> None:
        """Make the offsets of ``books`` durable whose outputs are, and set their ``committed_to``.
        Called on the consumer thread; ``books`` are every owned partition (interval, shutdown) or the
        revoked ones (revoke). Waits up to :data:`TIMEOUT_S` per broker call when ``moment`` is not
        ``interval``. Raises :class:`DeliveryFailed` or ``KafkaException``: the runtime then stops;
        :class:`TransactionLost`: the runtime starts over from the committed offsets."""

    def close(self) -> None:
        """Called last, always (clean stop or failure), before the producer's final flush and
        destruction; drops this committer's references to the clients."""
        self.producer = self.consumer = None

    @abstractmethod
    def durable_to(self, book: PartitionBook) -> int | None:
        """The offset up to which ``book``'s outputs are durable enough to commit under this guarantee."""

    def due(self, books: Books) -> list[tuple[tuple[str, int], PartitionBook, int]]:
        """Partitions whose durable mark moved past their last commit."""
        return [(tp, book, mark) for tp, book in books.items()
                if (mark := self.durable_to(book)) is not None and mark != book.committed_to]


class AtLeastOnceCommitter(Committer):
    """Commit what the broker acknowledged (module docstring: **at_least_once**)."""

    changelog_may_lead = True

    def flush_dead_letters(self) -> None:
        """Flush the producer (up to :data:`TIMEOUT_S`): the dead letters are durable before the tick's
        other outputs are produced. Raises :class:`DeliveryFailed` if any output is still unacknowledged
        or any delivery failed."""
        self._flushed(self.producer.flush(TIMEOUT_S), "dead letters")

    def commit(self, books: Books, moment: Moment) -> None:
        """1. At revoke and shutdown, flush the producer (up to :data:`TIMEOUT_S`), so every released
           output is acknowledged or failed.
        2. Raise :class:`DeliveryFailed` if an output is still unacknowledged or any delivery failed.
        3. Commit ``acked_to`` of each partition where it moved: asynchronously at an interval (the
           loop never waits), synchronously at revoke and shutdown."""
        final = moment is not Moment.interval
        self._flushed(self.producer.flush(TIMEOUT_S) if final else 0, "outputs")
        due = self.due(books)
        if not due:
            return
        self.consumer.commit(offsets=[TopicPartition(t, p, offset) for (t, p), _, offset in due],
                             asynchronous=not final)
        for _, book, offset in due:
            book.committed_to = offset

    def durable_to(self, book: PartitionBook) -> int | None:
        return book.acked_to

    def _flushed(self, remaining: int, what: str) -> None:
        if remaining or self.delivery_errors:
            raise DeliveryFailed(f"{remaining} {what} unacknowledged; errors: {self.delivery_errors[:3]}")


class ExactlyOnceCommitter(Committer):
    """Commit outputs and offsets in one transaction (module docstring: **exactly_once**)."""

    refusals_dead_lettered = False
    """A refused output makes the open transaction abortable: the stage stops and a restart replays. The
    runtime's size checks before producing (:mod:`.limits`) keep oversized outputs from being produced."""

    def __init__(self) -> None:
        super().__init__()
        self._ticked = False  # tick outputs in the open transaction

    def producer_config(self, member: str) -> dict:
        """The member name is the transactional id: a restarted process fences its predecessor's open
        transaction instead of leaving it to time out."""
        return {"transactional.id": member}

    def start(self, producer: Producer, consumer: Consumer) -> None:
        """1. ``init_transactions`` (up to :data:`TIMEOUT_S`): fence a predecessor with this id (another
           process's, or this process's own lost producer).
        2. Begin the transaction every output will be produced in.
        Each call is watched (:func:`watched`); raises :class:`TransactionLost`."""
        super().start(producer, consumer)
        self._ticked = False
        watched(self.producer.init_transactions, TIMEOUT_S)
        watched(self.producer.begin_transaction)

    def flush_dead_letters(self) -> None:
        """Nothing: the dead letters are in the open transaction, published with the tick's other outputs."""

    def tick_produced(self) -> None:
        self._ticked = True

    def commit(self, books: Books, moment: Moment) -> None:
        """1. Return if no offset moved, nothing of a tick waits in the transaction, and this is not shutdown.
        2. ``send_offsets_to_transaction`` the ``released_to`` of each partition where it moved.
        3. ``commit_transaction``: outputs and offsets become visible together.
        4. Begin the next transaction at once.
        Each broker call waits up to :data:`TIMEOUT_S`, watched (:func:`watched`); any error raises
        :class:`TransactionLost` as it comes."""
        due = self.due(books)
        if not due and moment is not Moment.shutdown and not self._ticked:
            return
        self._ticked = False
        if due:
            watched(self.producer.send_offsets_to_transaction,
                    [TopicPartition(t, p, offset) for (t, p), _, offset in due],
                    self.consumer.consumer_group_metadata(), TIMEOUT_S)
        watched(self.producer.commit_transaction, TIMEOUT_S)
        watched(self.producer.begin_transaction)
        for _, book, offset in due:
            book.committed_to = offset

    def close(self) -> None:
        """Abort the open transaction (up to :data:`ABORT_TIMEOUT_S`, watched): an empty one after a
        clean shutdown, a failed one after an error; a broker that does not answer aborts it itself."""
        if self.producer is not None:
            try:
                watched(self.producer.abort_transaction, ABORT_TIMEOUT_S, limit=ABORT_TIMEOUT_S + 5)
            except TransactionLost:
                pass
        super().close()

    def durable_to(self, book: PartitionBook) -> int | None:
        return book.released_to


COMMITTERS: dict[Guarantee, type[Committer]] = {
    Guarantee.at_least_once: AtLeastOnceCommitter,
    Guarantee.exactly_once: ExactlyOnceCommitter,
}


def committer_for(guarantee: Guarantee) -> Committer:
    return COMMITTERS[guarantee]()

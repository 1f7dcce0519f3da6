"""The stage runtime: one consumer loop that keeps many slow records in flight, safely.

Model calls take 0.2–5 s, so a stage that handled one record at a time would crawl. The
runtime runs ``Stage.process`` for many records at once on an asyncio loop in a helper
thread (:mod:`.event_loop`), while the main thread owns the Kafka clients. Its parts, each with its own protocol:
the stage contract (:mod:`.stage`), key scheduling (:mod:`.keys`), the partition bookkeeping
(:mod:`.partition`), the commit protocol of each guarantee (:mod:`.commit`) and dead letters
(:mod:`.dead_letter`). The rules:

**Inline stages.** A stage whose ``process`` never awaits (``inline = True``: validate,
route) runs on the consumer thread as each record arrives, in offset order: no event-loop hop,
no per-key bookkeeping, and its outputs are released at once.

**Ordering.** Records with the same key (same input topic and partition) are processed one
after another, in offset order; different keys run in parallel (:mod:`.keys`).

**Release.** A finished record's outputs are not produced at once. Each partition keeps its
records in consumption order; outputs are *released* (handed to the producer) only for the
unbroken prefix of finished records (:mod:`.partition`). So outputs leave in input order per
partition, and the committed offset never passes a record whose outputs were not produced.

**Commits**, every ``commit_interval_s`` and on revoke and shutdown, go through the committer of
the guarantee, chosen once at start: :mod:`.commit` holds both protocols.

**State.** A stage declares its state (``Stage.tables``: partition-local stores with changelogs,
:mod:`processors.state.store`); the runtime drives their protocol: open before subscribing, restore
the assigned partitions before any of their records, report each changelog record the broker
acknowledged, checkpoint after each commit that succeeded, release revoked and lost partitions. A
stage never reads a topic itself.

**Backpressure.** At most ``max_in_flight`` records are being processed at once. Records of
a key that is busy wait behind it, and records consumed beyond that wait, in order, in a
local buffer; neither counts as in flight, so one hot key never idles the other slots. Only
when ``max_buffered`` records wait (buffer and keys together) are partitions paused (the
consumer keeps polling, so the group stays alive), until half have moved on: the partitions
that hold waiting records, and then each that delivers more while the others are paused. A
partition holding nothing keeps fetching, so a backlog on some partitions never starves the
rest (one consume batch usually comes from one partition); near the bound each consume takes
only what fits, so the overshoot stays small and the others' records are not queued behind
thousands of one partition's. Pausing is the last resort because
librdkafka drops a paused partition's prefetched records and refetches them on resume, which
stalls the stage for a fetch round trip each time. The runtime resumes exactly the partitions
it paused. librdkafka keeps a partition's pause across a revoke and a new assignment, so every
assigned partition is resumed in the assign callback: a partition paused, revoked and
assigned again is fetched again.

**Revoke.** When partitions are taken away, the runtime stops starting their records, waits
up to ``drain_timeout_s`` for the ones in flight, releases and commits what finished, and
drops everything else of those partitions: their new owner starts from the committed offset.
Results that arrive later for a revoked partition are discarded (assignment epochs).

**Poison.** A record that cannot be decoded, or whose ``process`` raises, goes to the
workflow's dead-letter topic with its original key and value bytes and headers that say where
it came from and why (:mod:`.dead_letter`); the partition carries on. So does a record with an
output over the producer's or its topic's size limit, checked before producing (:mod:`.limits`),
and, under at_least_once, one whose output the broker refuses for what it is (too large,
invalid): its dead letter takes that output's place and acks the record when delivered.

**Ticks.** About once a second the consumer thread calls ``Stage.tick(now, owned partitions)``,
so a stage can act when no record arrives (the joiner expires outcomes that waited too long for
their decision). Its outputs — dead letters of records the stage kept, and records — belong to no
input offset; the committer makes the dead letters durable no later than the records (see
:mod:`.commit`). A tick's record over its size limit is dead-lettered itself (offset -1). Any
other delivery failure stops the runtime.

**Shutdown.** SIGTERM or SIGINT stop intake, drain in-flight work (bounded), commit, leave the
group (``leave_group_on_stop``: a static member sends no LeaveGroup on close, so its partitions
would wait for the session timeout), close.
**Broker gone.** If no broker answers for ``broker_timeout_s``, the runtime raises
:class:`BrokerUnavailable` instead of waiting forever; uncommitted work is replayed on restart.
**Lost transaction.** A transactional call that fails or hangs (:mod:`.commit`, Watchdog) makes the
runtime start over inside the process: a new producer fences the old one, and every owned partition
resumes from its committed offset; no process restart, no rebalance.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import signal
import threading
import time
import traceback
from collections import deque

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from processors.avro.serde import DecodeError
from processors.clock import now_ms
from processors.kafka.acls import AccessDenied
from processors.kafka.read import watermarks
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role, TopicSpec, topic_name
from processors.records import Original
from processors.runtime import health, metrics
from processors.runtime.commit import TIMEOUT_S, Moment, TransactionLost, committer_for
from processors.runtime.dead_letter import Header, dead_letter
from processors.runtime.event_loop import EventLoop, run_inline
from processors.runtime.keys import KeyScheduler, Started
from processors.runtime.limits import REFUSED, OutputLimits, OutputTooLarge, size
from processors.runtime.options import Guarantee, RuntimeOptions, stage_group  # noqa: F401  Guarantee: still imported from here by the CLI
from processors.runtime.output import Output
from processors.runtime.partition import Books, PartitionBook
from processors.runtime.stage import DeadLetter, Emit, Record, Stage, Table, TableContext

log = logging.getLogger("handoff.runtime")

TICK_INTERVAL_S = 1.0
RETRY_S = 1.0  # between attempts to start over after a lost transaction


class BrokerUnavailable(RuntimeError):
    """No broker answered for longer than ``broker_timeout_s``."""


AUTHORIZATION_FAILURES = {KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "its transactional id",
                          KafkaError.GROUP_AUTHORIZATION_FAILED: "its consumer group",
                          KafkaError.TOPIC_AUTHORIZATION_FAILED: "a topic",
                          KafkaError.CLUSTER_AUTHORIZATION_FAILED: "a cluster operation"}


def _retriable(exc: BaseException) -> bool:
    """A broker call that may succeed if tried again (a coordinator loading, a timeout)."""
    return isinstance(exc, KafkaException) and (exc.args[0].retriable() or exc.args[0].code() in (
        KafkaError._TIMED_OUT, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR))


def _refused_to(exc: BaseException) -> str | None:
    """What the broker refused the principal, when ``exc`` (or what caused it) is an authorization failure."""
    for error in (exc, exc.__cause__):
        if isinstance(error, KafkaException) and error.args[0].code() in AUTHORIZATION_FAILURES:
            return f"{AUTHORIZATION_FAILURES[error.args[0].code()]} ({error.args[0].str()})"
    return None


class StageRuntime:
    """Runs one stage against Kafka until stopped. ``topics`` maps declared names to specs."""

    def __init__(self, stage: Stage, workflow: str, topics: dict[str, TopicSpec], settings: KafkaSettings,
                 options: RuntimeOptions | None = None):
        self.stage = stage
        self.workflow = workflow
        self.topics = topics
        self.settings = settings
        self.options = options or RuntimeOptions()
        self.dlq_topic = topics[topic_name(workflow, Role.dlq)].name
        # Any known writer version decodes into the topic's declared (latest) contract.
        self._readers = {} if stage.decodes else {topics[name].name: topics[name].serde(settings)
                                                  for name in stage.inputs}
        self.input_topics = [topics[name].name for name in stage.inputs]
        self.limits = OutputLimits(self.options.max_message_bytes)  # the topics' limits are read in run()
        self._partitions: Books = {}
        self.keys = KeyScheduler(self.options.max_in_flight, self.options.max_buffered)
        self.committer = committer_for(self.options.guarantee)
        self._buffer: deque[Message] = deque()  # consumed, not yet started (see Backpressure)
        self._epoch = 0
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = threading.Event()
        self._paused: set[tuple[str, int]] = set()  # partitions this runtime paused (see Backpressure)
        self._brokers_down_since: float | None = None
        self._last_commit = time.monotonic()
        self._last_tick = time.monotonic()
        self._failed = False
        self._rebalancing = False  # inside the revoke callback: the consumer must not be polled
        self.group = stage_group(workflow, stage.name, self.options)
        self.tables = stage.tables()
        self._changelogs = {topics[t.topic].name: t for t in self.tables}  # changelog topic -> its table
        self._metrics = metrics.StageMetrics(workflow, stage.name)
        self.health = health.register(workflow, stage.name)  # /healthz, /readyz

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self, *_args) -> None:
        """Ask the loop to drain and exit (safe from a signal handler or another thread)."""
        self._stopping.set()

    def run(self, until=None) -> None:
        """Consume until :meth:`stop`, a signal, or ``until()`` returns True (checked each loop)."""
        self._install_signal_handlers()
        self.tune_gc()
        self.member = f"{self.settings.group_id(self.group)}.{self.options.instance}"
        self.consumer = self.settings.consumer(self.group, error_cb=self._on_error,
                                               **{"partition.assignment.strategy": "range",
                                                  "group.instance.id": self.member,
                                                  "fetch.error.backoff.ms": 20,
                                                  "statistics.interval.ms": metrics.STATISTICS_MS},
                                               stats_cb=self._metrics.statistics)
        self.admin = self.settings.admin()
        self.limits = OutputLimits.read(self.admin, self.topics.values(), self.options.max_message_bytes)
        self.producer = self._new_producer()
        self.events = EventLoop()
        try:
            for table in self.tables:
                table.open(TableContext(changelog=self.topics[table.topic], source=self.topics[table.source],
                                        settings=self.settings, admin=self.admin,
                                        directory=self.options.state_dir / self.member / table.topic))
            self.events.run(self.stage.start(), timeout=120)
            self._retried(self._start_committer)
            self.consumer.subscribe(self.input_topics, on_assign=self._on_assign,
                                    on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not self._stopping.is_set() and not (until and until()):
                self._step()
            self._drain(list(self._partitions))
            self._commit(Moment.shutdown)
            if self.options.leave_group_on_stop:
                self._leave_group()
        except BaseException:
            self._failed = True  # commit nothing more: a restart replays from the last commit
            raise
        finally:
            try:
                self.consumer.close()  # revokes what is left; nothing is in flight by now
            finally:
                self.committer.close()
                for table in self.tables:
                    table.close()
                self.producer.flush(10)
                self._metrics.flush()
                self.events.run(self.stage.close(), timeout=30)
                self.events.stop()
                del self.producer, self.consumer, self.admin  # librdkafka handles go with the last reference

    def _new_producer(self):
        return self.settings.producer(error_cb=self._on_error, **self.committer.producer_config(self.member),
                                      **{"message.max.bytes": self.limits.producer_bytes,
                                         "batch.size": self.limits.batch_bytes()})

    def _start_committer(self) -> None:
        """Start the committer on the producer; if that loses its transaction, the next attempt gets a new one."""
        try:
            self.committer.start(self.producer, self.consumer)
        except TransactionLost:
            self.producer = self._new_producer()  # the old one may still be inside a call: never reused
            raise

    def _retried(self, attempt) -> None:
        """``attempt()`` until it no longer loses a transaction or meets a broker error, a second apart,
        for up to ``broker_timeout_s``; then :class:`BrokerUnavailable`, for a supervisor to restart us."""
        deadline = time.monotonic() + self.options.broker_timeout_s
        while True:
            try:
                return attempt()
            except (TransactionLost, KafkaException) as exc:
                refused = _refused_to(exc)
                if refused is not None:  # no retry can help: the principal lacks an ACL
                    raise AccessDenied(f"stage {self.stage.name}: the broker refused {refused}; grant the stage's "
                                       f"ACLs (handoff acls --workflow {self.workflow} --apply)") from exc
                if time.monotonic() >= deadline:
                    raise BrokerUnavailable(f"stage {self.stage.name} could not resume its transactions for "
                                            f"{self.options.broker_timeout_s:.0f}s ({exc}); restart it: "
                                            f"uncommitted records will be reprocessed") from exc
                log.warning("stage %s: %s; trying again", self.stage.name, exc)
                self._serve_group(RETRY_S)

    def _serve_group(self, seconds: float) -> None:
        """Wait ``seconds`` between attempts while serving the consumer group: after a broker restart the
        session may have timed out, and the rejoin runs only in the callbacks a poll serves (never from
        inside one: a revoke's commit waits plainly). A record the poll returns is put back (a seek to it),
        so the loop reads it again from a book of the assignment in force."""
        if self._rebalancing:
            time.sleep(seconds)
            return
        msg = self.consumer.poll(seconds)
        if msg is not None and not msg.error():
            self.consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))

    def _start_over(self, lost: TransactionLost, keep: list[tuple[str, int]]) -> None:
        """The open transaction is lost (:mod:`.commit`, Watchdog): drop the producer and everything
        since the last commit, fence the old producer with a new one, and resume the ``keep``
        partitions from their committed offsets with the stage's tables read again."""
        log.warning("stage %s: %s; starting over from the committed offsets with a new producer",
                    self.stage.name, lost)
        owned = [TopicPartition(t, p) for t, p in keep]
        self._on_lost(self.consumer, [TopicPartition(t, p) for t, p in self._partitions])
        self.producer = self._new_producer()  # the old one may still be inside a call: dropped, never reused

        def resume() -> None:
            # Fence first: the lost transaction may hold offsets sent to it, and a read_committed consumer's
            # committed() waits for them to settle (KIP-447: UNSTABLE_OFFSET_COMMIT) until the broker aborts
            # it, which the new producer's init_transactions does now rather than at the transaction timeout.
            self._start_committer()
            committed = self.consumer.committed(owned, timeout=TIMEOUT_S) if owned else []
            self._on_assign(self.consumer, owned)
            starts = self.stage.positions(list(keep))
            for tp in committed:
                start = starts.get((tp.topic, tp.partition), tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, start))

        self._retried(resume)
        log.info("stage %s: resumed %d partitions from their committed offsets", self.stage.name, len(owned))

    def _leave_group(self) -> None:
        """Unsubscribe and serve the revoke it brings (bounded): unlike a static member's close, an
        unsubscribe sends LeaveGroup, so the others take these partitions now, not after the session
        timeout; ``close`` then waits for its answer (at most 5 s, librdkafka's own bound)."""
        self.consumer.unsubscribe()
        deadline = time.monotonic() + self.options.drain_timeout_s
        while self._partitions and time.monotonic() < deadline:
            self.consumer.consume(self.options.poll_batch, timeout=0.1)  # records now are past the commit: dropped

    def tune_gc(self) -> None:
        """Apply ``gc_young_threshold`` (process-wide): ``run`` does it, so does a caller that times ``handle``."""
        if self.options.gc_young_threshold is not None:
            gc.set_threshold(self.options.gc_young_threshold, *gc.get_threshold()[1:])

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)

    # ---- the loop ----------------------------------------------------------------------------

    def _step(self) -> None:
        # Always poll, even when paused: it serves rebalance callbacks and keeps the group alive. Near
        # max_buffered take fewer, so each partition still fetching adds little before it pauses.
        room = self.options.max_buffered - len(self._buffer) - self.keys.waiting
        messages = self.consumer.consume(max(1, min(self.options.poll_batch, room)),
                                         timeout=0 if self.keys.in_flight or self._buffer else 0.01)
        for msg in messages:
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                log.warning("consumer: %s", msg.error())
                continue
            self._buffer.append(msg)
        while self._buffer and self.keys.has_room():
            self._accept(self._buffer.popleft())
        self._launch()
        self._collect(wait=0.005 if self.keys.in_flight and not messages else 0)
        self._release()
        self._tick()
        self._backpressure(messages)
        self._check_brokers()
        if time.monotonic() - self._last_commit >= self.options.commit_interval_s:
            self._commit(Moment.interval)
        self.producer.poll(0)
        self._metrics.flush()
        self.health.beat(broker_reachable=self._brokers_down_since is None)

    def _accept(self, msg: Message) -> None:
        book = self._partitions.get((msg.topic(), msg.partition()))
        if book is None:  # a record of a partition we no longer own: ignore, its owner has it
            return
        self._metrics.consumed()
        if self.stage.inline:  # it never awaits: run it here, in offset order, without an event-loop hop
            book.finish(msg.offset(), self.handle(msg))
            return
        book.expect(msg.offset())
        self.keys.accept(msg, book.epoch)

    def _launch(self) -> None:
        """Hand the records started since the last call to the event loop, in one wake-up."""
        batch = self.keys.take_started()
        if batch:
            self.events.loop.call_soon_threadsafe(self._spawn, batch)

    def _spawn(self, batch: list[Started]) -> None:
        """On the event loop: one task per record; a finished task goes back on ``_done``."""
        for key, msg, epoch in batch:
            task = self.events.loop.create_task(self._process(msg))
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(lambda t, k=key, m=msg, e=epoch: (self._tasks.discard(t), self._done.put((k, m, e, t))))

    def _collect(self, wait: float) -> None:
        """Take finished records; start the next record of each finished key."""
        try:
            item = self._done.get(timeout=wait) if wait else self._done.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            key, msg, epoch, task = item
            book = self._partitions.get((msg.topic(), msg.partition()))
            if book is not None and book.epoch == epoch:
                book.finish(msg.offset(), task.result())
                self.keys.finished(key, epoch)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        self._launch()

    def _release(self, partitions=None) -> None:
        for tp in partitions or list(self._partitions):
            book = self._partitions.get(tp)
            if book is None:
                continue
            for offset, outputs in book.release():
                for out in outputs:
                    self._produce(out, book, offset)

    def _tick(self) -> None:
        """Give the stage its clock; its dead letters are durable no later than its records (see Ticks)."""
        now = time.monotonic()
        if now - self._last_tick < TICK_INTERVAL_S:
            return
        self._last_tick = now
        outputs = self.stage.tick(now_ms(), list(self._partitions))
        letters = [out for out in outputs if isinstance(out, DeadLetter)]
        if any(letter.original is None for letter in letters):  # a bug in the stage, not a bad record
            raise TypeError(f"stage {self.stage.name}: a DeadLetter returned by tick() must carry the original record")
        for letter in letters:
            self._produce(self._dead_letter(letter.original, letter.reason, letter, letter.attempts,
                                            letter.first_failure_ms))
        if letters:
            self.committer.flush_dead_letters()
        for out in outputs:
            if not isinstance(out, DeadLetter):
                self._produce(self._within_limits(self._encode(out)))
        if outputs:
            self.committer.tick_produced()

    def _produce(self, out: Output, book: PartitionBook | None = None, offset: int | None = None) -> None:
        """Hand one output to the producer; a record's output (``book``, ``offset``) is acked when delivered."""
        while True:
            try:
                self.producer.produce(out.topic, value=out.value, key=out.key, headers=out.headers,
                                      on_delivery=self._delivery(out, book, offset),
                                      **({} if out.partition is None else {"partition": out.partition}))
                self._metrics.produced(out.topic)
                return
            except BufferError:  # the producer's local queue is full: let it drain
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused at once (the size checks should have caught it)
                out = self._refused(out, exc.args[0])
                if out is None:
                    raise

    def _delivery(self, out: Output, book: PartitionBook | None, offset: int | None):
        """The committer's delivery callback, behind which a refused output is replaced by its dead letter
        (when the committer allows it: see Poison)."""
        delivered = self.committer.delivery(book, offset)
        table = self._changelogs.get(out.topic)
        if table is not None:
            delivered = self._changelog_delivery(delivered, table, None if out.source is None else out.source.offset())
        if not self.committer.refusals_dead_lettered:
            return delivered

        def on_delivery(err, msg) -> None:
            letter = None if err is None else self._refused(out, err)
            if letter is None:
                delivered(err, msg)
            else:
                self._produce(letter, book, offset)

        return on_delivery

    def _changelog_delivery(self, delivered, table: Table, source: int | None):
        """Tell ``table`` where the broker put its changelog record, written for the input record at
        ``source`` (the store's checkpoint needs both); a producer dropped by a start-over reports
        nothing (its records were aborted)."""
        producer = self.producer

        def on_delivery(err, msg) -> None:
            if err is None and producer is self.producer:
                table.delivered(msg.partition(), msg.key(), msg.offset(), msg.value(), source)
            delivered(err, msg)

        return on_delivery

    def _refused(self, out: Output, err: KafkaError) -> Output | None:
        """What to produce in place of ``out``, which the producer or broker refused with ``err``: the
        dead letter of its input; for a dead letter, itself without its value. None: not one record's
        fault, or a dead letter refused even so (the runtime stops)."""
        if err.code() not in REFUSED or err.fatal():
            return None
        log.error("%s refused a %d-byte record: %s; it is dead-lettered", out.topic, size(out), err.str())
        if out.topic != self.dlq_topic:
            reason = "output_too_large" if err.code() == KafkaError.MSG_SIZE_TOO_LARGE else "output_rejected"
            return self._unwritable(out, DeadLetter(reason, f"{out.topic} refused a {size(out)}-byte record: {err.str()}"))
        if any(name == Header.value_truncated for name, _ in out.headers):
            return None
        return self.limits.fit(out, most=0)

    def _backpressure(self, messages: list[Message]) -> None:
        """Pause the partitions that hold waiting records once ``max_buffered`` wait; resume what
        was paused once half have moved on (see Backpressure)."""
        held = len(self._buffer) + self.keys.waiting
        if held >= self.options.max_buffered:
            holding = ({(m.topic(), m.partition()) for m in messages} if self._paused else  # the ones still fetching
                       {(m.topic(), m.partition()) for m in self._buffer} | self.keys.waiting_partitions())
            self._pause((holding & self._partitions.keys()) - self._paused)
        elif self._paused and held <= self.options.max_buffered // 2:
            self.consumer.resume([TopicPartition(t, p) for t, p in self._paused])
            self._paused.clear()

    def _pause(self, partitions: set[tuple[str, int]]) -> None:
        if partitions:
            self.consumer.pause([TopicPartition(t, p) for t, p in partitions])
            self._paused |= partitions

    def _commit(self, moment: Moment, partitions: set[tuple[str, int]] | None = None) -> None:
        """Commit the offsets whose outputs are durable, of ``partitions`` (a revoke) or all (see
        :mod:`.commit`), past the transaction markers the consumer skipped. A lost transaction starts
        over, except at shutdown: what it held is redone by the next owner."""
        self._last_commit = time.monotonic()
        books = {tp: book for tp, book in self._partitions.items() if partitions is None or tp in partitions}
        buffered = {(msg.topic(), msg.partition()) for msg in self._buffer}
        for tp in self.consumer.position([TopicPartition(t, p) for t, p in books if (t, p) not in buffered]):
            books[(tp.topic, tp.partition)].settle(tp.offset)
        try:
            self.committer.commit(books, moment)
            for table in self.tables:
                table.checkpoint({p: books[(self.topics[table.source].name, p)].committed_to
                                  for p in self._numbers(books, table)})
        except TransactionLost as lost:
            if moment is Moment.shutdown:
                log.warning("stage %s: %s at shutdown; the next owner redoes the uncommitted records",
                            self.stage.name, lost)
                return
            self._start_over(lost, [tp for tp in self._partitions if partitions is None or tp not in partitions])

    # ---- rebalance ---------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        self.health.restoring()
        assigned = {(tp.topic, tp.partition) for tp in partitions}
        for table in self.tables:  # the stage's state, before any record of the new partitions
            numbers = self._numbers(assigned, table)
            started = time.monotonic()
            read = table.assign(numbers, self._resumes(consumer, table, numbers)
                                if self.committer.changelog_may_lead and numbers else None)
            if numbers:
                log.info("stage %s: restored %s partitions %s: %d changelog records in %.2fs", self.stage.name,
                         table.topic, numbers, read, time.monotonic() - started)
        self._epoch += 1
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = PartitionBook(epoch=self._epoch)
        starts = self.stage.positions([(tp.topic, tp.partition) for tp in partitions])
        if starts:  # the stage keeps its offsets: assigning with them is how a rebalance callback seeks
            consumer.assign([TopicPartition(tp.topic, tp.partition, starts.get((tp.topic, tp.partition), tp.offset))
                             for tp in partitions])
            for tp, start in starts.items():  # what lies before is the stage's already: commit from there
                if start >= 0 and tp in self._partitions:
                    self._partitions[tp].released_to = self._partitions[tp].acked_to = start
        consumer.resume(partitions)  # librdkafka kept the pause of a partition paused before its revoke
        self.health.restored()

    def _resumes(self, consumer, table: Table, numbers: list[int]) -> dict[int, int]:
        """Where the input of ``table``'s partitions ``numbers`` resumes: the stage's own positions, else
        the group's committed offsets, else (nothing committed) the oldest record the partition has."""
        source = self.topics[table.source].name
        kept = self.stage.positions([(source, p) for p in numbers])
        resumes = {}
        committed = Retrying(stop=stop_after_delay(self.options.broker_timeout_s), reraise=True,
                             wait=wait_exponential_jitter(multiplier=0.1, max=2.0), retry=retry_if_exception(_retriable))(
            consumer.committed, [TopicPartition(source, p) for p in numbers], timeout=TIMEOUT_S)
        for tp in committed:
            start = kept.get((source, tp.partition), tp.offset)
            resumes[tp.partition] = start if start >= 0 else watermarks(consumer, tp)[0]
        return resumes

    def _numbers(self, partitions, table: Table) -> list[int]:
        """The partition numbers of ``table``'s source topic among ``partitions`` (topic, partition)."""
        source = self.topics[table.source].name
        return sorted(p for t, p in partitions if t == source)

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self._rebalancing = True
        try:
            if not self._failed:
                self._drain(revoked)
                self._commit(Moment.revoke, set(revoked))
        finally:
            self._rebalancing = False
            self._forget(revoked)

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: someone else may own them already, so commit nothing."""
        self._forget([(tp.topic, tp.partition) for tp in partitions])

    def _drain(self, partitions: list[tuple[str, int]]) -> None:
        """Wait (bounded) for in-flight records of ``partitions``, then release what finished."""
        deadline = time.monotonic() + self.options.drain_timeout_s
        wanted = set(partitions)
        while time.monotonic() < deadline and any(
                book.unfinished() for tp, book in self._partitions.items() if tp in wanted):
            self._collect(wait=0.05)
        self._release(partitions)

    def _forget(self, partitions: list[tuple[str, int]]) -> None:
        gone = set(partitions)
        for table in self.tables:
            table.release(self._numbers(gone, table))
        self._paused -= gone  # their pause outlives them in librdkafka: the assign callback resumes them
        unfinished = sum(self._partitions.pop(tp).unfinished() for tp in gone if tp in self._partitions)
        self.keys.forget(gone, unfinished)
        self._buffer = deque(m for m in self._buffer if (m.topic(), m.partition()) not in gone)

    # ---- broker health -----------------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_down_since = self._brokers_down_since or time.monotonic()
            log.error("all brokers are down: %s", err)
        elif err.fatal():
            log.critical("fatal Kafka error: %s", err)
        else:
            log.warning("kafka: %s", err)

    def _check_brokers(self) -> None:
        if self._brokers_down_since is None:
            return
        try:
            self.consumer.list_topics(timeout=1)
            self._brokers_down_since = None
        except KafkaException:
            if time.monotonic() - self._brokers_down_since > self.options.broker_timeout_s:
                raise BrokerUnavailable(
                    f"no Kafka broker at {self.settings.bootstrap_servers} answered for "
                    f"{self.options.broker_timeout_s:.0f}s; uncommitted records will be reprocessed on restart")

    # ---- one record --------------------------------------------------------------------------

    def handle(self, msg: Message) -> list[Output]:
        """One record of an inline stage through decode, ``process`` and encode, on this thread.
        Touches no Kafka client: ``make bench`` times it to show what a stage's own work costs."""
        return run_inline(self._process(msg))

    async def _process(self, msg: Message) -> list[Output]:
        """Decode, run the stage, encode; any failure becomes a dead letter, never an exception."""
        started = time.perf_counter()
        try:
            record = Record(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), key=msg.key(),
                            value=self._readers[msg.topic()].decode(msg.value()) if self._readers else {},
                            timestamp_ms=msg.timestamp()[1], headers=dict(msg.headers() or []), raw=msg.value())
            outputs = [self._encode(emit, msg) for emit in await self.stage.process(record)]
            self.limits.check(outputs)
        except DecodeError as exc:
            outputs = [self._dead_letter(msg, exc.reason, exc)]
        except DeadLetter as exc:
            outputs = [self._dead_letter(msg, exc.reason, exc, exc.attempts, exc.first_failure_ms),
                       *(self._encode(emit, msg) for emit in exc.keep)]
        except Exception as exc:  # a bug or an unexpected input: poison, not a crash
            log.error("stage %s failed on %s[%d]@%d:\n%s", self.stage.name, msg.topic(), msg.partition(),
                      msg.offset(), traceback.format_exc())
            outputs = [self._dead_letter(msg, "stage_error", exc)]
        self._metrics.observe(time.perf_counter() - started)
        return outputs

    def _encode(self, emit: Emit, source: Message | None = None) -> Output:
        spec = self.topics[emit.topic]
        serde = spec.serde(self.settings)
        value = emit.value.model_dump() if isinstance(emit.value, BaseModel) else emit.value
        key = emit.key.encode() if isinstance(emit.key, str) else emit.key
        headers = [(k, v.encode()) for k, v in emit.headers.items()]
        if source is not None and self.committer.changelog_may_lead and spec.name in self._changelogs:
            headers.append((Header.source_offset, str(source.offset()).encode()))
        return Output(spec.name, key, None if value is None else serde.encode(value, spec.name), headers, source,
                      emit.partition)

    def _within_limits(self, out: Output) -> Output:
        """``out`` (a tick's), or its dead letter when it is over its size limit."""
        try:
            self.limits.check([out])
            return out
        except OutputTooLarge as exc:
            return self._unwritable(out, exc)

    def _unwritable(self, out: Output, exc: DeadLetter) -> Output:
        """The dead letter of an output that cannot be written: of its input record, or of itself when it
        has none (a tick's: at offset -1 of the topic it was for)."""
        record = out.source or Original(topic=out.topic, partition=-1, offset=-1, timestamp_ms=now_ms(), key=out.key,
                                        value=out.value or b"", headers=dict(out.headers))
        return self._dead_letter(record, exc.reason, exc)

    def _dead_letter(self, record: Original | Message, reason: str, exc: BaseException, attempts: int = 1,
                     first_failure_ms: int | None = None) -> Output:
        """The dead letter of ``record``, its value cut when it is over the dead-letter topic's limit."""
        self._metrics.dead_lettered(reason)
        return self.limits.fit(dead_letter(self.dlq_topic, self.stage.name, record, reason, exc, attempts,
                                           first_failure_ms))

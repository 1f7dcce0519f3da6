"""The stage runtime: one consumer loop that keeps many slow records in flight, safely.

Model calls take 0.2–5 s, so a stage that handled one record at a time would crawl. The
runtime runs ``Stage.process`` for many records at once on an asyncio loop in a helper
thread, while the main thread owns the Kafka clients. The rules:

**Inline stages.** A stage whose ``process`` never awaits (``inline = True``: validate,
route) runs on the consumer thread as each record arrives, in offset order: no event-loop hop,
no per-key bookkeeping, and its outputs are released at once.

**Ordering.** Records with the same key (same input topic and partition) are processed one
after another, in offset order; different keys run in parallel. Records without a key have
no ordering constraint.

**Release.** A finished record's outputs are not produced at once. Each partition keeps its
records in consumption order; outputs are *released* (handed to the producer) only for the
unbroken prefix of finished records. So outputs leave in input order per partition, and the
committed offset never passes a record whose outputs were not produced.

**Commit protocol**, every ``commit_interval_s`` and on revoke and shutdown:

* ``at_least_once``: every released output carries a delivery callback; a record counts as
  done when the broker acknowledged all its outputs, and the committed offset is the one after
  the last record of the unbroken done prefix (asynchronous commits, so the loop never waits
  on the broker). On revoke and shutdown the producer is flushed first and the commit is
  synchronous. A crash before a commit replays the uncommitted records (duplicates
  downstream, never loss). A delivery failure stops the runtime before it commits past it.
* ``exactly_once``: outputs are produced inside a transaction that is always open;
  ``send_offsets_to_transaction`` adds the released offsets and ``commit_transaction``
  publishes outputs and offsets atomically; a new transaction begins at once. Any
  transaction error is fatal: the runtime stops without committing, the broker aborts the
  open transaction, and a restart reprocesses from the last committed offsets.
  ``read_committed`` readers therefore never see an output twice.

**Backpressure.** At most ``max_in_flight`` records are being processed at once. Records of
a key that is busy wait behind it, and records consumed beyond that wait, in order, in a
local buffer; neither counts as in flight, so one hot key never idles the other slots. Only
when ``max_buffered`` records wait (buffer and keys together) is every assigned partition
paused (the consumer keeps polling, so the group stays alive), until half have moved on.
Pausing is the last resort because librdkafka drops a paused partition's prefetched records
and refetches them on resume, which stalls the stage for a fetch round trip each time.

**Revoke.** When partitions are taken away, the runtime stops starting their records, waits
up to ``drain_timeout_s`` for the ones in flight, releases and commits what finished, and
drops everything else of those partitions: their new owner starts from the committed offset.
Results that arrive later for a revoked partition are discarded (assignment epochs).

**Poison.** A record that cannot be decoded, or whose ``process`` raises, goes to the
workflow's dead-letter topic with its original key and value bytes and headers that say where
it came from and why; the partition carries on. The input's own headers are kept (all but
``handoff.*``, which the dead letter sets afresh), so a replayed record that fails again still
carries ``handoff-replay`` and a replay does not pick it up again (``processors/replay.py``).

**Ticks.** About once a second the consumer thread calls ``Stage.tick(now, owned partitions)``,
so a stage can act when no record arrives (the joiner expires outcomes that waited too long for
their decision). Its outputs — dead letters of records the stage kept, and records — belong to no
input offset. Under ``exactly_once`` they join the open transaction, which the next commit
publishes even when no offset moved. Under ``at_least_once`` the dead letters are produced and
flushed first, then the records: a record saying "dead-lettered" (the joiner's state) is never
durable before its dead letter, and a crash before either is delivered loses only what the stage
derives again from its durable state after a restart. A delivery failure stops the runtime.

**Shutdown.** SIGTERM or SIGINT stop intake, drain in-flight work (bounded), commit, close.
**Broker gone.** If no broker answers for ``broker_timeout_s``, the runtime raises
:class:`BrokerUnavailable` instead of waiting forever; uncommitted work is replayed on restart.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from processors.avro.serde import AvroSerde, DecodeError
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import TopicSpec
from processors.records import Original
from processors.runtime import metrics
from processors.runtime.stage import DeadLetter, Emit, Record, Stage, now_ms

log = logging.getLogger("handoff.runtime")

TICK_INTERVAL_S = 1.0


class Guarantee(StrEnum):
    at_least_once = "at_least_once"
    exactly_once = "exactly_once"


class RuntimeOptions(BaseModel):
    """Every option trades one thing for another; the defaults suit model-bound stages."""

    model_config = ConfigDict(extra="forbid")

    guarantee: Guarantee = Field(Guarantee.at_least_once, description=(
        "exactly_once costs a transaction per commit interval and read_committed latency downstream; "
        "at_least_once may duplicate outputs after a crash (actions stay idempotent either way)."))
    max_in_flight: int = Field(500, ge=1, description=(
        "More hides model latency better but holds more memory and more work to redo after a crash."))
    commit_interval_s: float = Field(1.0, gt=0, description=(
        "Shorter means less replay after a crash and lower end-to-end latency under exactly_once, "
        "at the cost of more commits (and transactions)."))
    drain_timeout_s: float = Field(10.0, ge=0, description=(
        "How long a revoke or shutdown waits for in-flight records; longer redoes less work but "
        "stalls the rebalance for the whole group."))
    max_buffered: int = Field(5000, ge=1, description=(
        "Records consumed but not yet started before partitions pause. More rides out the refetch "
        "after a resume without starving the stage; less holds less memory and replays less."))
    poll_batch: int = Field(500, ge=1, description="Records taken per consume call.")
    gc_young_threshold: int | None = Field(100_000, ge=1, description=(
        "Allocations between collections of Python's youngest garbage-collector generation, for the "
        "whole process (Python's default: 700; None leaves it). A record's objects die young and "
        "reference counting frees them, so each collection mostly rescans the records in flight: rarer "
        "collections gave classify about 20% more events/s in `make bench`, with no more memory. The "
        "cost: objects caught in reference cycles (an exception and its traceback) live a little longer."))
    broker_timeout_s: float = Field(60.0, gt=0, description=(
        "How long all brokers may be unreachable before the stage gives up with a clear error."))
    group: str | None = Field(None, description="Consumer group; default handoff.<workflow>.<stage>.")
    instance: str = Field(default_factory=socket.gethostname, description=(
        "This process's stable name within its group: its static group membership and, under "
        "exactly_once, its transactional id. Kept across restarts, a restarted process takes its "
        "predecessor's partitions at once instead of after the session timeout, and fences its open "
        "transaction instead of leaving it to time out. The cost: a process that stops for good holds "
        "its partitions until the session timeout. Give each instance of one stage on one host its own name."))


class BrokerUnavailable(RuntimeError):
    """No broker answered for longer than ``broker_timeout_s``."""


class DeliveryFailed(RuntimeError):
    """The producer could not deliver a released output; offsets were not committed."""


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class _Partition:
    """Records of one partition in consumption order.

    ``pending``: consumed records, ``None`` until their outputs are ready. ``unacked``: released
    records, with how many of their outputs the broker has not acknowledged yet.
    """

    epoch: int
    pending: OrderedDict[int, list[Output] | None] = field(default_factory=OrderedDict)
    unacked: OrderedDict[int, int] = field(default_factory=OrderedDict)
    released_to: int | None = None  # offset after the last released record
    acked_to: int | None = None  # offset after the last record whose outputs are all acknowledged
    committed_to: int | None = None

    def release(self) -> list[tuple[int, list[Output]]]:
        """The unbroken prefix of finished records, in offset order, now handed to the producer."""
        out = []
        while self.pending:
            offset, outputs = next(iter(self.pending.items()))
            if outputs is None:
                break
            self.pending.popitem(last=False)
            out.append((offset, outputs))
            self.unacked[offset] = len(outputs)
            self.released_to = offset + 1
        self._advance()
        return out

    def ack(self, offset: int) -> None:
        self.unacked[offset] -= 1
        self._advance()

    def _advance(self) -> None:
        while self.unacked:
            offset, left = next(iter(self.unacked.items()))
            if left:
                return
            self.unacked.popitem(last=False)
            self.acked_to = offset + 1


class _EventLoop:
    """An asyncio loop in a daemon thread; stage coroutines run here."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="handoff-stage-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        """Run ``coro`` on the loop and wait for its result (start-up and close, not records)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():  # a loop still running (a stage stuck past 5 s) cannot be closed
            self.loop.close()


def _run_inline(coro):
    """Run a coroutine that never suspends to completion on this thread and return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("an inline stage awaited something: set `inline = False` on it")


class StageRuntime:
    """Runs one stage against Kafka until stopped. ``topics`` maps declared names to specs."""

    def __init__(self, stage: Stage, workflow: str, topics: dict[str, TopicSpec], settings: KafkaSettings,
                 options: RuntimeOptions | None = None):
        self.stage = stage
        self.workflow = workflow
        self.topics = topics
        self.settings = settings
        self.options = options or RuntimeOptions()
        self.dlq_topic = topics[f"{workflow}.dlq"].name
        # Any known writer version decodes into the topic's declared (latest) contract.
        self._readers = {topics[name].name: AvroSerde(topics[name].value_schema,
                                                      registry_url=settings.schema_registry_url)
                         for name in stage.inputs}
        self.input_topics = list(self._readers)
        self._writers: dict[str, AvroSerde] = {}
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._keys: dict[tuple, deque[Message]] = {}  # key -> records waiting behind the running one
        self._in_flight = 0  # records being processed
        self._waiting = 0  # records queued behind a running record of their key
        self._buffer: deque[Message] = deque()  # consumed, not yet started (see Backpressure)
        self._epoch = 0
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._starting: list[tuple[tuple, Message, int]] = []  # started, not yet handed to the loop
        self._tasks: set[asyncio.Task] = set()
        self._stopping = threading.Event()
        self._paused = False
        self._delivery_errors: list[str] = []
        self._brokers_down_since: float | None = None
        self._last_commit = time.monotonic()
        self._last_tick = time.monotonic()
        self._ticked = False  # tick outputs in the open transaction (exactly_once)
        self._failed = False
        self.group = self.options.group or f"handoff.{workflow}.{stage.name}"
        self._metrics = metrics.StageMetrics(workflow, stage.name)

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self, *_args) -> None:
        """Ask the loop to drain and exit (safe from a signal handler or another thread)."""
        self._stopping.set()

    def run(self, until=None) -> None:
        """Consume until :meth:`stop`, a signal, or ``until()`` returns True (checked each loop)."""
        self._install_signal_handlers()
        self.tune_gc()
        exactly_once = self.options.guarantee == Guarantee.exactly_once
        member = f"{self.settings.group_id(self.group)}.{self.options.instance}"
        self.consumer = self.settings.consumer(self.group, error_cb=self._on_error,
                                               **{"partition.assignment.strategy": "range",
                                                  "group.instance.id": member,
                                                  "fetch.error.backoff.ms": 20})
        producer_conf = {"error_cb": self._on_error}
        if exactly_once:
            producer_conf["transactional.id"] = member
        self.producer = self.settings.producer(**producer_conf)
        self.events = _EventLoop()
        try:
            self.events.run(self.stage.start(), timeout=120)
            if exactly_once:
                self.producer.init_transactions(30)
                self.producer.begin_transaction()
            self.consumer.subscribe(self.input_topics, on_assign=self._on_assign,
                                    on_revoke=self._on_revoke, on_lost=self._on_lost)
            while not self._stopping.is_set() and not (until and until()):
                self._step()
            self._drain(list(self._partitions))
            self._commit(force=True)
        except BaseException:
            self._failed = True  # commit nothing more: a restart replays from the last commit
            raise
        finally:
            try:
                self.consumer.close()  # revokes what is left; nothing is in flight by now
            finally:
                if exactly_once:
                    try:
                        self.producer.abort_transaction(5)  # an empty open transaction, or a failed one
                    except KafkaException:
                        pass
                self.producer.flush(10)
                self._metrics.flush()
                self.events.run(self.stage.close(), timeout=30)
                self.events.stop()
                del self.producer, self.consumer  # librdkafka handles are destroyed with the last reference

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
        # Always poll, even when paused: it serves rebalance callbacks and keeps the group alive.
        messages = self.consumer.consume(self.options.poll_batch, timeout=0 if self._in_flight or self._buffer else 0.01)
        for msg in messages:
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                log.warning("consumer: %s", msg.error())
                continue
            self._buffer.append(msg)
        while self._buffer and self._in_flight < self.options.max_in_flight and self._waiting < self.options.max_buffered:
            self._accept(self._buffer.popleft())
        self._launch()
        self._collect(wait=0.005 if self._in_flight and not messages else 0)
        self._release()
        self._tick()
        self._backpressure()
        self._check_brokers()
        if time.monotonic() - self._last_commit >= self.options.commit_interval_s:
            self._commit()
        self.producer.poll(0)
        self._metrics.flush()

    def _accept(self, msg: Message) -> None:
        part = self._partitions.get((msg.topic(), msg.partition()))
        if part is None:  # a record of a partition we no longer own: ignore, its owner has it
            return
        self._metrics.consumed()
        if self.stage.inline:  # it never awaits: run it here, in offset order, without an event-loop hop
            part.pending[msg.offset()] = self.handle(msg)
            return
        part.pending[msg.offset()] = None
        key = (msg.topic(), msg.partition(), msg.key()) if msg.key() is not None else (msg.topic(), msg.partition(), msg.offset())
        waiting = self._keys.get(key)
        if waiting is not None:  # a record of this key is running: queue behind it
            waiting.append(msg)
            self._waiting += 1
        else:
            self._keys[key] = deque()
            self._start(key, msg, part.epoch)

    def _start(self, key: tuple, msg: Message, epoch: int) -> None:
        self._in_flight += 1
        self._starting.append((key, msg, epoch))

    def _launch(self) -> None:
        """Hand the records started since the last call to the event loop, in one wake-up."""
        if self._starting:
            batch, self._starting = self._starting, []
            self.events.loop.call_soon_threadsafe(self._spawn, batch)

    def _spawn(self, batch: list[tuple[tuple, Message, int]]) -> None:
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
            part = self._partitions.get((msg.topic(), msg.partition()))
            if part is not None and part.epoch == epoch:
                self._in_flight -= 1
                part.pending[msg.offset()] = task.result()
                waiting = self._keys.get(key)
                if waiting:
                    self._waiting -= 1
                    self._start(key, waiting.popleft(), epoch)
                else:
                    self._keys.pop(key, None)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        self._launch()

    def _release(self, partitions=None) -> None:
        for tp in partitions or list(self._partitions):
            part = self._partitions.get(tp)
            if part is None:
                continue
            for offset, outputs in part.release():
                for out in outputs:
                    self._produce(out, part, offset)

    def _tick(self) -> None:
        """Give the stage its clock; its dead letters are durable before its records (see Ticks)."""
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
        if letters and self.options.guarantee == Guarantee.at_least_once:
            remaining = self.producer.flush(30)
            if remaining or self._delivery_errors:
                raise DeliveryFailed(f"{remaining} dead letters unacknowledged; errors: {self._delivery_errors[:3]}")
        for out in outputs:
            if not isinstance(out, DeadLetter):
                self._produce(self._encode(out))
        self._ticked = self._ticked or bool(outputs)

    def _produce(self, out: Output, part: _Partition | None = None, offset: int | None = None) -> None:
        """Hand one output to the producer; a record's output (``part``, ``offset``) is acked when delivered."""
        def delivered(err, msg) -> None:  # served by producer.poll/flush on this thread
            if err is not None:
                self._delivery_errors.append(f"{msg.topic()}: {err}")
            elif part is not None:
                part.ack(offset)

        while True:
            try:
                self.producer.produce(out.topic, value=out.value, key=out.key, headers=out.headers,
                                      on_delivery=delivered)
                self._metrics.produced(out.topic)
                return
            except BufferError:  # the producer's local queue is full: let it drain
                self.producer.poll(0.1)

    def _backpressure(self) -> None:
        assignment = [TopicPartition(t, p) for t, p in self._partitions]
        held = len(self._buffer) + self._waiting
        if not self._paused and held >= self.options.max_buffered:
            self.consumer.pause(assignment)
            self._paused = True
        elif self._paused and held <= self.options.max_buffered // 2:
            self.consumer.resume(assignment)
            self._paused = False

    # ---- commit ------------------------------------------------------------------------------

    def _commit(self, partitions=None, force: bool = False) -> None:
        """Commit the offsets whose outputs are durable (see the commit protocol above).

        ``partitions`` (a revoke) or ``force`` (shutdown) make it final: wait for every
        acknowledgement and commit synchronously.
        """
        self._last_commit = time.monotonic()
        final = force or partitions is not None
        if self.options.guarantee == Guarantee.exactly_once:
            due = self._due(partitions, "released_to")
            if not due and not force and not self._ticked:
                return
            self._ticked = False
            if due:
                self.producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, offset) for (t, p), _, offset in due],
                    self.consumer.consumer_group_metadata(), 30)
            self.producer.commit_transaction(30)
            self.producer.begin_transaction()
        else:
            remaining = self.producer.flush(30) if final else 0
            if remaining or self._delivery_errors:
                raise DeliveryFailed(f"{remaining} outputs unacknowledged; errors: {self._delivery_errors[:3]}")
            due = self._due(partitions, "acked_to")
            if not due:
                return
            self.consumer.commit(offsets=[TopicPartition(t, p, offset) for (t, p), _, offset in due],
                                 asynchronous=not final)
        for _, part, offset in due:
            part.committed_to = offset

    def _due(self, partitions, mark: str) -> list[tuple[tuple[str, int], _Partition, int]]:
        """Partitions whose ``mark`` (released_to or acked_to) moved past their last commit."""
        return [(tp, part, getattr(part, mark)) for tp, part in self._partitions.items()
                if (partitions is None or tp in partitions) and getattr(part, mark) is not None
                and getattr(part, mark) != part.committed_to]

    # ---- rebalance ---------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        self._epoch += 1
        for tp in partitions:
            self._partitions[(tp.topic, tp.partition)] = _Partition(epoch=self._epoch)
        self.stage.on_assign([(tp.topic, tp.partition) for tp in partitions])
        if self._paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        try:
            if not self._failed:
                self._drain(revoked)
                self._commit(partitions=set(revoked))
        finally:
            self._forget(revoked)

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: someone else may own them already, so commit nothing."""
        self._forget([(tp.topic, tp.partition) for tp in partitions])

    def _drain(self, partitions: list[tuple[str, int]]) -> None:
        """Wait (bounded) for in-flight records of ``partitions``, then release what finished."""
        deadline = time.monotonic() + self.options.drain_timeout_s
        wanted = set(partitions)
        while time.monotonic() < deadline and any(
                None in part.pending.values() for tp, part in self._partitions.items() if tp in wanted):
            self._collect(wait=0.05)
        self._release(partitions)

    def _forget(self, partitions: list[tuple[str, int]]) -> None:
        gone = set(partitions)
        unfinished = sum(1 for tp in gone if tp in self._partitions
                         for v in self._partitions.pop(tp).pending.values() if v is None)
        waiting = sum(len(self._keys.pop(k)) for k in [k for k in self._keys if (k[0], k[1]) in gone])
        self._waiting -= waiting
        self._in_flight -= unfinished - waiting  # their results are dropped on arrival (epochs)
        self._buffer = deque(m for m in self._buffer if (m.topic(), m.partition()) not in gone)

    # ---- errors ------------------------------------------------------------------------------

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
        return _run_inline(self._process(msg))

    async def _process(self, msg: Message) -> list[Output]:
        """Decode, run the stage, encode; any failure becomes a dead letter, never an exception."""
        started = time.perf_counter()
        try:
            record = Record(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), key=msg.key(),
                            value=self._readers[msg.topic()].decode(msg.value()),
                            timestamp_ms=msg.timestamp()[1], headers=dict(msg.headers() or []), raw=msg.value())
            outputs = [self._encode(emit) for emit in await self.stage.process(record)]
        except DecodeError as exc:
            outputs = [self._dead_letter(_original(msg), exc.reason, exc)]
        except DeadLetter as exc:
            outputs = [self._dead_letter(_original(msg), exc.reason, exc, exc.attempts, exc.first_failure_ms)]
        except Exception as exc:  # a bug or an unexpected input: poison, not a crash
            log.error("stage %s failed on %s[%d]@%d:\n%s", self.stage.name, msg.topic(), msg.partition(),
                      msg.offset(), traceback.format_exc())
            outputs = [self._dead_letter(_original(msg), "stage_error", exc)]
        self._metrics.observe(time.perf_counter() - started)
        return outputs

    def _encode(self, emit: Emit) -> Output:
        spec = self.topics[emit.topic]
        serde = self._writers.get(spec.name)
        if serde is None:
            serde = self._writers[spec.name] = AvroSerde(spec.value_schema, registry_url=self.settings.schema_registry_url)
        value = emit.value.model_dump() if isinstance(emit.value, BaseModel) else emit.value
        key = emit.key.encode() if isinstance(emit.key, str) else emit.key
        return Output(spec.name, key, serde.encode(value, spec.name), [(k, v.encode()) for k, v in emit.headers.items()])

    def _dead_letter(self, record: Original, reason: str, exc: BaseException, attempts: int = 1,
                     first_failure_ms: int | None = None) -> Output:
        self._metrics.dead_lettered(reason)
        headers = {
            "handoff.original.topic": record.topic,
            "handoff.original.partition": str(record.partition),
            "handoff.original.offset": str(record.offset),
            "handoff.original.timestamp": str(record.timestamp_ms),
            "handoff.stage": self.stage.name,
            "handoff.error.reason": reason,
            "handoff.error.class": type(exc).__name__,
            "handoff.error.message": str(exc)[:1000],
            "handoff.attempts": str(attempts),
            "handoff.first.failure.ms": str(first_failure_ms or now_ms()),
        }
        original = [(k, v) for k, v in record.headers.items() if not k.startswith("handoff.")]
        return Output(self.dlq_topic, record.key, record.value, original + [(k, v.encode()) for k, v in headers.items()])


def _original(msg: Message) -> Original:
    return Original(topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), timestamp_ms=msg.timestamp()[1],
                    key=msg.key(), value=msg.value() or b"", headers=dict(msg.headers() or []))

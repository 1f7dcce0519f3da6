"""Join: business outcomes joined back to the decisions they are about, by event id.

Decisions arrive on ``<wf>.decisions.<route>`` keyed by the trigger key (a customer); outcomes
on ``<wf>.outcomes`` keyed by event id — possibly before their decision, possibly twice,
possibly never matched. One stage (one consumer group, ``inline``: every step below runs in
offset order on the consumer thread, so the state needs no lock) does it in three steps:

1. **Re-key.** A decision, or an outcome, is forwarded to ``<wf>.joins.inbox`` keyed by its
   event id, as a partial :class:`JoinState`: the decision's essentials, or the outcome with its
   original bytes. An outcome of a type the workflow does not declare (``outcomes.types``), or of
   another workflow, goes to the dead letters here. Both sides of an event now meet in one inbox
   partition, in the order they were forwarded, whatever partitioner the outcome's producer used.
2. **Merge.** An inbox record is merged into the event's state, kept in the compacted
   ``<wf>.joins`` changelog and restored by the runtime on assign (a
   :class:`~processors.runtime.ledger.Ledger`). A decision is kept; a later one (a live replay, a
   reviewer's correction) replaces it. An outcome is added unless its ``outcome_id`` (event id, type, at_ms, source) is already there. While a decision
   is known, every waiting outcome is joined: one :class:`Result` on ``<wf>.results`` per
   outcome, released with the new state entry.
3. **Expire.** Every second (:meth:`Stage.tick`) an outcome that has waited
   ``outcomes.wait_for_decision_s`` since it reached ``<wf>.outcomes`` goes to the dead letters
   (``decision_never_came``) with its original key, bytes and headers, and is marked expired.
   Sent again from the dead letters (a new record on ``<wf>.outcomes``), it waits again.

**Many instances.** The state of an event id is written only by the instance that owns its
inbox partition (recorded in the entry as ``owner_partition``), and that instance sees every
decision and outcome of the event: the join is correct with any number of instances. A new
owner (rebalance, restart) gets the changelog restored on assign, after the previous owner committed
(the eager rebalance revokes, and commits, before it assigns). Each instance keeps the whole
changelog in memory: one small entry per event id with a decision or an outcome (no event text).

**Restarts and duplicates.** A decision or outcome forwarded twice (a replay after a crash, a
duplicate report) merges into an unchanged state: nothing is emitted. Under ``exactly_once``
a result and its state entry commit in one transaction. Under ``at_least_once`` both are
acknowledged before the inbox offset is committed, so a restart finds the outcome joined and
writes nothing; only a crash between the broker acknowledging the result and acknowledging
its state entry (two partitions, microseconds apart) can write that result once more — the
same record, recognisable by event id, outcome type, outcome at_ms and source.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Message

from processors.avro.serde import AvroSerde
from processors.clock import now_ms
from processors.kafka.topics import Role
from processors.records import (
    Decision,
    JoinedDecision,
    JoinedOutcome,
    JoinState,
    JoinStatus,
    Outcome,
    Result,
    StageName,
)
from processors.runtime.ledger import Ledger
from processors.runtime.stage import DeadLetter, Emit, Record, Table
from processors.stages.base import WorkflowStage
from processors.workflow.workflow import Workflow


class JoinLedger(Ledger[JoinState]):
    """The changelog, plus when the oldest waiting outcome of each event arrived: what ``tick`` scans."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiting: dict[str, int] = {}

    def restore(self, messages: Iterable[Message], serde: AvroSerde) -> None:
        super().restore(messages, serde)
        self.waiting = {}
        for key, state in self._entries.items():
            self._index(key, state)

    def record(self, key: str, entry: JoinState) -> Emit:
        self._index(key, entry)
        return super().record(key, entry)

    def _index(self, key: str, state: JoinState) -> None:
        arrivals = [o.received_at_ms for o in state.outcomes if o.status == JoinStatus.waiting]
        if arrivals:
            self.waiting[key] = min(arrivals)
        else:
            self.waiting.pop(key, None)


class Join(WorkflowStage):
    name = StageName.join
    input_roles = [Role.outcomes, Role.joins_inbox]  # and every decisions.<route> topic, added below
    output_roles = [Role.joins_inbox, Role.joins, Role.results, Role.traces]
    inline = True

    def __init__(self, workflow: Workflow):
        super().__init__(workflow)
        self.inputs += [workflow.topic(Role.decisions, route) for route in workflow.route_names]
        self.joins = JoinLedger(workflow.topic(Role.joins), JoinState)
        self.inbox = workflow.spec(Role.joins_inbox).name
        self.wait_ms = int(workflow.outcomes.wait_for_decision_s * 1000)

    def tables(self) -> list[Table]:
        return [self.joins]

    async def process(self, record: Record) -> list[Emit]:
        if record.topic == self.inbox:
            return self._merge(record)
        if self.is_from(record.topic, Role.outcomes):
            return [self._forward_outcome(record)]
        decision = Decision.model_validate(record.value)
        essentials = JoinedDecision.model_validate(decision, from_attributes=True)
        return [self._forward(JoinState(event_id=decision.event_id, decision=essentials, updated_at_ms=now_ms()))]

    def _forward_outcome(self, record: Record) -> Emit:
        outcome = Outcome.model_validate(record.value)
        if outcome.workflow != self.workflow.name:
            raise DeadLetter("wrong_workflow", f"outcome of workflow {outcome.workflow!r} on {record.topic}")
        if outcome.outcome_type not in self.workflow.outcomes.types:
            raise DeadLetter("unknown_outcome_type", f"outcome type {outcome.outcome_type!r} is not one of "
                                                     f"{self.workflow.name}'s outcomes.types {self.workflow.outcomes.types}")
        waiting = JoinedOutcome(outcome_id=outcome_id(outcome), status=JoinStatus.waiting, outcome=outcome,
                                received_at_ms=record.timestamp_ms, original=record.original())
        return self._forward(JoinState(event_id=outcome.event_id, outcomes=[waiting], updated_at_ms=now_ms()))

    def _forward(self, partial: JoinState) -> Emit:
        return Emit(self.workflow.topic(Role.joins_inbox), partial, key=partial.event_id)

    def _merge(self, record: Record) -> list[Emit]:
        incoming = JoinState.model_validate(record.value)
        known_state = self.joins.get(incoming.event_id)  # copied: memory changes only with the entry emitted
        state = known_state.model_copy(deep=True) if known_state else JoinState(event_id=incoming.event_id,
                                                                                updated_at_ms=0)
        changed = False
        if incoming.decision and (state.decision is None
                                  or incoming.decision.decided_at_ms > state.decision.decided_at_ms):
            state.decision, changed = incoming.decision, True
        known = {o.outcome_id: index for index, o in enumerate(state.outcomes)}
        for outcome in incoming.outcomes:
            index = known.get(outcome.outcome_id)
            if index is None:
                state.outcomes.append(outcome)
                changed = True
            elif _redriven(state.outcomes[index], outcome):
                state.outcomes[index] = outcome
                changed = True
        if not changed:
            return []
        now = now_ms()
        results = []
        if state.decision is not None:
            for waiting in (o for o in state.outcomes if o.status == JoinStatus.waiting):
                waiting.status, waiting.original = JoinStatus.joined, None
                results.append(self._result(state.decision, waiting.outcome, now))
        state.owner_partition, state.updated_at_ms = record.partition, now
        outputs = results + [self.joins.record(state.event_id, state)]
        if results or incoming.outcomes:  # a decision alone changes nothing worth a trace
            outputs.append(self.trace(state.event_id, decision=state.decision.model_dump() if state.decision else None,
                                      inputs={"joined": [r.value.outcome_type for r in results],
                                              "waiting": [o.outcome_id for o in state.outcomes
                                                          if o.status == JoinStatus.waiting]}))
        return outputs

    def _result(self, decision: JoinedDecision, outcome: Outcome, now: int) -> Emit:
        result = Result(event_id=outcome.event_id, workflow=self.workflow.name, **dict(decision),
                        outcome_type=outcome.outcome_type, outcome_value=outcome.value,
                        outcome_source=outcome.source, outcome_at_ms=outcome.at_ms, joined_at_ms=now)
        return Emit(self.workflow.topic(Role.results), result, key=outcome.event_id)

    def tick(self, now: int, partitions: list[tuple[str, int]]) -> list[Emit | DeadLetter]:
        """Dead-letter the outcomes of owned events that waited past the limit for their decision."""
        owned = {p for topic, p in partitions if topic == self.inbox}
        due = [key for key, since in self.joins.waiting.items()
               if since + self.wait_ms <= now and self.joins.get(key).owner_partition in owned]
        outputs: list[Emit | DeadLetter] = []
        for key in due:
            state = self.joins.get(key)
            for expired in (o for o in state.outcomes
                            if o.status == JoinStatus.waiting and o.received_at_ms + self.wait_ms <= now):
                outputs.append(DeadLetter(
                    "decision_never_came", f"no decision for event {key} within "
                    f"{self.workflow.outcomes.wait_for_decision_s:g}s of outcome {expired.outcome_id}",
                    original=expired.original))
                expired.status = JoinStatus.expired
            state.updated_at_ms = now
            outputs += [self.joins.record(key, state), self.trace(key, error="outcomes waited too long for their "
                                                                             "decision: dead-lettered")]
        return outputs


def _redriven(known: JoinedOutcome, incoming: JoinedOutcome) -> bool:
    """An expired outcome sent again from the dead letters (a new record, not a replay of the first) waits again."""
    def where(o: JoinedOutcome) -> tuple | None:
        return o.original and (o.original.topic, o.original.partition, o.original.offset)

    return known.status == JoinStatus.expired and where(incoming) != where(known)


def outcome_id(outcome: Outcome) -> str:
    """The same outcome reported twice has the same id, so it is joined once."""
    return f"{outcome.event_id}|{outcome.outcome_type}|{outcome.at_ms}|{outcome.source}"

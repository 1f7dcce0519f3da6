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
2. **Merge.** An inbox record is merged into the event's state, kept in the partition-local store
   of its inbox partition (:class:`JoinStates`, changelog ``<wf>.joins``: see
   :mod:`processors.state.store`). A decision is kept; a later one (a live replay, a reviewer's
   correction) replaces it. An outcome is added unless its ``outcome_id`` (event id, type, at_ms,
   source) is already there. While a decision is known, every waiting outcome is joined: one
   :class:`Result` on ``<wf>.results`` per outcome, released with the new state entry.
3. **Expire.** Every second (:meth:`Stage.tick`) an outcome that has waited
   ``outcomes.wait_for_decision_s`` since it reached ``<wf>.outcomes`` goes to the dead letters
   (``decision_never_came``) with its original key, bytes and headers, and is marked expired.
   Sent again from the dead letters (a new record on ``<wf>.outcomes``), it waits again. A state
   whose use is over is dropped (tombstoned): ``wait_for_decision_s`` after its outcomes were
   joined or expired, or ``retention.report_window`` after a decision no outcome came for.

**Many instances.** The state of an event id lives only in the store of its inbox partition, and
the instance that owns that partition sees every decision and outcome of the event: the join is
correct with any number of instances. A new owner (rebalance, restart) restores that partition's
store from the changelog (its local files' tail, or the whole partition when new to it), after
the previous owner committed (the eager rebalance revokes, and commits, before it assigns).
Memory holds only the changes since the last checkpoint; the rest is on local disk.

**Restarts and duplicates.** A decision or outcome forwarded twice (a replay after a crash, a
duplicate report) merges into an unchanged state: nothing is emitted. Under ``exactly_once``
a result and its state entry commit in one transaction. Under ``at_least_once`` both are
acknowledged before the inbox offset is committed, so a restart finds the outcome joined and
writes nothing; only a crash between the broker acknowledging the result and acknowledging
its state entry (two partitions, microseconds apart) can write that result once more — the
same record, recognisable by event id, outcome type, outcome at_ms and source.
"""

from __future__ import annotations

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
from processors.runtime.stage import DeadLetter, Emit, Record, Table
from processors.stages.base import WorkflowStage
from processors.state.store import Store
from processors.workflow.workflow import Workflow


class JoinStates(Store[JoinState]):
    """Each event's join state, in the store of its inbox partition; due when it needs the tick (Expire)."""

    def __init__(self, workflow: Workflow):
        super().__init__(workflow.topic(Role.joins), workflow.topic(Role.joins_inbox), JoinState)
        self.wait_ms = int(workflow.outcomes.wait_for_decision_s * 1000)
        self.report_ms = int(workflow.retention.report_window * 1000)

    def due_ms(self, state: JoinState) -> int:
        """An outcome's wait ending; else the end of the state's use: a wait after it was joined (or its
        outcomes expired), the report window for a decision no outcome has come for yet."""
        waiting = [o.received_at_ms for o in state.outcomes if o.status == JoinStatus.waiting]
        if waiting:
            return min(waiting) + self.wait_ms
        return state.updated_at_ms + (self.wait_ms if state.outcomes else self.report_ms)


class Join(WorkflowStage):
    name = StageName.join
    input_roles = [Role.outcomes, Role.joins_inbox]  # and every decisions.<route> topic, added below
    inline = True

    def __init__(self, workflow: Workflow):
        super().__init__(workflow)
        self.inputs += [workflow.topic(Role.decisions, route) for route in workflow.route_names]
        self.joins = JoinStates(workflow)
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
        known_state = self.joins.get(record.partition, incoming.event_id)  # copied: the store changes only by put
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
        outputs = results + [self.joins.put(record.partition, state.event_id, state)]
        if results or incoming.outcomes:  # a decision alone changes nothing worth a trace
            outputs.append(self.trace(state.event_id, decision=state.decision.model_dump() if state.decision else None,
                                      inputs={"joined": [r.value.outcome_type for r in results],
                                              "waiting": [o.outcome_id for o in state.outcomes
                                                          if o.status == JoinStatus.waiting]}))
        return outputs

    def _result(self, decision: JoinedDecision, outcome: Outcome, now: int) -> Emit:
        escalation = self.workflow.escalation
        if escalation and outcome.outcome_type in escalation.missed_outcomes and decision.route != escalation.route:
            self.quality.missed_escalation(decision.prompt.version)  # a live escalation-recall miss
        result = Result(event_id=outcome.event_id, workflow=self.workflow.name, **dict(decision),
                        outcome_type=outcome.outcome_type, outcome_value=outcome.value,
                        outcome_source=outcome.source, outcome_at_ms=outcome.at_ms, joined_at_ms=now)
        return Emit(self.workflow.topic(Role.results), result, key=outcome.event_id)

    def tick(self, now: int, partitions: list[tuple[str, int]]) -> list[Emit | DeadLetter]:
        """Dead-letter the outcomes of owned events that waited past the limit for their decision; drop
        the states whose use is over (:meth:`JoinStates.due_ms`)."""
        outputs: list[Emit | DeadLetter] = []
        for partition in self.owned(partitions, Role.joins_inbox):
            for key, due in self.joins.due(partition, now):
                state = due.model_copy(deep=True)  # the store changes only by put
                expired = [o for o in state.outcomes
                           if o.status == JoinStatus.waiting and o.received_at_ms + self.wait_ms <= now]
                if not expired:
                    outputs.append(self.joins.delete(partition, key))
                    continue
                for outcome in expired:
                    outputs.append(DeadLetter(
                        "decision_never_came", f"no decision for event {key} within "
                        f"{self.workflow.outcomes.wait_for_decision_s:g}s of outcome {outcome.outcome_id}",
                        original=outcome.original))
                    outcome.status = JoinStatus.expired
                state.updated_at_ms = now
                outputs += [self.joins.put(partition, key, state),
                            self.trace(key, error="outcomes waited too long for their decision: dead-lettered")]
        return outputs


def _redriven(known: JoinedOutcome, incoming: JoinedOutcome) -> bool:
    """An expired outcome sent again from the dead letters (a new record, not a replay of the first) waits again."""
    def where(o: JoinedOutcome) -> tuple | None:
        return o.original and (o.original.topic, o.original.partition, o.original.offset)

    return known.status == JoinStatus.expired and where(incoming) != where(known)


def outcome_id(outcome: Outcome) -> str:
    """The same outcome reported twice has the same id, so it is joined once."""
    return f"{outcome.event_id}|{outcome.outcome_type}|{outcome.at_ms}|{outcome.source}"

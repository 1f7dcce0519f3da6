"""Route: deterministic rules from the workflow turn a validated answer into a decision.

The first route whose conditions hold decides (``workflow.yaml``, ``routes``). The decision
goes to ``<workflow>.decisions.<route>``, keyed like the trigger, and each action the route
names becomes an action request keyed by its idempotency key (``<event id>:<action>``, or the
parts the action's ``idempotency`` names, e.g. ``[event_id, action, arguments.team]``), so
execute can recognise an effect that was already applied.

The rollout mode in force (control topic, else the workflow file's ``mode``) decides whether
the model's answer may act on its own:

* ``shadow``: the decision goes to ``<workflow>.shadow``; no action is requested, ever.
* ``suggest``: every answer goes to review (``suggest``) with the model's answer as the suggestion.
* ``partial``: the decision stands only when its confidence reaches the review threshold in force
  and every action of its route is low-risk (risk at most the workflow's ``partial_max_risk``);
  otherwise review (``partial``), saying which condition failed.
* ``full``: every validated answer is decided and its actions requested.

An answer a person already decided (``WorkItem.reviewed_by``) is not sent back to review by
``suggest`` or ``partial``. Decisions and review items record the control version they were made
under; a replayed item's decision carries its replay id.
"""

from __future__ import annotations

from processors.clock import now_ms
from processors.control.state import review_threshold
from processors.kafka.topics import Role
from processors.records import (
    ActionRequest,
    ControlState,
    Decision,
    DecisionSource,
    Mode,
    ReviewReason,
    StageName,
    WorkItem,
)
from processors.runtime.stage import DeadLetter, Emit, Record
from processors.stages.base import WorkflowStage
from processors.workflow.workflow import RouteRule, action_view


class Route(WorkflowStage):
    name = StageName.route
    input_roles = [Role.validated]
    output_roles = [Role.decisions, Role.shadow, Role.actions, Role.review, Role.traces]
    inline = True

    async def process(self, record: Record) -> list[Emit]:
        control = self.control.state
        item = WorkItem.model_validate(record.value)
        answer, event = item.answer_dict(), item.event_dict()
        route, route_name, rule = self.workflow.decide(answer, event)
        held = None if item.reviewed_by else self._held(control, route, answer)
        if held is not None:
            return [self.review(ReviewReason(control.mode), event_id=item.event_id, event=item.event,
                                prompt=item.prompt, model=item.model, key=record.key, answer=item.answer,
                                raw_answer=item.raw_answer,
                                validation_errors=[held], control_version=control.version, replay=item.replay,
                                lookups=item.lookups),
                    self.trace(item.event_id, decision={"route": route_name, "rule": rule, "topic": "review"},
                               error=held)]
        shadow = control.mode == Mode.shadow
        topic = self.workflow.topic(Role.shadow) if shadow else self.workflow.topic(Role.decisions, route_name)
        if topic not in self.workflow.topics:
            raise DeadLetter("no_route_topic", f"route {route_name!r} resolved from {rule} has no topic {topic}")
        decision = Decision(event_id=item.event_id, workflow=self.workflow.name, route=route_name, rule=rule,
                            label=str(answer[self.workflow.label]), confidence=float(answer.get("confidence", 0.0)),
                            answer=item.answer, event=item.event, prompt=item.prompt, model=item.model,
                            shadow=shadow, decided_at_ms=now_ms(),
                            source=DecisionSource.review if item.reviewed_by else DecisionSource.model,
                            trigger_timestamp_ms=item.trigger_timestamp_ms, latency_ms=item.latency_ms,
                            tokens_in=item.tokens_in, tokens_out=item.tokens_out, cost_usd=item.cost_usd,
                            control_version=control.version, replay=item.replay)
        self.quality.decided(item.prompt.version, route_name, by_model=decision.source == DecisionSource.model)
        outputs = [Emit(topic, decision, key=record.key)]
        requests = [] if shadow else self._requests(route.actions, decision, answer, event, item.lookups)
        outputs += [Emit(self.workflow.topic(Role.actions), r, key=r.idempotency_key) for r in requests]
        outputs.append(self.trace(item.event_id, decision={"route": route_name, "rule": rule, "topic": topic},
                                  action_request=[r.action for r in requests]))
        return outputs

    def _held(self, control: ControlState, route: RouteRule, answer: dict) -> str | None:
        """Why the rollout mode keeps this answer from acting on its own, or None when it may act; the item
        goes to review under the mode's name (``ReviewReason.suggest``, ``ReviewReason.partial``)."""
        if control.mode == Mode.suggest:
            return "suggest mode: every answer is a suggestion a person decides"
        if control.mode != Mode.partial:
            return None
        confidence, threshold = answer.get("confidence", 0.0), review_threshold(self.workflow, control)
        if confidence < threshold:
            return f"partial mode: confidence {confidence} is below {threshold}"
        bound = self.workflow.partial_max_risk
        risky = [f"{name} (risk {self.workflow.actions[name].risk})" for name in route.actions
                 if self.workflow.actions[name].risk > bound]
        return f"partial mode: {', '.join(risky)} above the low-risk bound {bound}" if risky else None

    def _requests(self, actions: list[str], decision: Decision, answer: dict, event: dict,
                  lookups: str | None) -> list[ActionRequest]:
        """One request per action of the route, each carrying the whole decision."""
        if not actions:
            return []
        view = action_view(decision, answer, event)
        return [self.workflow.action_request(name, decision, view, decision.decided_at_ms, lookups) for name in actions]
